"""Live signals: from the POST of a closed M1 bar to the reference EA's receipt of its signal.

The stack as deployed, each part its own process on a scratch PostgreSQL database: the
API (`mt5-pipeline serve`), the live worker (`mt5-pipeline live`), the pusher
(`mt5-pipeline push`) and the reference EA (`mt5-pipeline ea-sim`, logging each receipt
with its time). N symbols each POST one closed bar at the same moment, round after round;
the latency of a bar is the EA's receipt time minus the moment the POSTs of its round
started. Every bar must become exactly one signal (a narrow decision band, a wide TTL).

Rounds do not wait for real minutes: the bars are from the recent past (the closed-bar
rule is the same code as in production; a past bar is closed by the clock), with
SIGNAL_TTL_SECONDS and SIGNAL_MAX_BAR_AGE_SECONDS set wide enough to deliver them.

Baselines, in the same run, on the path that served live signals before the live worker
(the sensor -> a run per symbol -> features_m1 + signals), with the API, pusher and EA as
above but no live worker:

- "dagster daemon": the stack as deployed -- `dagster-daemon run` on PostgreSQL instance
  storage (the repository's dagster.yaml) with its code server apart (workspace.grpc.yaml),
  new_candles_sensor every 10 s, a run per
  symbol through the QueuedRunCoordinator -- at a scale it can finish (4 symbols);
  bars that never reach the EA within 90 s count as lost.
- "in process": the same assets materialized with `dagster.materialize` per symbol,
  right after the POSTs: a lower bound of that path without the tick and the launches.

    python benchmarks/bench_live.py [--quick]
    python benchmarks/bench_live.py --stack [--quick]

``--stack`` measures the stack as deployed *with Dagster*: the code server (``dagster
code-server start -m mt5_pipeline``), and ``dagster-daemon`` and ``dagster-webserver``
loading the location from it (workspace.grpc.yaml), on the project's dagster.yaml
(PostgreSQL instance storage, the QueuedRunCoordinator), beside the API, two live
workers sharing the series by leases, the pusher and the EA. 28, 100 and 300 symbols;
the Dagster runs launched and the run-less events recorded per live bar; the workers'
CPU per bar; a run where one of the two workers is SIGKILLed mid-way (bars decided once,
takeover time); and the baseline, today's path: DAGSTER_LIVE_RUNS=true (a run per symbol
per bar beside the worker).
Rounds are paced ``--pace`` seconds apart (default 20 s: each round meets its own
sensor tick, as each minute's bars do in production).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from _support import ROOT, add_row, database_name, percentile, report, scratch_database, stop, wait_healthy

sys.path.insert(0, str(ROOT))

KEY = "bench-live-key-0123456789"
EA_KEY = "bench-ea-key-0123456789"
HISTORY_BARS = 1_400  # warm-up (300) + the incremental look-back (1,000) + room
# --stack: the workers' idle CPU is measured this long before the rounds
IDLE_SECONDS = 20.0
# what new_candles_sensor launches per symbol and bar
PER_BAR_JOBS = (
    "predict_job",
    "features_job",
)
ENV = {
    "RF_N_ESTIMATORS": "30",
    "RF_MAX_DEPTH": "8",
    "RF_MIN_SAMPLES_LEAF": "20",
    # Every probability becomes a BUY or a SELL: every bar is a signal to time. The SELL
    # threshold is the double just below 0.5, so no probability falls between the two: a
    # forest's average of leaves that "is" 0.5 often comes out a hair below it, and with
    # 0.4999 about one bar in 2,200 was (rightly) neutral and counted as missing.
    "SIGNAL_BUY_THRESHOLD": "0.5",
    "SIGNAL_SELL_THRESHOLD": "0.49999999999999994",
    "SIGNAL_TTL_SECONDS": "14400",
    "SIGNAL_MAX_BAR_AGE_SECONDS": "86400",
    "LOG_LEVEL": "WARNING",
    # Random walks cannot beat the baselines; the model is only here to be timed.
    "PROMOTION_FORCE": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _symbols(n: int) -> list[str]:
    majors = ["EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY"]
    pairs = [a + b for i, a in enumerate(majors) for b in majors[i + 1 :]]  # the 28 majors and crosses
    # Beyond the 28: real currency pairs against other currencies, so each has an FX pip.
    others = ["SEK", "NOK", "DKK", "PLN", "HUF", "CZK", "TRY", "ZAR", "MXN", "SGD", "HKD", "CNH"]
    # Beyond those 124 (the 300-symbol run): the same currencies the other way round, then
    # the other currencies against each other -- still currency pairs, with an FX pip.
    more = [b + a for a in majors for b in others] + [a + b for a in others for b in others if a != b]
    names = pairs + [a + b for a in majors for b in others] + more
    if n > len(names):
        raise SystemExit(f"at most {len(names)} symbols")
    return names[:n]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (LIVE_PROCESSES > 1 runs the workers as children)."""
    total = _cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            total += _tree_cpu_seconds(int(child))
        except FileNotFoundError:
            pass
    return total


def _role(cmdline: list[str]) -> str | None:
    """Which part of the stack a process is, by its command line (None: not the stack's)."""
    text = " ".join(cmdline)
    if cmdline and cmdline[0].startswith("postgres"):
        return "postgres"
    for needle, role in (
        (" live", "live workers"), (" serve", "api"), (" push", "pusher"), (" ea-sim", "ea"),
        ("dagster-daemon", "dagster daemon"), ("dagster-webserver", "dagster webserver"),
        ("dagster api grpc", "dagster code server"), ("dagster code-server", "dagster code server"),
        ("bench_live.py", "benchmark client"),
    ):  # fmt: skip
        if needle in text:
            return role
    return None


def _cpu_by_role() -> Counter:
    """CPU seconds so far of every process of the stack on this machine, summed by role."""
    out: Counter = Counter()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            role = _role([c for c in cmdline if c])
            if role is not None:
                out[role] += _cpu_seconds(int(proc.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return out


class Stack:
    """API, live worker, pusher and reference EA as processes."""

    def __init__(self, url: str, model_dir: Path, workdir: Path, *, live: bool = True, processes: int = 1) -> None:
        self.api_port, self.ea_port = _free_port(), _free_port()
        self.ea_log = workdir / "ea-received.jsonl"
        self._read_to = 0
        self._received: list[dict] = []
        self._by_bar: dict[str, dict[str, float]] = {}
        self.env = {
            **os.environ,
            **ENV,
            "DATABASE_URL": url,
            "MODEL_DIR": str(model_dir),
            "API_KEYS": KEY,
            "API_PORT": str(self.api_port),
            "EA_SERVER_URL": f"http://127.0.0.1:{self.ea_port}/signals",
            "EA_API_KEY": EA_KEY,
            "LIVE_PROCESSES": str(processes),
        }
        bin_ = Path(sys.executable).with_name("mt5-pipeline")
        commands = {
            "ea": [
                str(bin_),
                "ea-sim",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ea_port),
                "--log-file",
                str(self.ea_log),
            ],
            "api": [str(bin_), "serve", "--port", str(self.api_port)],
            "pusher": [str(bin_), "push"],
        }
        if live:
            commands["live"] = [str(bin_), "live"]
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = {name: workdir / f"{name}.log" for name in commands}
        for name, argv in commands.items():
            self.procs[name] = subprocess.Popen(
                argv, env=self.env, cwd=workdir, stdout=self.logs[name].open("w"), stderr=subprocess.STDOUT
            )
        wait_healthy(f"http://127.0.0.1:{self.ea_port}/health", self.procs["ea"], self.logs["ea"], 60)
        wait_healthy(f"http://127.0.0.1:{self.api_port}/health", self.procs["api"], self.logs["api"], 60)
        time.sleep(2.0)  # the workers' imports, and the live worker's first pass

    def received(self) -> list[dict]:
        """Every receipt the EA logged so far; the log is read from where the last call stopped."""
        if not self.ea_log.exists():
            return self._received
        with self.ea_log.open("rb") as f:
            f.seek(self._read_to)
            data = f.read()
        # The EA may be mid-write: a line counts once its newline is there.
        complete = data[: data.rfind(b"\n") + 1]
        self._read_to += len(complete)
        for line in complete.splitlines():
            if line.strip():
                x = json.loads(line)
                self._received.append(x)
                self._by_bar.setdefault(x["signal"]["timestamp"], {})[x["signal"]["symbol"]] = x["received_at"]
        return self._received

    def receipts(self, bar_iso: str) -> dict[str, float]:
        """{symbol: receipt time} of the signals for the bar so far (a repeat: its last receipt)."""
        self.received()
        return dict(self._by_bar.get(bar_iso, {}))

    def close(self) -> None:
        for proc in self.procs.values():
            stop(proc)


class EAs:
    """The N EAs' POSTs /ingest, at little CPU of this machine's (in production each EA is
    another machine): one keep-alive connection per EA, each round's requests encoded
    before its release, sent back to back from this one thread, then each 200 read.

    The server closes a connection idle longer than its keep-alive (uvicorn: 5 s, shorter
    than the pace); like an HTTP client's pool, such a connection is reopened when the
    round's request is sent, after the release, so the latency still includes the connect."""

    def __init__(self, api_port: int, n: int) -> None:
        self.port = api_port
        self.socks: list[socket.socket | None] = [None] * n
        self.head = (
            f"POST /ingest HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nX-API-Key: {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def request(self, symbol: str, bar: dict) -> bytes:
        # The body as httpx's json= encodes it.
        body = json.dumps(
            {"symbol": symbol, "timeframe": "M1", "candles": [bar]},
            ensure_ascii=False, separators=(",", ":"), allow_nan=False,
        ).encode()  # fmt: skip
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def _connected(self, i: int) -> socket.socket:
        sock = self.socks[i]
        # An idle keep-alive connection that reads as ready has been closed by the server.
        if sock is not None and select.select([sock], [], [], 0)[0]:
            sock.close()
            sock = None
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks[i] = sock
        return sock

    def post_round(self, bars: dict[str, dict]) -> float:
        """POST each symbol's bar, all released at once; returns the release time."""
        requests = [self.request(symbol, bar) for symbol, bar in bars.items()]
        started = time.time()
        for i, raw in enumerate(requests):
            self._connected(i).sendall(raw)
        errors: list[str] = []
        for i, symbol in enumerate(bars):
            sock = self.socks[i]
            assert sock is not None
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            body = response.read()
            if response.status != 200:
                errors.append(f"{symbol}: {response.status} {body[:200]!r}")
            if response.will_close:
                sock.close()
                self.socks[i] = None
        if errors:
            raise SystemExit("ingest failed: " + "; ".join(errors[:5]))
        return started

    def close(self) -> None:
        for sock in self.socks:
            if sock is not None:
                sock.close()


def _bar(frame, i: int) -> dict:
    row = frame.iloc[i]
    return {
        k: (int(row[k]) if k in ("time", "tick_volume", "spread", "real_volume") else float(row[k]))
        for k in frame.columns
    }


def prepare(url: str, model_dir: Path, symbols: list[str], first_round_open: int, rounds: int):
    """History up to the bar before the first round, features, one model; returns each symbol's frame."""
    from _support import make_bars

    from mt5_pipeline.learning.features import update_features
    from mt5_pipeline.learning.training import train_model
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.settings import Settings

    start = first_round_open - HISTORY_BARS * 60
    frames = {}
    for i, symbol in enumerate(symbols):
        frame = make_bars(HISTORY_BARS + rounds, seed=100 + i, start=start)
        ingest_candles(url, symbol, "M1", frame.iloc[:HISTORY_BARS])
        update_features(url, symbol, "M1")
        frames[symbol] = frame
    settings = Settings.from_env({**ENV, "DATABASE_URL": url, "MODEL_DIR": str(model_dir)}, env_file=None)
    train_model(settings, symbols[:3])
    return frames


class Prepared(NamedTuple):
    """What each run starts from (see _prepared)."""

    symbols: list[str]
    first: int  # the open of the first round's bar (Unix seconds)
    url: str
    work: Path
    frames: dict


@contextmanager
def _prepared(n_symbols: int, rounds: int, label: str) -> Iterator[Prepared]:
    """N symbols, a scratch database named after `label` and a work folder, prepared (history,
    features, a model in work/models) for `rounds` rounds that end minutes before now."""
    symbols = _symbols(n_symbols)
    first = int(time.time()) // 60 * 60 - (rounds + 5) * 60
    with scratch_database(label) as url, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = prepare(url, work / "models", symbols, first, rounds)
        yield Prepared(symbols, first, url, work, frames)


def _timed_rounds(
    stack: Stack, symbols: list[str], frames: dict, first: int, rounds: int, *, wait: float, after_post=None
) -> tuple[list[float], int]:
    """POST one bar per symbol per round and time each to the EA's receipt; (latencies in s, bars lost)."""
    eas = EAs(stack.api_port, len(symbols))
    latencies: list[float] = []
    lost = 0
    try:
        for r in range(rounds):
            bars = {s: _bar(frames[s], HISTORY_BARS + r) for s in symbols}
            bar_iso = _iso(first + r * 60)
            started = eas.post_round(bars)
            if after_post is not None:
                after_post(symbols)
            got = _wait_received(stack, bar_iso, len(symbols), wait)
            lost += len(symbols) - len(got)
            latencies += [t - started for t in got.values()]
            time.sleep(0.3)
    finally:
        eas.close()
    return latencies, lost


def _wait_received(stack: Stack, bar_iso: str, n: int, wait: float) -> dict[str, float]:
    """{symbol: receipt time} of the signals for the bar, once all n arrived or `wait` ran out."""
    deadline = time.monotonic() + wait
    while True:
        got = stack.receipts(bar_iso)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def _iso(ts: int) -> str:
    """A bar's open as the signals stamp it."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _repeats(received: list[dict]) -> dict:
    """Signals the EA received more than once, and bars that got a second signal."""
    per_id = Counter(x["signal"]["signal_id"] for x in received)
    per_bar = Counter((x["signal"]["symbol"], x["signal"]["timestamp"]) for x in received)
    return {
        "duplicate_deliveries": sum(n - 1 for n in per_id.values()),
        "second_signal_for_a_bar": sum(1 for n in per_bar.values() if n > 1),
    }


def _summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_s": float("nan"), "p99_s": float("nan"), "max_s": float("nan")}
    return {"p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99), "max_s": max(latencies)}


def run_live(n_symbols: int, rounds: int, processes: int = 1) -> dict:
    with _prepared(n_symbols, rounds, "bench_live") as (symbols, first, url, work, frames):
        stack = Stack(url, work / "models", work, processes=processes)
        try:
            cpu0 = _tree_cpu_seconds(stack.procs["live"].pid)
            latencies, missing = _timed_rounds(stack, symbols, frames, first, rounds, wait=20)
            cpu = _tree_cpu_seconds(stack.procs["live"].pid) - cpu0
            received = stack.received()
        finally:
            stack.close()
    return {
        "symbols": n_symbols,
        "processes": processes,
        "rounds": rounds,
        "bars": n_symbols * rounds,
        "received": len(latencies),
        "missing": missing,
        **_repeats(received),
        "cpu_ms_per_bar": 1000 * cpu / max(1, n_symbols * rounds),
        **_summary(latencies),
    }


def run_dagster_baseline(n_symbols: int, rounds: int) -> dict:
    """The old path's work for each bar: a Dagster run per symbol (features_m1 + signals), in process."""
    import dagster as dg

    from mt5_pipeline.orchestration.assets import features_m1, signals
    from mt5_pipeline.orchestration.resources import resources_for
    from mt5_pipeline.settings import Settings

    with _prepared(n_symbols, rounds, "bench_live_base") as (symbols, first, url, work, frames):
        stack = Stack(url, work / "models", work, live=False)
        settings = Settings.from_env({**ENV, "DATABASE_URL": url, "MODEL_DIR": str(work / "models")}, env_file=None)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("symbols", symbols)
        resources = resources_for(settings, **ENV)

        def runs(posted: list[str]) -> None:
            for s in posted:
                dg.materialize(
                    [features_m1, signals], partition_key=s, instance=instance, resources=resources, raise_on_error=True
                )

        try:
            latencies, lost = _timed_rounds(stack, symbols, frames, first, rounds, wait=20, after_post=runs)
        finally:
            stack.close()
    return {"symbols": n_symbols, "rounds": rounds, "received": len(latencies), "lost": lost, **_summary(latencies)}


def dagster_instance_env(work: Path, url: str) -> dict[str, str]:
    """A Dagster home under ``work`` with the project's own dagster.yaml (PostgreSQL storage
    on the scratch database), and the variables that point Dagster at it."""
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": database_name(url),
        "DAGSTER_AUTOSTART": "true",
    }


def _record(argv: list[str], env: dict[str, str]) -> list[str]:
    """A Dagster process (and the runs it launches) at the priority deployments give it:
    DAGSTER_NICE, as `mt5-pipeline dev` does (the units: Nice=10; mt5_pipeline.apps.priority).
    The bench's processes share its session, so the niceness alone ranks them."""
    from mt5_pipeline.apps.priority import niced
    from mt5_pipeline.settings import Settings

    return niced(argv, Settings.from_env(env, env_file=None).dagster_nice)


@contextmanager
def code_server(env: dict[str, str], log: Path) -> Iterator[list[str]]:
    """The deployments' code server (`dagster code-server start -m mt5_pipeline`, compose's
    dagster-code-server, the unit mt5-dagster-code-server) on a free loopback port, at the
    record's priority; ``env`` gains the address workspace.grpc.yaml reads. Yields the
    ``-w`` arguments for the daemon and the webserver."""
    port = _free_port()
    env.update({"DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(port)})
    proc = subprocess.Popen(
        _record([str(Path(sys.executable).with_name("dagster")), "code-server", "start", "-m", "mt5_pipeline"], env),
        env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the code server never opened its port:\n" + log.read_text()[-3000:]) from None
                time.sleep(0.2)
        yield ["-w", str(ROOT / "workspace.grpc.yaml")]
    finally:
        stop(proc, timeout=30)


def run_daemon_baseline(n_symbols: int, rounds: int, *, wait: float = 90.0) -> dict:
    """The sensor-and-run path as deployed: dagster-daemon on PostgreSQL storage, its code
    location from the code server."""

    with _prepared(n_symbols, rounds, "bench_live_daemon") as (symbols, first, url, work, frames), ExitStack() as done:
        stack = Stack(url, work / "models", work, live=False)
        done.callback(stack.close)
        env = {**stack.env, **dagster_instance_env(work, url)}
        workspace = done.enter_context(code_server(env, work / "code-server.log"))
        daemon_log = work / "daemon.log"
        daemon = subprocess.Popen(
            _record([str(Path(sys.executable).with_name("dagster-daemon")), "run", *workspace], env),
            env=env,
            cwd=ROOT,
            stdout=daemon_log.open("w"),
            stderr=subprocess.STDOUT,
        )
        done.callback(stop, daemon, timeout=30)
        # The first tick signals the history's newest bar: the daemon is then warm.
        last_hist = _iso(first - 60)
        if len(_wait_received(stack, last_hist, len(symbols), 180)) < len(symbols):
            raise SystemExit("the daemon never signalled the history's newest bar:\n" + daemon_log.read_text()[-3000:])
        latencies, lost = _timed_rounds(stack, symbols, frames, first, rounds, wait=wait)
    return {"symbols": n_symbols, "rounds": rounds, "received": len(latencies), "lost": lost, **_summary(latencies)}


# ---- the stack as deployed, with Dagster ------------------------------------------------------


def _sql(url: str, query: str) -> list[tuple]:
    from mt5_pipeline.storage.engine import get_engine

    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(query).all()]


def _dagster_jobs(url: str) -> dict[str, str]:
    """{run_id: job name} of the runs in the instance (what launched a run is its job)."""
    try:
        return {r[0]: r[1] for r in _sql(url, "SELECT run_id, pipeline_name FROM runs")}
    except Exception:  # the daemon has not created its tables yet
        return {}


def _dagster_counts(url: str) -> tuple[int, int]:
    """(runs in the instance, run-less materializations of `signals`) in the scratch database."""
    try:
        runs = _sql(url, "SELECT count(*) FROM runs")[0][0]
        events = _sql(
            url,
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = "
            "'[\"signals\"]' AND run_id = ''",
        )[0][0]
    except Exception:  # the daemon has not created its tables yet
        return 0, 0
    return int(runs), int(events)


class DagsterStack:
    """Stack plus N live workers (`mt5-pipeline live` each, as `--scale live-signals=N`), the
    code server, and dagster-daemon and dagster-webserver loading the location from it, on
    the project's dagster.yaml: the deployments' Dagster (docker-compose.yml, the units)."""

    def __init__(self, url: str, model_dir: Path, work: Path, *, workers: int, live_runs: bool) -> None:

        self.url = url
        self.stack = Stack(url, model_dir, work, live=False)
        self.env = {
            **self.stack.env,
            "LIVE_PROCESSES": "1",
            **dagster_instance_env(work, url),
            "DAGSTER_LIVE_RUNS": "true" if live_runs else "false",
        }
        bin_ = Path(sys.executable).with_name("mt5-pipeline")
        self.workers = [
            subprocess.Popen(
                [str(bin_), "live"],
                env=self.env,
                cwd=work,
                stdout=(work / f"live{i}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            for i in range(workers)
        ]
        deadline = time.monotonic() + 120
        while _alive_workers(url) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("the live workers never started:\n" + (work / "live0.log").read_text()[-3000:])
            time.sleep(0.2)
        self.daemon_log = work / "daemon.log"
        self.web_port = _free_port()
        self.code_server = ExitStack()
        workspace = self.code_server.enter_context(code_server(self.env, work / "code-server.log"))
        self.daemon = subprocess.Popen(
            _record([str(Path(sys.executable).with_name("dagster-daemon")), "run", *workspace], self.env),
            env=self.env, cwd=ROOT, stdout=self.daemon_log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.web = subprocess.Popen(
            _record([str(Path(sys.executable).with_name("dagster-webserver")), *workspace,
                     "-h", "127.0.0.1", "-p", str(self.web_port)], self.env),
            env=self.env, cwd=ROOT, stdout=(work / "webserver.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_healthy(f"http://127.0.0.1:{self.web_port}/server_info", self.web, work / "webserver.log", 180)

    def worker_cpu(self) -> float:
        total = 0.0
        for w in self.workers:
            try:
                total += _tree_cpu_seconds(w.pid)
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        for proc in (self.daemon, self.web, *self.workers):
            if proc.poll() is None:
                stop(proc, timeout=30)
        self.code_server.close()
        self.stack.close()


def _alive_workers(url: str) -> int:
    try:
        return int(_sql(url, "SELECT count(*) FROM live_workers WHERE expires_at >= now()")[0][0])
    except Exception:
        return 0


def _takeover_watch(url: str, killed_at: float, out: dict) -> None:
    """Seconds from the kill until one worker holds every series."""
    from mt5_pipeline.storage.leases import holders

    while time.monotonic() - killed_at < 60:
        held = holders(url)
        if held and None not in held.values() and len(set(held.values())) == 1:
            out["takeover_s"] = time.monotonic() - killed_at
            return
        time.sleep(0.05)


def run_stack(
    n_symbols: int,
    rounds: int,
    *,
    workers: int = 2,
    live_runs: bool = False,
    kill_after: int | None = None,
    pace: float = 20.0,
) -> dict:
    label = "runs" if live_runs else "kill" if kill_after is not None else "stack"
    with _prepared(n_symbols, rounds, f"bench_live_{label}") as (symbols, first, url, work, frames):
        ds = DagsterStack(url, work / "models", work, workers=workers, live_runs=live_runs)
        stack = ds.stack
        extra: dict = {}
        try:
            # Warm: the workers decide the history's newest bar at start; the EA has them.
            last_hist = _iso(first - 60)
            warm = _wait_received(stack, last_hist, len(symbols), 180)
            if len(warm) < len(symbols):
                raise SystemExit(f"only {len(warm)} of {len(symbols)} warm-up signals arrived")
            time.sleep(12)  # a sensor tick records the warm-up (and adds the partitions)
            # The workers' CPU with nothing to decide (lease ticks, LISTEN, timers), apart
            # from the CPU per bar: over a run of N seconds it is N times this, bars or not.
            idle0, idle_t0, idle_roles0 = ds.worker_cpu(), time.monotonic(), _cpu_by_role()
            time.sleep(IDLE_SECONDS)
            idle_s = time.monotonic() - idle_t0
            idle_cpu_per_s = (ds.worker_cpu() - idle0) / idle_s
            idle_roles = _cpu_by_role()
            idle_by_role = {k: (idle_roles[k] - idle_roles0.get(k, 0.0)) / idle_s for k in idle_roles}
            runs0, events0 = _dagster_counts(url)
            jobs0 = _dagster_jobs(url)
            cpu0 = ds.worker_cpu()
            roles0 = _cpu_by_role()
            rounds_from = _sql(url, "SELECT now()")[0][0]
            t0 = time.monotonic()
            latencies: list[float] = []
            per_round: list[list[float]] = []
            missing = 0
            eas = EAs(stack.api_port, len(symbols))
            try:
                for r in range(rounds):
                    round_start = time.monotonic()
                    bars = {s: _bar(frames[s], HISTORY_BARS + r) for s in symbols}
                    bar_iso = _iso(first + r * 60)
                    started = eas.post_round(bars)
                    got = _wait_received(stack, bar_iso, len(symbols), 60)
                    missing += len(symbols) - len(got)
                    per_round.append([t - started for t in got.values()])
                    latencies += per_round[-1]
                    if kill_after is not None and r + 1 == kill_after:
                        victim = ds.workers[0]
                        victim.kill()  # SIGKILL: no lease given back
                        killed_at = time.monotonic()
                        watcher = threading.Thread(target=_takeover_watch, args=(url, killed_at, extra), daemon=True)
                        watcher.start()
                        extra["kill_round"] = r + 1
                        continue  # the next round right away: its bars meet the takeover
                    time.sleep(max(0.3, pace - (time.monotonic() - round_start)))
            finally:
                eas.close()
            elapsed = time.monotonic() - t0
            cpu = ds.worker_cpu() - cpu0
            roles = _cpu_by_role()
            # What each part of the stack spent per bar over the rounds (idle time included;
            # a process that ended meanwhile is left out).
            by_role = {k: round(1000 * (roles[k] - roles0.get(k, 0.0)) / (n_symbols * rounds), 2) for k in roles}
            busy_by_role = {
                k: round(
                    1000 * max(0.0, roles[k] - roles0.get(k, 0.0) - idle_by_role.get(k, 0.0) * elapsed)
                    / (n_symbols * rounds), 2,
                )
                for k in roles
            }  # fmt: skip
            # The sensor records the last round on its next tick.
            deadline = time.monotonic() + 40
            runs1, events1 = _dagster_counts(url)
            while events1 - events0 < n_symbols * rounds and not live_runs and time.monotonic() < deadline:
                time.sleep(1)
                runs1, events1 = _dagster_counts(url)
            new_runs = Counter(job for run_id, job in _dagster_jobs(url).items() if run_id not in jobs0)
            if kill_after is not None:
                watcher.join(60)
                after = per_round[kill_after] if kill_after < len(per_round) else []
                extra["after_kill_p99_s"] = percentile(after, 0.99) if after else float("nan")
                extra["after_kill_max_s"] = max(after) if after else float("nan")
            received = stack.received()
            # How the rounds' bars were decided: "tail" (one row from memory) or "batch".
            # A decision's own time (the worker's wall time per series), round by round.
            per_round_ms = [
                [round(1000 * float(r[1]), 1), round(1000 * float(r[2]), 1)]
                for r in _sql(
                    url,
                    "SELECT bar, avg(seconds), max(seconds) FROM live_decisions WHERE decided_at >= "
                    f"'{rounds_from.isoformat()}' GROUP BY bar ORDER BY bar",
                )
            ]
            paths = {
                f"{r[0] or '-'}/{r[1]}": int(r[2])
                for r in _sql(
                    url,
                    "SELECT feature_path, trigger, count(*) FROM live_decisions WHERE decided_at >= "
                    f"'{rounds_from.isoformat()}' GROUP BY 1, 2",
                )
            }
        finally:
            ds.close()
    bars_n = n_symbols * rounds
    return {
        "symbols": n_symbols,
        "workers": workers,
        "live_runs": live_runs,
        "rounds": rounds,
        "bars": bars_n,
        "received": len(latencies),
        "missing": missing,
        **_repeats(received),
        "cpu_ms_per_bar": 1000 * cpu / max(1, bars_n),
        # The same less what the workers spend idle over the run's length (both workers).
        "busy_cpu_ms_per_bar": 1000 * max(0.0, cpu - idle_cpu_per_s * elapsed) / max(1, bars_n),
        "idle_cpu_ms_per_s": 1000 * idle_cpu_per_s,
        "dagster_runs": runs1 - runs0,
        "dagster_run_jobs": dict(new_runs),
        "dagster_runs_per_minute": (runs1 - runs0) / (elapsed / 60),
        # Only the runs a live bar launches (the per-bar jobs); a schedule's run (drift checks
        # at :07, live performance at :17) or a push run is in dagster_run_jobs, not here.
        "dagster_runs_per_bar": sum(n for job, n in new_runs.items() if job.startswith(PER_BAR_JOBS)) / bars_n,
        "runless_signal_events": events1 - events0,
        "cpu_ms_per_bar_by_role": by_role,
        "busy_cpu_ms_per_bar_by_role": busy_by_role,
        "idle_cpu_ms_per_s_by_role": {k: round(1000 * v, 2) for k, v in idle_by_role.items()},
        "decisions_by_path": paths,
        "decision_ms_by_round": per_round_ms,
        "elapsed_s": elapsed,
        **_summary(latencies),
        # The first round is the first bar close after the workers built their tails from the
        # history, posted all at once: its stamps are read once more (the tail's margin).
        "round_p99_s": [percentile(x, 0.99) if x else float("nan") for x in per_round],
        "later_rounds_p99_s": percentile([t for x in per_round[1:] for t in x], 0.99)
        if len(per_round) > 1
        else float("nan"),
        **extra,
    }


def _load() -> str:
    load1, load5, load15 = os.getloadavg()
    return f"load average {load1:.2f} / {load5:.2f} / {load15:.2f} on {os.cpu_count()} cores"


def stack_main(quick: bool, pace: float, only: list[int] | None = None, baseline: bool = True) -> None:
    print(f"start: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC, {_load()}")
    runs = {}
    scales = [(28, 3), (100, 2)] if quick else [(28, 8), (100, 6), (300, 4)]
    for n, rounds in scales if not only else [(n, 3 if quick else 4) for n in only]:
        runs[f"{n}"] = run_stack(n, rounds, pace=pace)
        print(json.dumps(runs[f"{n}"]), _load(), flush=True)
    if not only:
        runs["kill"] = run_stack(28, 4 if quick else 8, kill_after=2 if quick else 4, pace=pace)
        print(json.dumps(runs["kill"]), _load(), flush=True)
    if baseline or not only:
        runs["baseline"] = run_stack(28, 3 if quick else 4, workers=1, live_runs=True, pace=pace)
        print(json.dumps(runs["baseline"]), _load(), flush=True)
    print(f"end: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC, {_load()}")
    print(
        "\nrun                    symbols workers rounds bars recv missing dup 2nd  p50ms  p99ms  maxms  CPUms/bar "
        "busyms/bar idlems/s  runs/min runs/bar runless-events"
    )
    for name, r in runs.items():
        print(
            f"{name:<22} {r['symbols']:>7} {r['workers']:>7} {r['rounds']:>6} {r['bars']:>4} {r['received']:>4} "
            f"{r['missing']:>7} {r['duplicate_deliveries']:>3} "
            f"{r['second_signal_for_a_bar']:>3} {r['p50_s'] * 1000:>6.0f} {r['p99_s'] * 1000:>6.0f} "
            f"{r['max_s'] * 1000:>6.0f} {r['cpu_ms_per_bar']:>10.2f} "
            f"{r['busy_cpu_ms_per_bar']:>10.2f} {r['idle_cpu_ms_per_s']:>8.2f} "
            f"{r['dagster_runs_per_minute']:>9.1f} {r['dagster_runs_per_bar']:>8.2f} {r['runless_signal_events']:>14}"
        )
    for name, r in runs.items():
        shares = ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(r["cpu_ms_per_bar_by_role"].items(), key=lambda kv: -kv[1])
        )
        print(f"{name}: CPU ms per bar by part of the stack (machine-wide, idle included): {shares}")
        shares = ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(r["busy_cpu_ms_per_bar_by_role"].items(), key=lambda kv: -kv[1])
        )
        print(f"{name}: the same less each part's idle CPU: {shares}")
        shares = ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(r["idle_cpu_ms_per_s_by_role"].items(), key=lambda kv: -kv[1])
        )
        print(f"{name}: idle CPU ms per second by part: {shares}")
        print(f"{name}: a decision's wall time per round, mean / max ms: {r['decision_ms_by_round']}")
        print(f"{name}: decisions in the rounds by feature path/trigger: {r['decisions_by_path']}")
    for name, r in runs.items():
        if r["dagster_run_jobs"]:
            print(f"{name}: Dagster runs launched during the rounds, by job: {r['dagster_run_jobs']}")
    kill, base = runs.get("kill"), runs.get("baseline")
    if kill is not None:
        print(
            f"\nkill: worker 1 of 2 SIGKILLed after round {kill.get('kill_round')}; takeover "
            f"{kill.get('takeover_s', float('nan')):.2f} s; next round p99 "
            f"{kill.get('after_kill_p99_s', float('nan')) * 1000:.0f} ms"
        )
    rows: list[dict] = []
    for n in (k for k in runs if k.isdigit()):  # --only may name any symbol count
        _scale_rows(rows, n, runs[n], base if n == "28" else None)
    if kill is not None:
        add_row(
            rows,
            "kill one of two workers: takeover",
            kill.get("takeover_s", float("nan")),
            "s",
            None,
            "a few seconds",
            digits=2,
        )
        add_row(
            rows,
            "kill one of two workers: second signal for a bar",
            kill["second_signal_for_a_bar"],
            "bars",
            None,
            "0",
            digits=0,
        )
    if base is not None:
        add_row(
            rows, "baseline (DAGSTER_LIVE_RUNS=true), 28 symbols: Dagster runs per minute",
            base["dagster_runs_per_minute"], "runs/min", None, "", digits=1,
        )  # fmt: skip
    report("bench_live_stack" if not only else "bench_live_stack_only", rows)


def _scale_rows(rows: list[dict], n: str, r: dict, base: dict | None) -> None:
    aim = {"28": "p99 < 500 ms", "100": "p99 < 1,000 ms"}.get(n, "")
    figure = f"stack with Dagster: {n} symbols"
    add_row(
        rows, f"{figure}, close -> EA p99", r["p99_s"] * 1000, "ms", base["p99_s"] * 1000 if base else None, aim,
        digits=0, higher_is_better=False,
    )  # fmt: skip
    add_row(
        rows, f"{figure}, close -> EA p99 after the first round", r["later_rounds_p99_s"] * 1000, "ms", None,
        "per round: " + ", ".join(f"{x * 1000:.0f}" for x in r["round_p99_s"]), digits=0, higher_is_better=False,
    )  # fmt: skip
    add_row(
        rows, f"{figure}, worker CPU per bar (all, idle included)", r["cpu_ms_per_bar"], "ms",
        base["cpu_ms_per_bar"] if base else None, "< 3 ms", digits=2, higher_is_better=False,
    )  # fmt: skip
    add_row(
        rows, f"{figure}, worker CPU per bar (less idle)", r["busy_cpu_ms_per_bar"], "ms",
        base["busy_cpu_ms_per_bar"] if base else None, "< 3 ms", digits=2, higher_is_better=False,
    )  # fmt: skip
    add_row(rows, f"{figure}, workers' idle CPU per second", r["idle_cpu_ms_per_s"], "ms/s", None, "", digits=2)
    add_row(rows, f"{figure}, Dagster runs per live bar", r["dagster_runs_per_bar"], "runs", None, "0", digits=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no 100-symbol run")
    parser.add_argument(
        "--stack",
        action="store_true",
        help="the stack as deployed with Dagster: code server, daemon and webserver (see the docstring)",
    )
    parser.add_argument("--pace", type=float, default=20.0, help="--stack: seconds between rounds")
    parser.add_argument(
        "--only",
        type=int,
        nargs="*",
        help="--stack: only these symbol counts (no kill run; the baseline unless --no-baseline)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="--stack --only: skip the baseline run")
    args = parser.parse_args()
    if args.stack:
        stack_main(args.quick, args.pace, args.only, baseline=not args.no_baseline)
        return
    rounds = 5 if args.quick else 20
    scales = [1, 28] if args.quick else [1, 28, 100]
    results = {n: run_live(n, rounds if n <= 28 else max(5, rounds // 2), processes=2) for n in scales}
    one_process = run_live(28, rounds, processes=1)
    base = run_dagster_baseline(4, 2 if args.quick else 3)
    daemon = run_daemon_baseline(4, 2 if args.quick else 3)

    live28 = results[28]
    print(
        f"\n(LIVE_PROCESSES=2; 28 symbols with LIVE_PROCESSES=1: p50 {one_process['p50_s'] * 1000:.0f} ms, p99 "
        f"{one_process['p99_s'] * 1000:.0f} ms, missing {one_process['missing']})"
    )
    print(
        "\nsymbols  rounds  bars  received  missing  dup.deliveries  2nd-signal  p50 ms  p99 ms  max ms  worker CPU "
        "ms/bar"
    )
    for n, r in results.items():
        print(
            f"{n:>7}  {r['rounds']:>6}  {r['bars']:>4}  {r['received']:>8}  {r['missing']:>7}  "
            f"{r['duplicate_deliveries']:>14}  "
            f"{r['second_signal_for_a_bar']:>10}  {r['p50_s'] * 1000:>6.0f}  {r['p99_s'] * 1000:>6.0f}  "
            f"{r['max_s'] * 1000:>6.0f}  {r['cpu_ms_per_bar']:>17.1f}"
        )
    print(
        f"\nbaseline (a Dagster run per symbol, in process, {base['symbols']} symbols x {base['rounds']} rounds): "
        f"received {base['received']}, p50 {base['p50_s'] * 1000:.0f} ms, p99 {base['p99_s'] * 1000:.0f} ms, max "
        f"{base['max_s'] * 1000:.0f} ms"
    )
    print(
        f"baseline (dagster-daemon on PostgreSQL storage, sensor + a run per symbol, {daemon['symbols']} symbols x "
        f"{daemon['rounds']} rounds): "
        f"received {daemon['received']}, lost {daemon['lost']}, p50 {daemon['p50_s'] * 1000:.0f} ms, p99 "
        f"{daemon['p99_s'] * 1000:.0f} ms, max {daemon['max_s'] * 1000:.0f} ms"
    )
    rows: list[dict] = []
    add_row(
        rows, "live: 28 symbols (LIVE_PROCESSES=2), POST -> EA p50", live28["p50_s"] * 1000, "ms", None, "", digits=0
    )
    add_row(
        rows,
        "live: 28 symbols, POST -> EA p99",
        live28["p99_s"] * 1000,
        "ms",
        daemon["p99_s"] * 1000,
        "p99 < 1,000 ms (baseline: dagster daemon, 4 symbols)",
        digits=0,
        higher_is_better=False,
    )
    add_row(rows, "live: 28 symbols, POST -> EA max", live28["max_s"] * 1000, "ms", None, "", digits=0)
    add_row(rows, "live: 28 symbols, bars without a signal at the EA", live28["missing"], "bars", None, "0", digits=0)
    add_row(
        rows,
        "live: 28 symbols, second signal for a bar",
        live28["second_signal_for_a_bar"],
        "bars",
        None,
        "0",
        digits=0,
    )
    add_row(rows, "live worker CPU per bar per symbol (28 symbols)", live28["cpu_ms_per_bar"], "ms", None, "", digits=1)
    add_row(
        rows,
        "live: 28 symbols, one worker process, POST -> EA p99",
        one_process["p99_s"] * 1000,
        "ms",
        None,
        f"{one_process['missing']} missing",
        digits=0,
    )
    for n, r in results.items():
        if n != 28:
            add_row(
                rows,
                f"live: {n} symbol(s), POST -> EA p99",
                r["p99_s"] * 1000,
                "ms",
                None,
                f"{r['missing']} missing",
                digits=0,
            )
    add_row(
        rows,
        f"baseline: dagster daemon + sensor ({daemon['symbols']} symbols), POST -> EA p99",
        daemon["p99_s"] * 1000,
        "ms",
        None,
        f"{daemon['lost']} of {daemon['symbols'] * daemon['rounds']} lost",
        digits=0,
    )
    add_row(
        rows,
        f"baseline: Dagster run per symbol in process ({base['symbols']} symbols), POST -> EA p99",
        base["p99_s"] * 1000,
        "ms",
        None,
        "lower bound of the sensor path",
        digits=0,
    )
    report("bench_live", rows)


if __name__ == "__main__":
    main()
