"""CPU of one live decision, in process: one series, one new closed bar at a time.

A scratch PostgreSQL database, a forest trained on 3,000 bars, then ``--bars`` bars each
ingested alone and decided by ``LiveWorker.handle`` as a NOTIFY would wake it. Prints the
process CPU and wall time per bar (median, p90) and, with ``--profile``, cProfile's top
functions by cumulative time over the measured bars.

    python benchmarks/profile_live.py [--bars 60] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from datetime import timedelta

from _support import ROOT, scratch_database

sys.path.insert(0, str(ROOT))


WARM = 5  # bars left out of the figures


def _wrap_steps() -> dict[str, float]:
    """CPU time spent in the live path's main steps, by name (each wrapped where it is called)."""
    import functools
    from collections import defaultdict

    import mt5_pipeline.bars as bars
    import mt5_pipeline.learning.model as model
    import mt5_pipeline.signals.bar_write as bar_write
    import mt5_pipeline.signals.generation as signals
    import mt5_pipeline.signals.live as live
    import mt5_pipeline.signals.queue as queue
    import mt5_pipeline.signals.series_tail as series_tail
    import mt5_pipeline.storage.decisions as decisions
    import mt5_pipeline.storage.features as stored

    spent: dict[str, float] = defaultdict(float)

    def wrap(module, name, label=None):
        original = getattr(module, name, None)
        if original is None:  # a step another version of the path does not have
            return

        @functools.wraps(original)
        def timed(*args, **kwargs):
            c0 = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label or name] += time.process_time() - c0

        setattr(module, name, timed)

    wrap(live, "ready_bar")
    wrap(live, "read_snapshot")
    wrap(series_tail, "candles_stamped_since")
    wrap(series_tail, "compute_features")
    wrap(series_tail, "feature_block")
    wrap(series_tail, "_frame")
    wrap(series_tail, "_from_tuples")
    wrap(stored, "replace_rows")
    wrap(stored, "write_new_rows")
    wrap(getattr(bar_write, "BarWrite", None), "enqueue", "features + signal commit (all)")
    wrap(stored, "one_writer")
    wrap(model, "predict_row")
    wrap(model, "predict_latest")
    wrap(signals, "unconfirmed_extreme_in")
    wrap(signals, "unconfirmed_extreme")
    wrap(signals, "pip_size_for")
    wrap(queue, "enqueue")
    wrap(decisions, "record")
    wrap(series_tail.SeriesTails, "update", "tails.update (all)")
    wrap(signals, "generate_signal")
    wrap(live, "generate_signal", "generate_signal (all)")
    del bars
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bars", type=int, default=60)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="CPU per bar of the main steps (wrapped, not sampled)")
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="then run the worker loop (with leases) this many seconds with no new bar and print its CPU",
    )
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between bars")
    parser.add_argument(
        "--symbols",
        type=int,
        default=1,
        help="series decided per pass (a bar close wakes the worker for every symbol at once); CPU is per bar",
    )
    parser.add_argument("--threads", type=int, default=None, help="LIVE_WORKER_THREADS (default: the setting's)")
    args = parser.parse_args()

    import pandas as pd

    from mt5_pipeline.learning.features import update_features
    from mt5_pipeline.learning.training import train_model
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.market.sample_data import generate_candles
    from mt5_pipeline.settings import Settings
    from mt5_pipeline.signals.live import LiveWorker

    with scratch_database("profile_live") as url, tempfile.TemporaryDirectory() as models:
        env = {
            "DATABASE_URL": url, "MODEL_DIR": models, "RF_N_ESTIMATORS": "30", "RF_MAX_DEPTH": "8",
            "RF_MIN_SAMPLES_LEAF": "20", "SIGNAL_BUY_THRESHOLD": "0.5", "SIGNAL_SELL_THRESHOLD": "0.49999999999999994",
            "SIGNAL_TTL_SECONDS": "14400", "SIGNAL_MAX_BAR_AGE_SECONDS": "86400", "PROMOTION_FORCE": "true",
            "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        if args.threads is not None:
            env["LIVE_WORKER_THREADS"] = str(args.threads)
        settings = Settings.from_env(env, env_file=None)
        names = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCAD", "USDCHF", "NZDUSD", "EURGBP", "EURJPY", "GBPJPY"]
        symbols = [
            names[i % len(names)] + ("" if i < len(names) else f".{i // len(names)}") for i in range(args.symbols)
        ]
        histories = {
            s: generate_candles(3000 + args.bars + 5, seed=5 + i, with_weekends=False).reset_index(drop=True)
            for i, s in enumerate(symbols)
        }
        history = histories[symbols[0]]
        ts = pd.to_datetime(history["time"] if "time" in history else history["ts"], utc=True)
        first = 3000
        now = ts.iloc[first - 1].to_pydatetime() + timedelta(seconds=61)
        for s in symbols:
            ingest_candles(url, s, "M1", histories[s].iloc[:first], now=now)
            update_features(url, s, "M1", now=now)
        train_model(settings, symbols[:1], now=now)
        spent = _wrap_steps() if args.breakdown else None
        worker = LiveWorker(settings)
        keys = [(s, "M1") for s in symbols]
        worker.handle(keys, now=now, trigger="start")
        cpu, wall, statuses = [], [], []
        profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not wall
        for i in range(first, first + args.bars):
            now = ts.iloc[i].to_pydatetime() + timedelta(seconds=61)
            if spent is not None and i == first + WARM:
                spent.clear()  # the first bars rebuild the tail: the breakdown is of the steady state
            if args.pause:
                time.sleep(args.pause)
            for s in symbols:
                ingest_candles(url, s, "M1", histories[s].iloc[[i]], now=now)
            c0, w0 = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            decisions = worker.handle(keys, now=now, trigger="notify")
            if profiler:
                profiler.disable()
            cpu.append((time.process_time() - c0) / len(keys))
            wall.append((time.perf_counter() - w0) / len(keys))
            statuses += [(d.status, d.feature_path) for d in decisions]
        warm = cpu[WARM:]
        if spent is not None:
            for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"  {name}: {seconds / ((args.bars - WARM) * len(keys)) * 1000:.2f} ms CPU per bar")
        print(f"bars {len(cpu)}; decisions {sorted(set(statuses))}")
        print(
            f"CPU per bar: median {statistics.median(warm) * 1000:.2f} ms, p90 "
            f"{sorted(warm)[int(0.9 * len(warm))] * 1000:.2f} ms"
        )
        print(f"wall per bar: median {statistics.median(wall[WARM:]) * 1000:.2f} ms ({len(keys)} series per pass)")
        if args.idle:
            import threading

            from mt5_pipeline.signals.series_leases import SeriesLeases

            idle = LiveWorker(settings, leases=SeriesLeases(url, lease_seconds=settings.live_lease_seconds))
            stop = threading.Event()
            loop = threading.Thread(target=idle.run, args=(stop,), daemon=True)
            loop.start()
            time.sleep(3)  # its start pass decides the newest bar
            c0 = time.process_time()
            time.sleep(args.idle)
            idle_cpu = time.process_time() - c0
            stop.set()
            loop.join(30)
            print(
                f"idle worker loop (1 series, leases of {settings.live_lease_seconds:g} s): "
                f"{idle_cpu / args.idle * 1000:.1f} ms CPU per second"
            )
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
