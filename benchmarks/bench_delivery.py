"""Delivery to the EA: push throughput with the pooled client against a new client per
request, and enqueue -> EA latency with LISTEN/NOTIFY against plain polling.

    .venv/bin/python benchmarks/bench_delivery.py [--quick]

Creates a scratch database on TEST_DATABASE_URL's server (default
postgresql://postgres@127.0.0.1:5432/test), drops it afterwards, and runs the reference EA
as a real server (`mt5-pipeline ea-sim`, uvicorn) in its own process on loopback.

* Throughput: N signals over 50 symbols queued bar by bar (every symbol's signal of a
  minute together, as a live queue fills), then ``push_pending`` cycles (batches of
  100: claim, send, record) until the queue is empty, with the worker's pooled
  ``EAClient``: as the worker runs it (the round's first request alone, then up to
  SEND_LANES in flight across symbols), and one request at a time (``lanes=1``, the
  pusher before the lanes), alternated twice, the better run of each kept. The baseline is
  the same loop one at a time with a new httpx client per request (what ``httpx.post()``
  per signal does). Also the client alone (no database), both ways, and the same drains
  queued symbol by symbol (each batch one symbol: order per symbol allows no overlap).
* Ceiling of the machine: the same pooled ``EAClient`` against a trivial ASGI app under
  uvicorn (answers ``{"success": true}`` without parsing), i.e. what HTTP alone costs here.
* Latency: the worker (`mt5-pipeline push`, EA_PUSH_INTERVAL=30) in its own process; one
  signal queued at a time, latency = the EA's receipt time (its signal log) minus the time
  just before ``enqueue``. Same host, same clock.
* Polling baseline at 30 s, SIMULATED: a signal queued at a uniformly random moment waits
  U(0, 30 s) for the next poll, then the delivery time measured above; p50/p99 over
  200,000 draws. Checked against a MEASURED poll-only worker at EA_PUSH_INTERVAL=1
  (LISTEN off), whose figures the same model predicts with 1 s.

Prints a table and writes benchmarks/out/bench_delivery.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from _support import add_row, database_name, percentile, report, scratch_database, stop, wait_healthy

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.clock import iso_z
from mt5_pipeline.delivery.ea_client import EAClient, make_ssl_context
from mt5_pipeline.delivery.push_round import SEND_LANES
from mt5_pipeline.delivery.pusher import push_pending
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals import queue
from mt5_pipeline.storage.engine import dispose_engines

EA_KEY = "bench-ea-key"


_CALLS = itertools.count()


def make_signals(n: int, symbols: int = 50, *, interleaved: bool = False) -> list[dict]:
    """``n`` signals over ``symbols`` symbols, each symbol's bars in order. Queued symbol by
    symbol, or ``interleaved``: bar by bar, every symbol's signal for a minute together, as
    a live queue fills when the bars of all symbols close at once."""
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    expires = base + timedelta(hours=1)
    per = max(1, n // symbols)
    version = f"bench-{uuid.uuid4().hex[:8]}"
    # The queue keeps one signal per (symbol, timeframe, bar): each call takes bars a year
    # further back than the last, so no call's signals are refused as a second one for a bar.
    call_back = timedelta(days=365 * next(_CALLS))
    out = []
    for i in range(n):
        if interleaved:
            k, sym = divmod(i, symbols)
        else:
            sym, k = divmod(i, per)
        ts = base - timedelta(minutes=per - k) - timedelta(days=sym) - call_back  # each symbol's bars in order
        out.append(
            {
                "signal_id": str(uuid.uuid4()),
                "timestamp": iso_z(ts),
                "symbol": f"SYM{sym:03d}",
                "timeframe": "M1",
                "side": "BUY",
                "confidence": 0.785,
                "sl_pips": 20,
                "tp_pips": 40,
                "price": 1.095,
                "meta": {"model": "rf_m1", "label": 1, "model_version": version, "probability": 0.785},
                "expires_at": iso_z(expires),
            }
        )
    return out


class NewClientPerRequest:
    """The baseline: a fresh httpx client (TLS context, pool, connection) for every signal,
    what ``httpx.post()`` per signal does. httpx as before the pusher had its own wire
    (mt5_pipeline.delivery.ea_http), so the baseline stays the one earlier runs measured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.ea_request_timeout

    def send(self, payload: dict):
        transport = httpx.HTTPTransport(verify=make_ssl_context(self.settings))
        with EAClient(self.settings, transport=transport) as client:
            return client.send(payload)


def drain(settings: Settings, client, *, lanes: int = SEND_LANES) -> tuple[float, int]:
    started = time.perf_counter()
    sent = 0
    while True:
        result = push_pending(settings, client=client, lanes=lanes)
        sent += result.sent
        if result.claimed == 0:
            break
    return time.perf_counter() - started, sent


def client_only(client, payloads: list[dict]) -> float:
    started = time.perf_counter()
    for p in payloads:
        assert client.send(p).ok
    return time.perf_counter() - started


class EALog:
    """Follows the reference EA's signal log (one JSON line per accepted signal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.received: dict[str, float] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        for line in data[:cut].splitlines():
            entry = json.loads(line)
            self.received[entry["signal"]["signal_id"]] = entry["received_at"]

    def wait(self, signal_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if signal_id in self.received:
                return self.received[signal_id]
            time.sleep(0.0005)
        return None


def start(cmd: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log.open("w"))


TRIVIAL_EA = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"success": true, "ticket": 1}'})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def notify_latencies(url: str, ea_log: EALog, n: int) -> list[float]:
    out = []
    rng = random.Random(1)
    for signal in make_signals(n, symbols=n):
        t0 = time.time()
        queue.enqueue(url, signal)
        got = ea_log.wait(signal["signal_id"], timeout=60)
        if got is None:
            raise SystemExit(f"signal {signal['signal_id']} never reached the EA")
        out.append(got - t0)
        time.sleep(rng.uniform(0.01, 0.05))
    return out


def polled_latencies(url: str, ea_log: EALog, n: int) -> list[float]:
    rng = random.Random(2)
    sent: dict[str, float] = {}
    for signal in make_signals(n, symbols=n):
        time.sleep(rng.uniform(0.1, 0.5))  # random moments relative to the poll
        sent[signal["signal_id"]] = time.time()
        queue.enqueue(url, signal)
    out = []
    for sid, t0 in sent.items():
        got = ea_log.wait(sid, timeout=60)
        if got is None:
            raise SystemExit(f"signal {sid} never reached the EA")
        out.append(got - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_pooled = 1000 if args.quick else 5000
    n_fresh = 60 if args.quick else 200
    n_latency = 50 if args.quick else 200
    n_polled = 15 if args.quick else 40

    work = Path(tempfile.mkdtemp(prefix="bench_delivery_"))
    with scratch_database("mt5_bench_delivery") as url:
        procs: list[subprocess.Popen] = []
        try:
            port = free_port()
            ea_url = f"http://127.0.0.1:{port}/signals"
            env = dict(os.environ)
            env.update(
                {
                    "DATABASE_URL": url,
                    "EA_SERVER_URL": ea_url,
                    "EA_API_KEY": EA_KEY,
                    "LOG_LEVEL": "WARNING",
                    "EA_PUSH_INTERVAL": "30",
                }
            )
            ea_log_path = work / "ea.jsonl"
            ea = start(
                [
                    sys.executable,
                    "-m",
                    "mt5_pipeline.apps.cli",
                    "ea-sim",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-file",
                    str(ea_log_path),
                ],
                env,
                work,
                work / "ea.log",
            )
            procs.append(ea)
            wait_healthy(f"http://127.0.0.1:{port}/health", ea, work / "ea.log", timeout=30)
            settings = Settings.from_env(env, env_file=None)
            ea_log = EALog(ea_log_path)

            print(
                f"throughput: {n_pooled:,} signals, pooled client (EA on loopback, PostgreSQL {database_name(url)})",
                flush=True,
            )
            timings: dict[tuple[int, bool], list[float]] = {}
            with EAClient(settings) as pooled:
                client_only(pooled, make_signals(200))  # warm up
                # Alternated, so that a load swing on the shared machine hits every variant.
                for interleaved in (True, False, True, False):
                    for lanes in (1, SEND_LANES):
                        queue.enqueue_many(url, make_signals(n_pooled, interleaved=interleaved))
                        took, sent = drain(settings, pooled, lanes=lanes)
                        assert sent == n_pooled, sent
                        timings.setdefault((lanes, interleaved), []).append(took)
                        order = "bar by bar" if interleaved else "symbol by symbol"
                        print(f"  pooled, {order}, {lanes} in flight: {n_pooled / took:,.0f} signals/s", flush=True)
                t_client_pooled = client_only(pooled, make_signals(n_fresh * 4))
            t_pooled, t_serial = min(timings[(SEND_LANES, True)]), min(timings[(1, True)])
            t_grouped, t_grouped_serial = min(timings[(SEND_LANES, False)]), min(timings[(1, False)])
            print(f"throughput: {n_fresh:,} signals, a new client per request", flush=True)
            fresh = NewClientPerRequest(settings)
            queue.enqueue_many(url, make_signals(n_fresh))
            t_fresh, sent = drain(settings, fresh, lanes=1)
            assert sent == n_fresh, sent
            t_client_fresh = client_only(fresh, make_signals(n_fresh))
            print(f"  new client per request: {n_fresh / t_fresh:,.0f} signals/s", flush=True)
            dispose_engines()

            trivial_port = free_port()
            trivial = start([sys.executable, "-c", TRIVIAL_EA, str(trivial_port)], env, work, work / "trivial.log")
            procs.append(trivial)
            wait_healthy(f"http://127.0.0.1:{trivial_port}/", trivial, work / "trivial.log", timeout=30)
            with EAClient(
                settings.replace(ea_server_url_override=f"http://127.0.0.1:{trivial_port}/signals")
            ) as to_trivial:
                client_only(to_trivial, make_signals(200))
                t_trivial = client_only(to_trivial, make_signals(n_fresh * 4))
            stop(trivial)
            procs.remove(trivial)
            print(f"  pooled client to a trivial ASGI server: {n_fresh * 4 / t_trivial:,.0f} requests/s", flush=True)

            print(f"latency: {n_latency} signals, worker woken by LISTEN/NOTIFY (poll every 30 s)", flush=True)
            worker = start([sys.executable, "-m", "mt5_pipeline.apps.cli", "push"], env, work, work / "worker.log")
            procs.append(worker)
            warm = make_signals(1)[0]
            warm["symbol"] = "WARMUP"
            queue.enqueue(url, warm)
            if ea_log.wait(warm["signal_id"], timeout=60) is None:
                raise SystemExit("the worker did not deliver: " + (work / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
            notify = notify_latencies(url, ea_log, n_latency)
            stop(worker)
            procs.remove(worker)
            print(
                f"  p50 {percentile(notify, 0.5) * 1000:.1f} ms, p99 {percentile(notify, 0.99) * 1000:.1f} ms",
                flush=True,
            )

            print(f"latency: {n_polled} signals, poll-only worker every 1 s (measured)", flush=True)
            poll_env = dict(env, EA_PUSH_INTERVAL="1")
            code = (
                "from mt5_pipeline.settings import load_settings; "
                "from mt5_pipeline.apps.push_worker import run_push_worker; "
                "run_push_worker(load_settings(env_file=None), listen=False)"
            )
            poller = start([sys.executable, "-c", code], poll_env, work, work / "poller.log")
            procs.append(poller)
            time.sleep(2.0)
            polled = polled_latencies(url, ea_log, n_polled)
            stop(poller)
            procs.remove(poller)

            rng = np.random.default_rng(3)
            draws = 200_000
            delivery = rng.choice(np.asarray(notify), size=draws)
            sim30 = rng.uniform(0, 30, size=draws) + delivery
            sim1 = rng.uniform(0, 1, size=draws) + delivery
        finally:
            for p in procs:
                stop(p)

    rows: list[dict] = []
    row = partial(add_row, rows, digits=2, ratio_digits=2)
    pooled_rate, fresh_rate, serial_rate = n_pooled / t_pooled, n_fresh / t_fresh, n_pooled / t_serial
    row(
        "push_pending to the reference EA, pooled client (claim + send + record; baseline: new client per request, "
        "one at a time)",
        pooled_rate,
        "signals/s",
        fresh_rate,
        ">= 1,000/s and >= 3x baseline",
    )
    row(
        f"push_pending, pooled, up to {SEND_LANES} requests in flight across symbols (baseline: one at a time, same "
        "run)",
        pooled_rate,
        "signals/s",
        serial_rate,
        "context: what the lanes add",
    )
    row(
        "the same, queued symbol by symbol (100 per symbol: one symbol per batch, so one at a time; baseline: lanes=1)",
        n_pooled / t_grouped,
        "signals/s",
        n_pooled / t_grouped_serial,
        "context: order per symbol bounds it",
    )
    row(
        "EAClient.send alone, pooled (baseline: new client per request)",
        n_fresh * 4 / t_client_pooled,
        "requests/s",
        n_fresh / t_client_fresh,
        "",
    )
    row(
        "EAClient.send alone, pooled, to a trivial ASGI server: this machine's HTTP ceiling",
        n_fresh * 4 / t_trivial,
        "requests/s",
        None,
        "context",
    )
    for q, aim in ((0.5, ""), (0.99, "p99 < 1,000 ms")):
        row(
            f"enqueue -> EA p{q * 100:g}, LISTEN/NOTIFY (baseline: 30 s polling, simulated)",
            percentile(notify, q) * 1000,
            "ms",
            percentile(sim30, q) * 1000,
            aim,
            higher_is_better=False,
        )
    for q in (0.5, 0.99):
        row(
            f"enqueue -> EA p{q * 100:g}, polling every 1 s, measured (baseline: the model's prediction)",
            percentile(polled, q) * 1000,
            "ms",
            percentile(sim1, q) * 1000,
            "model check: ratio near 1",
            higher_is_better=False,
        )
    report("bench_delivery", rows)
    ok = pooled_rate >= 1000 and pooled_rate >= 3 * fresh_rate and percentile(notify, 0.99) < 1.0
    print("aim met" if ok else "aim NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
