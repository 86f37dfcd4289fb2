"""The MT5 bridge: what it adds to a signal's round trip and to a bar's way into the API.

    .venv/bin/python benchmarks/bench_bridge.py [--quick]

Creates a scratch database on TEST_DATABASE_URL's server, runs the API and the bridge
(on the stand-in terminal, mt5_pipeline.bridge.fake_mt5, with a clock this script moves)
as real uvicorn servers on loopback in this process, and the reference EA beside them.

* Signal round trip: POST /signals with a pooled client, one new signal_id at a time,
  to the bridge (validate, dedupe lookup, SQLite store with synchronous=FULL before and
  after, order_send on the stand-in, ack queued) against the reference EA (validate,
  paper position in memory): what the bridge's durability costs per signal.
* Bar in: one bar-close cycle for 3 symbols (read rates from the terminal, POST /ingest
  per symbol, record the newest bar) against the same three POST /ingest calls alone.
  The bridge waits 0.3 s after the close before this cycle; the sum is the close-to-API delay.
* Catch-up: the first start's history (BRIDGE_HISTORY_BARS bars of one symbol) in bars/s.

Prints a table and writes benchmarks/out/bench_bridge.json.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from _support import add_quantile_rows, add_row, bench_parser, percentile, report, scratch_database

from mt5_pipeline.api.main import create_app
from mt5_pipeline.apps.ea_sim import create_ea_app
from mt5_pipeline.apps.servers import BackgroundServer, free_port
from mt5_pipeline.bridge import Bridge
from mt5_pipeline.bridge.bars import CLOSE_GRACE_SECONDS, candle
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.settings import Settings
from mt5_pipeline_tests.ea_server import make_signal

SYMBOLS = ("EURUSD", "USDJPY", "XAUUSD")


class Clock:
    def __init__(self) -> None:
        self.now = (
            datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(days=3) + timedelta(seconds=5)
        )

    def __call__(self) -> datetime:
        return self.now


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    n_signals = 100 if args.quick else 400
    n_bars = 30 if args.quick else 120
    history = 2000 if args.quick else 20000
    rows: list[dict] = []
    with scratch_database("bench_bridge") as url, tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        mt5 = FakeMT5(clock=clock, history_minutes=history + 10)
        api_port, bridge_port = free_port(), free_port()
        env = {
            "DATABASE_URL": url,
            "MODEL_DIR": str(Path(tmp) / "models"),
            "API_KEYS": "bench-key",
            "EA_API_KEY": "bench-ea",
            "BRIDGE_API_URL": f"http://127.0.0.1:{api_port}",
            "BRIDGE_PORT": str(bridge_port),
            "BRIDGE_SYMBOLS": ",".join(SYMBOLS),
            "BRIDGE_HISTORY_BARS": str(history),
            "BRIDGE_STORE": str(Path(tmp) / "bridge.sqlite3"),
        }
        settings = Settings.from_env(env, env_file=None)
        api_app = create_app(settings)
        with BackgroundServer(api_app, port=api_port, lifespan="off"):
            bridge = Bridge(settings, mt5, clock=clock)
            ea_app = create_ea_app("bench-ea")
            with (
                BackgroundServer(bridge.app, port=bridge_port, lifespan="off") as bsrv,
                BackgroundServer(ea_app, lifespan="off") as esrv,
            ):
                # Catch-up: the first start's history.
                started = time.perf_counter()
                sent = 0
                for symbol in SYMBOLS[:1]:
                    bridge.bars.symbols = (symbol,)
                    sent += bridge.bars.cycle()
                catch_up = time.perf_counter() - started
                bridge.bars.symbols = SYMBOLS
                bridge.bars.cycle()  # the others' history, not timed

                # Bar in: one cycle per minute close, 3 symbols.
                cycles, direct = [], []
                for _ in range(n_bars):
                    clock.now += timedelta(seconds=60)
                    t0 = time.perf_counter()
                    assert bridge.bars.cycle() == len(SYMBOLS)
                    cycles.append(time.perf_counter() - t0)
                    # Baseline: the same bars straight to POST /ingest (already stored: unchanged).
                    rates = {s: mt5.copy_rates_from_pos(s, mt5.TIMEFRAME_M1, 1, 1) for s in SYMBOLS}
                    t0 = time.perf_counter()
                    for s in SYMBOLS:
                        bridge.api.ingest(s, "M1", [candle(rates[s][0], 7200)], 2.0)
                    direct.append(time.perf_counter() - t0)

                # Signal round trip, bridge vs reference EA.
                def round_trips(base: str) -> list[float]:
                    out = []
                    with httpx.Client(timeout=10) as client:
                        for i in range(n_signals):
                            signal = make_signal(SYMBOLS[i % 3], side="BUY" if i % 2 else "SELL")
                            t0 = time.perf_counter()
                            response = client.post(f"{base}/signals", json=signal, headers={"X-API-Key": "bench-ea"})
                            out.append(time.perf_counter() - t0)
                            assert response.json().get("success") is True, response.text
                    return out

                ea_times = round_trips(esrv.base_url)
                bridge_times = round_trips(bsrv.base_url)
                assert len(mt5.requests) == n_signals
            bridge.close()
        api_app.state.api.close()

    ms = 1000.0
    add_quantile_rows(
        rows,
        {
            0.5: (
                f"signal round trip via the bridge (POST /signals -> order -> answer), p50 of {n_signals}",
                "baseline: reference EA (no store, no terminal)",
            ),
            0.99: ("signal round trip via the bridge, p99", "< 100 ms; baseline: reference EA"),
        },
        bridge_times,
        ea_times,
        digits=2,
        higher_is_better=False,
    )
    add_quantile_rows(
        rows,
        {
            0.5: (
                f"bar-close cycle, 3 symbols (rates -> POST /ingest x3 -> record), p50 of {n_bars}",
                "baseline: the 3 POST /ingest alone",
            ),
            0.99: ("bar-close cycle, 3 symbols, p99", "baseline: the 3 POST /ingest alone"),
        },
        cycles,
        direct,
        digits=2,
        higher_is_better=False,
    )
    add_row(
        rows,
        "bar close -> in the API (grace + cycle p99)",
        CLOSE_GRACE_SECONDS * ms + percentile(cycles, 0.99) * ms,
        "ms",
        None,
        "< 1000 ms (issue 12: within about a second)",
        digits=0,
    )
    add_row(rows, f"first-start catch-up, {sent:,} bars of one symbol", sent / catch_up, "bars/s", None, "", digits=0)
    report("bench_bridge", rows)


if __name__ == "__main__":
    main()
