"""Chaos: 10,000 signals for 28 symbols delivered while the EA flaps, pushers are killed and
the database connection is cut; counted at the end against the EA's own log.

    .venv/bin/python benchmarks/bench_chaos.py [--quick] [--signals N]

What runs (a scratch database on TEST_DATABASE_URL's server, dropped afterwards):

* The reference EA (``mt5_pipeline.apps.ea_sim``, its signal log on) under uvicorn in this
  process, behind a fault wrapper that follows a schedule: every 15 s it answers 500 for
  2 s and hangs for 1.5 s (each hung request held 4 s, longer than the pushers' 2 s
  timeout, then passed on: the EA acts on a request the pusher gave up on); once it is
  DOWN for 20 s (server stopped, connection refused). A few "poison" signals are answered
  500 every time.
* Two pusher workers (``python -m mt5_pipeline.apps.cli push``), real processes, talking to
  PostgreSQL through a small asyncio TCP proxy written here. Every 10 s one of them (in
  turn) is SIGKILLed and started again.
* Once, the proxy cuts every database connection and refuses new ones for 5 s.
* The API (``mt5-pipeline serve``, its own process, on a direct database connection) takes the
  EA's acks (``POST /ea/ack``), as in production: an ack is what turns a send the pusher
  could not confirm (a request the EA acted on after the pusher gave up, a pusher killed
  before recording it) into ACKED, where the pusher alone would have let it expire.
* This process queues the signals (directly, not through the proxy) at an even rate over
  the run (10,000 over 240 s), 1 in 4 with a 10 s TTL (some must expire during the outage), the rest 60 s.

When the last signal is queued the chaos stops, the pushers drain the queue, and the
table is counted: from the EA's log (what it accepted, each signal_id once, and the
repeats its dedupe answered), and from ``signals_queue``. Must hold: every signal not
received is EXPIRED or a poison signal; nothing FAILED that is not poison; nothing
received after its deadline; lost = 0. Exit code 1 otherwise.

Writes benchmarks/out/bench_chaos.json (run_all.py puts it in RESULTS.md).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _support import OUT_DIR, ROOT, add_row, bench_parser, report, scratch_database, stop, wait_healthy
from sqlalchemy import select

from mt5_pipeline.apps.ea_sim import create_ea_app
from mt5_pipeline.apps.servers import BackgroundServer, free_port
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.signals import queue
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_queue
from mt5_pipeline_tests.ea_server import make_signal as queued_payload
from mt5_pipeline_tests.ea_server import read_body, replaying, send_json

EA_KEY = "bench-chaos-ea-key"
API_KEY = "bench-chaos-api-key"
SYMBOLS = 28
REQUEST_TIMEOUT = 2.0
HANG_SECONDS = 4.0
KILL_EVERY = 10.0
DB_CUT_SECONDS = 5.0
EA_DOWN_SECONDS = 20.0
POISON = 10


# ---- the database proxy ----------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the database server, in its own thread and event loop.
    ``cut(s)`` aborts every open connection and refuses new ones for ``s`` seconds."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cut_until = 0.0
        self.cuts = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="db-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self._loop.run_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.cut_until:
            writer.transport.abort()  # refused while cut
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)

    def cut(self, seconds: float) -> None:
        def do() -> None:
            self.cut_until = time.monotonic() + seconds
            self.cuts += 1
            for a, b in list(self._pairs):
                a.transport.abort()
                b.transport.abort()

        self._loop.call_soon_threadsafe(do)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


# ---- the EA and its faults ------------------------------------------------------------------------


class ChaosEA:
    """The reference EA behind a fault wrapper: ``mode`` is "ok", "500" or "hang"."""

    def __init__(self, log_file: Path, ack_url: str) -> None:
        self.app = create_ea_app(EA_KEY, log_file=str(log_file), ack_url=ack_url, ack_api_key=API_KEY)
        self.ea = self.app.state.ea
        self.mode = "ok"
        self.poison: set[str] = set()
        self.answered: collections.Counter = collections.Counter()
        self.server = BackgroundServer(self._asgi, lifespan="off", interface="asgi3")
        self.down_seconds = 0.0

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/signals"

    async def _asgi(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/signals":
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        try:
            signal_id = json.loads(raw).get("signal_id")
        except (ValueError, AttributeError):
            signal_id = None
        mode = self.mode
        if signal_id in self.poison or mode == "500":
            self.answered["500 (poison)" if signal_id in self.poison else "500"] += 1
            await send_json(send, 500, {"success": False, "message": "injected 500"})
            return
        if mode == "hang":
            self.answered["hung"] += 1
            await asyncio.sleep(HANG_SECONDS)  # the pusher has given up by now; the EA still acts
        else:
            self.answered["passed"] += 1
        await self.app(scope, replaying(raw, receive), send)


def ea_mode(t: float, down_at: float) -> str:
    if down_at <= t < down_at + EA_DOWN_SECONDS:
        return "down"
    phase = t % 15.0
    if 10.0 <= phase < 12.0:
        return "500"
    if 12.0 <= phase < 13.5:
        return "hang"
    return "ok"


# ---- pushers ----------------------------------------------------------------------------------------


def start_pusher(env: dict, log: Path) -> subprocess.Popen:
    with log.open("a") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "mt5_pipeline.apps.cli", "push"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )


# ---- signals ------------------------------------------------------------------------------------------


def make_signal(symbol: str, bar: datetime, ttl: float, version: str) -> Signal:
    return Signal.from_payload(queued_payload(symbol, ts=bar, ttl=ttl, model_version=version))


def read_ea_log(path: Path) -> dict[str, float]:
    received: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            received.setdefault(entry["signal"]["signal_id"], entry["received_at"])
    return received


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--signals", type=int, default=None)
    args = parser.parse_args()
    n = args.signals or (2_000 if args.quick else 10_000)
    produce_seconds = 45.0 if args.quick else 240.0
    down_at = 10.0 if args.quick else 40.0
    cut_at = 33.0 if args.quick else 95.0
    rng = random.Random(11)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    ea_log = OUT_DIR / "bench_chaos_ea_signals.jsonl"
    ea_log.unlink(missing_ok=True)
    pusher_log = OUT_DIR / "bench_chaos_pushers.log"
    pusher_log.write_text("")

    with scratch_database("bench_chaos") as direct_url:
        from sqlalchemy.engine import make_url

        parsed = make_url(direct_url)
        proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
        proxied_url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        # The API (on the direct connection) takes the EA's acks: an ack is how a send the
        # pusher could not confirm (a hung request the EA acted on after the pusher gave
        # up, a pusher killed before recording) becomes ACKED instead of a wrong EXPIRED.
        # In its own process (`mt5-pipeline serve`): in this one it would share the GIL with the EA.
        api_port = free_port()
        api_env = dict(os.environ)
        api_env.update(
            {
                "DATABASE_URL": direct_url,
                "API_KEYS": API_KEY,
                "EA_PUSH_ENABLED": "false",
                "MODEL_DIR": str(OUT_DIR / "bench_chaos_models"),
                "LOG_LEVEL": "WARNING",
            }
        )
        api_log = OUT_DIR / "bench_chaos_api.log"
        api = subprocess.Popen(
            [sys.executable, "-m", "mt5_pipeline.apps.cli", "serve", "--port", str(api_port)],
            cwd=ROOT,
            env=api_env,
            stdout=subprocess.DEVNULL,
            stderr=api_log.open("w"),
        )
        wait_healthy(f"http://127.0.0.1:{api_port}/health", api, api_log, timeout=120)
        ea = ChaosEA(ea_log, ack_url=f"http://127.0.0.1:{api_port}/ea/ack")
        ea.server.start()
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": proxied_url,
                "EA_SERVER_URL": ea.url,
                "EA_API_KEY": EA_KEY,
                "EA_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
                "EA_PUSH_INTERVAL": "2",
                "EA_BATCH_SIZE": "100",
                "EA_MAX_ATTEMPTS": "5",
                "SIGNAL_TTL_SECONDS": "60",
                "LOG_LEVEL": "WARNING",
                "MT5_ENV": "development",
                "PYTHONPATH": str(ROOT),
            }
        )
        pushers = [start_pusher(env, pusher_log), start_pusher(env, pusher_log)]
        kills = 0
        version = f"chaos-{uuid.uuid4().hex[:8]}"
        base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(days=30)
        bar_of = collections.Counter()
        poison_at = set(rng.sample(range(n // 10, n - n // 10), POISON))
        queued: dict[str, Signal] = {}
        poison: set[str] = set()
        ttl_of: dict[str, float] = {}
        queued_at: dict[str, float] = {}
        queued_wall: dict[str, float] = {}

        print(
            f"chaos: {n} signals over {produce_seconds:.0f} s, EA down at {down_at:.0f} s for {EA_DOWN_SECONDS:.0f} "
            f"s, DB cut at {cut_at:.0f} s for {DB_CUT_SECONDS:.0f} s, a pusher killed every {KILL_EVERY:.0f} s",
            flush=True,
        )
        started = time.monotonic()
        next_kill = KILL_EVERY
        cut_done = False
        produced = 0
        down = False
        while produced < n:
            t = time.monotonic() - started
            # The EA's mood.
            mode = ea_mode(t, down_at)
            if mode == "down" and not down:
                ea.server.stop()
                down, down_started = True, time.monotonic()
            elif mode != "down" and down:
                ea.server.start()
                down = False
                ea.down_seconds += time.monotonic() - down_started
            ea.mode = mode if mode != "down" else "ok"
            # A pusher dies; it is started again at once (a supervisor would do the same).
            if t >= next_kill:
                victim = kills % 2
                pushers[victim].send_signal(signal.SIGKILL)
                pushers[victim].wait(timeout=10)
                pushers[victim] = start_pusher(env, pusher_log)
                kills += 1
                next_kill += KILL_EVERY
            if not cut_done and t >= cut_at:
                proxy.cut(DB_CUT_SECONDS)
                cut_done = True
            # Signals at an even rate.
            due = min(n, int(n * min(1.0, t / produce_seconds)) + 1)
            batch = []
            while produced < due:
                symbol = f"SYM{produced % SYMBOLS:02d}"
                bar_of[symbol] += 1
                ttl = 10.0 if rng.random() < 0.25 and produced not in poison_at else 60.0
                s = make_signal(symbol, base + timedelta(minutes=bar_of[symbol]), ttl, version)
                if produced in poison_at:
                    poison.add(s.signal_id)
                    ea.poison.add(s.signal_id)
                queued[s.signal_id] = s
                ttl_of[s.signal_id] = ttl
                queued_at[s.signal_id] = t
                queued_wall[s.signal_id] = time.time()
                batch.append(s)
                produced += 1
            if batch:
                assert queue.enqueue_many(direct_url, batch) == len(batch)
            time.sleep(0.05)
        if down:
            ea.server.start()
            ea.down_seconds += time.monotonic() - down_started
        ea.mode = "ok"
        chaos_seconds = time.monotonic() - started
        print(f"chaos over after {chaos_seconds:.0f} s ({kills} kills); draining", flush=True)

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if queue.count_pending(direct_url) == 0:
                break
            time.sleep(0.5)
        drain_seconds = time.monotonic() - started - chaos_seconds
        time.sleep(HANG_SECONDS + 1)  # requests still hung inside the EA finish
        for p in pushers:
            p.send_signal(signal.SIGTERM)
        for p in pushers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        # Whatever is still PENDING now is past its deadline or lost; expire the former.
        queue.expire_stale(direct_url)
        with get_engine(direct_url).connect() as conn:
            table = {
                r.signal_id: r
                for r in conn.execute(
                    select(
                        signals_queue.c.signal_id,
                        signals_queue.c.status,
                        signals_queue.c.expires_at,
                        signals_queue.c.attempts,
                        signals_queue.c.last_error,
                    )
                )
            }
        ea.server.stop()
        stop(api)
        proxy.close()

    received = read_ea_log(ea_log)
    status = collections.Counter(r.status for r in table.values())
    not_received = set(queued) - set(received)
    expired = {sid for sid, r in table.items() if r.status == "EXPIRED"}
    failed = {sid for sid, r in table.items() if r.status == "FAILED"}
    delivered_status = {sid for sid, r in table.items() if r.status in ("SENT", "ACKED")}
    lost = {
        sid
        for sid in not_received
        if table[sid].status not in ("EXPIRED", "FAILED") or (table[sid].status == "FAILED" and sid not in poison)
    }
    late = {sid for sid, at in received.items() if at > table[sid].expires_at.timestamp()}
    expired_received = expired & set(received)
    failed_not_poison = failed - poison
    unreceived_but_sent = delivered_status - set(received)
    repeats = ea.ea.duplicates
    positions = len(ea.ea.positions)
    latency = sorted(at - queued_wall[sid] for sid, at in received.items())

    rows: list[dict] = []
    add_row(rows, "signals queued (28 symbols; 1 in 4 with a 10 s TTL)", len(queued), "signals", None, "", digits=0)
    add_row(
        rows,
        "received by the EA (its log: distinct signal_ids)",
        len(received),
        "signals",
        None,
        "every signal not EXPIRED or poison",
        digits=0,
    )
    add_row(
        rows, "positions opened by the EA", positions, "positions", None, "= received (each exactly once)", digits=0
    )
    add_row(
        rows,
        "repeats of a signal_id answered by the EA's dedupe",
        repeats,
        "requests",
        None,
        "duplicates only as repeats",
        digits=0,
    )
    add_row(
        rows,
        "signal_ids received more than once as a new position",
        positions - len(received),
        "signals",
        None,
        "0",
        digits=0,
    )
    add_row(
        rows,
        "ACKED (the EA's ack arrived)",
        status["ACKED"],
        "signals",
        None,
        f"{status['SENT']} more SENT without an ack yet",
        digits=0,
    )
    add_row(
        rows,
        "EXPIRED (deadline passed before delivery)",
        len(expired),
        "signals",
        None,
        f"{sum(1 for sid in expired if ttl_of[sid] > 10)} of them with a 60 s TTL",
        digits=0,
    )
    add_row(
        rows,
        "EXPIRED but received (the EA's ack makes such a send ACKED)",
        len(expired_received),
        "signals",
        None,
        "0",
        digits=0,
    )
    add_row(rows, "FAILED", len(failed), "signals", None, f"only poison ({len(poison)} poison signals)", digits=0)
    add_row(rows, "FAILED that were not poison", len(failed_not_poison), "signals", None, "0", digits=0)
    add_row(
        rows,
        "poison signals EXPIRED instead (still retrying at their deadline, or no other traffic to tell them from an "
        "outage)",
        len(poison & expired),
        "signals",
        None,
        "",
        digits=0,
    )
    add_row(rows, "SENT in the queue but not in the EA's log", len(unreceived_but_sent), "signals", None, "0", digits=0)
    add_row(rows, "received after their deadline", len(late), "signals", None, "0", digits=0)
    add_row(
        rows, "lost (neither received, EXPIRED nor poison FAILED)", len(lost), "signals", None, "must be 0", digits=0
    )
    add_row(rows, "pushers SIGKILLed (one of two every 10 s)", kills, "kills", None, "", digits=0)
    add_row(rows, "EA down (connection refused)", ea.down_seconds, "s", None, "20 s", digits=1)
    add_row(
        rows,
        "EA answers 500 / hung requests / poison 500s",
        ea.answered["500"],
        "requests",
        None,
        f"{ea.answered['hung']} hung, {ea.answered['500 (poison)']} poison",
        digits=0,
    )
    add_row(
        rows,
        "database connections cut through the proxy",
        DB_CUT_SECONDS if proxy.cuts else 0,
        "s",
        None,
        "5 s",
        digits=0,
    )
    add_row(rows, "chaos phase / drain after it", chaos_seconds, "s", None, f"drain {drain_seconds:.0f} s", digits=0)
    if latency:
        add_row(
            rows,
            "queued -> received by the EA, p50 (whole run, outage included)",
            latency[len(latency) // 2],
            "s",
            None,
            f"p90 {latency[int(len(latency) * 0.9)]:.1f} s",
            digits=2,
        )
    print(f"\nqueue statuses: {dict(status)}")
    print(f"EXPIRED by TTL: {dict(collections.Counter(ttl_of[sid] for sid in expired))}")
    buckets = collections.Counter(int(queued_at[sid] // 10) * 10 for sid in queued)
    gone = collections.Counter(int(queued_at[sid] // 10) * 10 for sid in expired)
    if latency:
        print(
            f"queued -> received by the EA: p50 {latency[len(latency) // 2]:.2f} s, p90 "
            f"{latency[int(len(latency) * 0.9)]:.2f} s, max {latency[-1]:.2f} s"
        )
    print("queued at (s) -> expired/queued: " + ", ".join(f"{b}: {gone[b]}/{buckets[b]}" for b in sorted(buckets)))
    for sid in sorted(lost):
        r = table[sid]
        print(
            f"LOST {sid}: {r.status}, attempts {r.attempts}, expires {r.expires_at:%H:%M:%S.%f}, in the EA's log: "
            f"{sid in received}: {r.last_error}"
        )
    for sid in sorted(poison):
        r = table[sid]
        print(f"poison {sid[:8]}: {r.status}, attempts {r.attempts}: {(r.last_error or '')[:100]}")
    report("bench_chaos", rows)
    ok = (
        not lost
        and not failed_not_poison
        and not late
        and not unreceived_but_sent
        and not expired_received
        and positions == len(received)
    )
    print("\nOK: lost = 0" if ok else "\nFAILED: see the rows that must be 0")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
