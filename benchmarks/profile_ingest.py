"""CPU of one small ``POST /ingest`` (1-2 bars) on PostgreSQL: the API process's and the database's.

Per variant of the code (this tree, and with ``--base REV`` that commit, unpacked to a
temporary folder) a scratch database is loaded with ``--history`` bars per symbol and a
real server (``mt5-pipeline serve``) started on it. Then rounds: each round POSTs the
next bar of every symbol, one request at a time, to each server in turn (the order
alternating per round), and reads the CPU the server process and its PostgreSQL backends
spent on it (/proc, clock ticks; a round of ``--symbols`` requests keeps the tick's
rounding small). Prints per request the CPU's median and p90 over the rounds.

Bodies (``--body``): ``plain`` is what bench_live posts (symbol, timeframe, one closed
bar); ``ea`` is what the MQL5 EA posts (server times in ``server_time_zone``, partial,
digits and point, the closed bar and the forming one, whose final version the next
request brings).

Then, per variant, a child process runs the same requests in process (httpx over
the ASGI app) and counts the client's round trips to PostgreSQL per request
(statements, COPYs, BEGIN, COMMIT/ROLLBACK); ``--profile`` adds cProfile's top functions
of this tree's handler.

    python benchmarks/profile_ingest.py [--base bf6681f] [--body ea|plain] [--symbols 28] [--rounds 30] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from _support import ROOT, make_bars, percentile, scratch_database, stop, wait_healthy

sys.path.insert(0, str(ROOT))

KEY = "profile-ingest-key-0123456789"
ZONE = "UTC+2"
ZONE_S = 2 * 3600
TICK = os.sysconf("SC_CLK_TCK")


def _bodies(symbol: str, frame, i: int, kind: str) -> dict:
    """The POST of bar `i` of `frame` (closed), in the shape of `kind`."""

    def bar(j: int, shift: int = 0) -> dict:
        row = frame.iloc[j]
        out = {
            k: (int(row[k]) if k in ("time", "tick_volume", "spread", "real_volume") else float(row[k]))
            for k in frame.columns
        }
        out["time"] += shift
        return out

    if kind == "plain":
        return {"symbol": symbol, "timeframe": "M1", "candles": [bar(i)]}
    forming = bar(i + 1, ZONE_S)
    forming["tick_volume"] = max(0, forming["tick_volume"] // 2)  # its final version (next POST) differs
    forming["close"] = forming["open"]
    forming["high"] = max(forming["high"], forming["open"])
    forming["low"] = min(forming["low"], forming["open"])
    return {
        "symbol": symbol,
        "timeframe": "M1",
        "candles": [bar(i, ZONE_S), forming],
        "server_time_zone": ZONE,
        "partial": True,
        "digits": 5,
        "point": 0.00001,
    }


def _frames(symbols: list[str], n: int, start: int) -> dict:
    return {s: make_bars(n, seed=k, start=start) for k, s in enumerate(symbols)}


def _load(url: str, frames: dict, history: int, kind: str) -> None:
    from mt5_pipeline.market.ingest import ingest_candles

    for symbol, frame in frames.items():
        part = frame.iloc[:history].copy()
        if kind == "plain":
            ingest_candles(url, symbol, "M1", part)
        else:
            part["time"] += ZONE_S
            ingest_candles(url, symbol, "M1", part, server_time_zone=ZONE, digits=5, point=0.00001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "API_KEYS": KEY, "LOG_LEVEL": "WARNING", "PRICE_MAX_JUMP": "10"}


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, every thread's


def _backends(dbname: str) -> list[int]:
    import psycopg
    from _support import SERVER_URL

    from mt5_pipeline.storage.engine import psycopg_conninfo

    with psycopg.connect(psycopg_conninfo(SERVER_URL), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'mt5-pipeline'", (dbname,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def _backend_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += _proc_cpu(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Server:
    def __init__(self, name: str, source: Path, url: str, work: Path) -> None:
        self.name, self.url, self.source = name, url, source
        self.port = _free_port()
        self.log = work / f"{name}.log"
        code = "from mt5_pipeline.apps.cli import main; sys.exit(main(['serve', '--port', sys.argv[1]]))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); {code}", str(self.port)],
            env=_env(url),
            cwd=work,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(f"http://127.0.0.1:{self.port}/health", self.proc, self.log, 120)
        import httpx

        self.client = httpx.Client(headers={"X-API-Key": KEY}, timeout=60)
        self.cpu: list[float] = []
        self.db_cpu: list[float] = []

    def round(self, bodies: list[dict]) -> None:
        pids = _backends(self.url.rsplit("/", 1)[1])
        c0, d0 = _proc_cpu(self.proc.pid), _backend_cpu(pids)
        for body in bodies:
            r = self.client.post(f"http://127.0.0.1:{self.port}/ingest", json=body)
            if r.status_code != 200 or r.json().get("rejected"):
                raise SystemExit(f"{self.name}: {r.status_code} {r.text[:300]}")
        pids = sorted(set(pids) | set(_backends(self.url.rsplit("/", 1)[1])))
        self.cpu.append((_proc_cpu(self.proc.pid) - c0) / len(bodies))
        self.db_cpu.append((_backend_cpu(pids) - d0) / len(bodies))

    def close(self) -> None:
        self.client.close()
        stop(self.proc)


@contextmanager
def _source(rev: str) -> Iterator[Path]:
    """The tree at `rev`, unpacked to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="profile_ingest_") as tmp:
        archive = subprocess.run(["git", "archive", rev, "mt5_pipeline"], cwd=ROOT, capture_output=True, check=True)
        path = Path(tmp) / "base.tar"
        path.write_bytes(archive.stdout)
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


# ---- the counting child ------------------------------------------------------------------


_CHILD = r"""
import cProfile, json, pstats, time, psycopg2, psycopg2.extensions as ext
counts = {"n": 0}

class Cursor(ext.cursor):
    def _one(self):
        # psycopg2 sends BEGIN of its own before the first statement of a transaction.
        counts["n"] += 1 + (self.connection.status == ext.STATUS_READY and not self.connection.autocommit)
    def execute(self, *a, **k):
        self._one(); return super().execute(*a, **k)
    def executemany(self, *a, **k):
        self._one(); return super().executemany(*a, **k)
    def copy_expert(self, *a, **k):
        self._one(); return super().copy_expert(*a, **k)

class Connection(ext.connection):
    def __init__(self, *a, **k):
        super().__init__(*a, **k); self.cursor_factory = Cursor
    def commit(self):
        counts["n"] += self.status == ext.STATUS_BEGIN; return super().commit()
    def rollback(self):
        counts["n"] += self.status == ext.STATUS_BEGIN; return super().rollback()

_connect = psycopg2.connect
psycopg2.connect = lambda *a, **k: _connect(*a, connection_factory=Connection, **k)

import asyncio, httpx
import mt5_pipeline.api.routes as routes
from mt5_pipeline.api.main import create_app
from mt5_pipeline.settings import Settings
job = json.loads(sys.argv[1])
app = create_app(Settings.from_env(job["env"], env_file=None))
profiler = cProfile.Profile(time.process_time) if job["profile"] else None  # CPU, not waits
if profiler:  # the core on this thread, where the profiler sees it
    async def inline(func, *args, **kwargs):
        return func(*args, **kwargs)
    routes.run_in_threadpool = inline
per = []

async def run():
    transport = httpx.ASGITransport(app=app)
    headers = {"X-API-Key": job["key"]}
    async with httpx.AsyncClient(transport=transport, base_url="http://app", headers=headers) as client:
        for k, body in enumerate(job["bodies"]):
            n0 = counts["n"]
            if profiler and k >= 5:
                profiler.enable()
            r = await client.post("/ingest", json=body)
            if profiler:
                profiler.disable()
            assert r.status_code == 200 and not r.json().get("rejected"), r.text
            per.append(counts["n"] - n0)

asyncio.run(run())
print(json.dumps({"per_request": per}))
if profiler:
    pstats.Stats(profiler, stream=sys.stderr).sort_stats(job["sort"]).print_stats(70)
"""


def _count(source: Path, url: str, bodies: list[dict], profile: bool) -> list[int]:
    job = {"env": _env(url), "key": KEY, "bodies": bodies, "profile": profile, "sort": "cumulative"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(source)!r}); exec(sys.stdin.read())",
            json.dumps(job),
        ],
        input=_CHILD,
        capture_output=True,
        text=True,
        env=_env(url),
        cwd=str(ROOT / "benchmarks"),
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-4000:])
    if profile:
        print(out.stderr)
    return list(json.loads(out.stdout.strip().splitlines()[-1])["per_request"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="a commit to compare with (unpacked from git, run in the same rounds)")
    parser.add_argument("--body", choices=("ea", "plain"), default="ea")
    parser.add_argument("--symbols", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--history", type=int, default=500)
    parser.add_argument("--count", type=int, default=40, help="requests of the counting pass")
    parser.add_argument("--profile", action="store_true", help="cProfile this tree's requests (counting pass)")
    args = parser.parse_args()

    symbols = [f"SYM{k:03d}" for k in range(args.symbols)]
    total = args.history + args.rounds + args.count + 2
    start = (int(time.time()) // 60 - total - 5) * 60  # every bar closed by the time it is posted
    frames = _frames(symbols, total, start)
    with ExitStack() as stack:
        variants = [("new", ROOT)]
        if args.base:
            variants.insert(0, ("base", stack.enter_context(_source(args.base))))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="profile_ingest_")))
        servers = []
        for name, source in variants:
            url = stack.enter_context(scratch_database(f"profile_ingest_{name}"))
            _load(url, frames, args.history, args.body)
            servers.append(stack.enter_context(_closing(Server(name, source, url, work))))
        for r in range(args.rounds):
            bodies = [_bodies(s, frames[s], args.history + r, args.body) for s in symbols]
            for server in servers if r % 2 == 0 else servers[::-1]:
                server.round(bodies)
        counting_from = args.history + args.rounds
        print(f"body {args.body}; {args.symbols} symbols x {args.rounds} rounds; CPU per request (ms), median / p90")
        for server in servers:
            bodies = [_bodies(symbols[k % len(symbols)], frames[symbols[k % len(symbols)]],
                              counting_from + k // len(symbols), args.body) for k in range(args.count)]  # fmt: skip
            server.close()
            statements = _count(server.source, server.url, bodies, args.profile and server.name == "new")
            api, db = server.cpu, server.db_cpu
            print(
                f"  {server.name:>4}: API {statistics.median(api) * 1000:6.2f} / {percentile(api, 0.9) * 1000:6.2f}"
                f"   PostgreSQL {statistics.median(db) * 1000:6.2f} / {percentile(db, 0.9) * 1000:6.2f}"
                "   round trips per request "
                f"{statistics.median(statements[5:]):g} (min {min(statements[5:])}, max {max(statements[5:])})"
            )
        if len(servers) == 2:
            base, new = servers
            print(
                f"  new/base: API {statistics.median(new.cpu) / statistics.median(base.cpu):.2f}, "
                f"PostgreSQL {statistics.median(new.db_cpu) / max(statistics.median(base.db_cpu), 1e-9):.2f}"
            )


@contextmanager
def _closing(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.client.close()
            stop(server.proc)


if __name__ == "__main__":
    main()
