"""CPU and SQL statements per signal of the pusher, in process, at the bar close.

A scratch PostgreSQL database and the reference EA (`mt5-pipeline ea-sim`) on loopback;
then ``--bursts`` times: ``--symbols`` signals queued at once (one per symbol, as at the
minute boundary), drained by ``push_pending`` cycles as the worker runs them (a cycle,
then ``idle_seconds``, again while it says 0), with the worker's pooled client. Prints the
pusher process's CPU per signal (every thread: the lanes and the heartbeat included) and
the statements it sent per signal and per cycle (every cursor execution, and the
transactions around them: each BEGIN, COMMIT and ROLLBACK is a round trip too). ``--profile``: cProfile's top
functions (main thread only: the lanes' sends are not in it).

``--client N``: instead, the EA client alone: N requests (``EAClient.send``, one at a
time, one pooled connection) to the same reference EA, the client process's CPU per
request, through the pusher's wire (``delivery/ea_http``, http.client) and through httpx
(the baseline), alternated in blocks of N/5.

    python benchmarks/profile_push.py [--symbols 300] [--bursts 10] [--profile] [--client 2000]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _support import ROOT, scratch_database, stop, wait_healthy

sys.path.insert(0, str(ROOT))

WARM = 2  # bursts left out of the figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=300)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--client", type=int, default=0, metavar="N")
    args = parser.parse_args()

    from bench_delivery import make_signals
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from mt5_pipeline.apps.servers import free_port
    from mt5_pipeline.delivery.ea_client import EAClient
    from mt5_pipeline.delivery.pusher import idle_seconds, push_pending
    from mt5_pipeline.settings import Settings
    from mt5_pipeline.signals import queue

    statements: Counter[str] = Counter()
    counting = [False]

    def count(_conn, _cursor, sql, *_a) -> None:  # type: ignore[no-untyped-def]
        if counting[0]:
            statements[" ".join(sql.split())[:90]] += 1

    def count_tx(_conn) -> None:  # type: ignore[no-untyped-def]
        if counting[0]:
            statements["(BEGIN + COMMIT)"] += 2

    def count_read(_conn) -> None:  # type: ignore[no-untyped-def]
        if counting[0]:
            statements["(BEGIN + ROLLBACK of a read)"] += 2

    event.listen(Engine, "before_cursor_execute", count)
    event.listen(Engine, "commit", count_tx)
    event.listen(Engine, "rollback", count_read)
    try:  # statements sent in one round trip, outside SQLAlchemy's execution (where the code has them)
        from mt5_pipeline.storage.dialect import DriverStatement

        run = DriverStatement.run

        def counted_run(self, conn, params):  # type: ignore[no-untyped-def]
            if counting[0]:
                statements["(one round trip) " + " ".join(self.sql.split())[:72]] += 1
            return run(self, conn, params)

        DriverStatement.run = counted_run  # type: ignore[method-assign]
    except ImportError:
        pass

    work = Path(tempfile.mkdtemp(prefix="profile_push_"))
    with scratch_database("mt5_profile_push") as url:
        port = free_port()
        env = dict(os.environ, DATABASE_URL=url, EA_SERVER_URL=f"http://127.0.0.1:{port}/signals")
        env.update(EA_API_KEY="bench-ea-key", LOG_LEVEL="WARNING", EA_PUSH_INTERVAL="30")
        ea_cmd = [sys.executable, "-m", "mt5_pipeline.apps.cli", "ea-sim", "--host", "127.0.0.1", "--port", str(port)]
        ea = subprocess.Popen(ea_cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=(work / "ea.log").open("w"))
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", ea, work / "ea.log", timeout=30)
            settings = Settings.from_env(env, env_file=None)
            if args.client:
                return client_cpu(settings, args.client)
            profiler = cProfile.Profile() if args.profile else None
            cpu: list[float] = []
            cycles = sent_total = 0
            with EAClient(settings) as client:
                for burst in range(args.bursts):
                    queue.enqueue_many(url, make_signals(args.symbols, symbols=args.symbols, interleaved=True))
                    measured = burst >= WARM
                    counting[0] = measured
                    if measured and profiler is not None:
                        profiler.enable()
                    c0 = time.process_time()
                    sent = 0
                    while True:
                        result = push_pending(settings, client=client)
                        sent += result.sent
                        if measured:
                            cycles += 1
                        if idle_seconds(settings, result) > 0:
                            break
                    took = time.process_time() - c0
                    if profiler is not None:
                        profiler.disable()
                    counting[0] = False
                    assert sent == args.symbols, sent
                    if measured:
                        cpu.append(took / sent)
                        sent_total += sent
        finally:
            stop(ea)
    n = sent_total
    total = sum(statements.values())
    print(f"{args.symbols} signals a burst, {len(cpu)} bursts measured, {cycles / len(cpu):.1f} cycles a burst")
    print(f"pusher CPU per signal: median {statistics.median(cpu) * 1000:.3f} ms, min {min(cpu) * 1000:.3f} ms")
    print(f"statements per signal: {total / n:.3f} (per burst {total / len(cpu):.1f}), of which:")
    for sql, k in statements.most_common():
        print(f"  {k / len(cpu):7.1f} per burst  {sql}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


def client_cpu(settings: object, n: int) -> int:
    """CPU per request of EAClient.send: the wire in use against httpx, alternated."""
    import httpx
    from bench_delivery import make_signals

    from mt5_pipeline.delivery.ea_client import EAClient, make_ssl_context
    from mt5_pipeline.settings import Settings

    assert isinstance(settings, Settings)
    block = max(1, n // 5)
    clients = {
        "wire (http.client)": EAClient(settings),
        "httpx (baseline)": EAClient(settings, transport=httpx.HTTPTransport(verify=make_ssl_context(settings))),
    }
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for client in clients.values():  # warm: connection, imports
            for signal in make_signals(50, symbols=50):
                assert client.send(signal).ok
        for _ in range(5):
            for name, client in clients.items():
                signals = make_signals(block, symbols=50)
                c0 = time.process_time()
                for signal in signals:
                    assert client.send(signal).ok
                cpu[name].append((time.process_time() - c0) / block)
    finally:
        for client in clients.values():
            client.close()
    wire, base = (statistics.median(cpu[name]) for name in clients)
    for name, values in cpu.items():
        shown = ", ".join(f"{v * 1000:.3f}" for v in values)
        print(f"{name}: client CPU per request median {statistics.median(values) * 1000:.3f} ms ({shown})")
    print(f"ratio wire / httpx: {wire / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
