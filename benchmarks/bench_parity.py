"""Parity, measured: the trades the bridge reports against the backtest's trades, on the
same bars and signals, under each entry policy (docs/trades.md).

    pip install -e '.[bench]'          # the `backtesting` package ships the real bars
    .venv/bin/python benchmarks/bench_parity.py [--quick]

Full run: EURUSD H1, April 2017 to February 2018 (the bars bench_real.py uses, with its
1-pip spread), through the pipeline: ingest, features, ``train_model(timeframe="H1")``;
the signals are the trained model's probabilities on its own evaluation window (the last
20 %, out of sample), turned into BUY/SELL by SIGNAL_BUY_THRESHOLD / SIGNAL_SELL_THRESHOLD,
with the pipeline's default SL/TP (20/40 pips) and time exit (60 bars). ``--quick``: 3,000
generated M1 bars (sample_data, 0.1-0.3 pip spreads, a weekend) with 600 random signals,
SL/TP 6/9 pips and a 12-bar time exit.

Each stretch is played by the bridge on the stand-in terminal, bar by bar
(mt5_pipeline_tests/parity_support.py): time exits at each bar close, the signal at the
next open (the market quoted at the bar's open and spread), the bar fed to the terminal
(SL/TP closes). The bridge reports its trades from the deals history to the real API;
the API's rows are compared with ``backtest.simulate_trades`` under the same policy:
entries matched by (entry bar, side), then exit bar, exit reason and pips.

With a spread: the backtest places its stops from the fill, as the terminal does (a spread
nearer the stop, a spread farther the target, on bid prices), so with a constant spread the
trades are identical. Where the spread changes from bar to bar (--quick's generated bars) a
SELL closes at its exit bar's ask while the backtest charges the entry bar's spread: a time
exit differs by the change, a barrier touched by less than it exits differently, and under
one position at a time a different exit moves the entries after it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _support import add_row, bench_parser, report

from mt5_pipeline.execution.execution_policy import ENTRY_POLICIES, ExecutionPolicy
from mt5_pipeline.storage import migrate
from mt5_pipeline_tests.bridge_support import build_rig
from mt5_pipeline_tests.parity_support import play

PIP, POINT = 0.0001, 0.00001


def quick_stretch():
    from datetime import datetime, timezone

    from mt5_pipeline.market.sample_data import generate_candles

    candles = generate_candles(3000, end=datetime(2024, 6, 11, 12, 0, tzinfo=timezone.utc), seed=21)
    rng = np.random.default_rng(21)
    index = np.sort(rng.choice(np.arange(len(candles) - 2), size=600, replace=False))
    signals = {int(i): int(s) for i, s in zip(index, rng.choice([-1, 1], size=len(index)), strict=True)}
    return (
        candles,
        signals,
        "M1",
        6.0,
        9.0,
        12,
        "3,000 generated M1 bars, 600 random signals, SL/TP 6/9 pips, time exit 12 bars",
    )


def real_stretch(work: Path):
    """EURUSD H1 through the pipeline; the model's own out-of-sample signals."""
    import pandas as pd
    from bench_real import TRAINED_AT, eurusd_h1

    from mt5_pipeline.learning.features import load_feature_rows, update_features
    from mt5_pipeline.learning.model_store import load_model
    from mt5_pipeline.learning.training import train_model
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.settings import Settings

    bars = eurusd_h1()
    url = f"sqlite:///{work / 'bars.db'}"
    migrate.upgrade(url)
    ingest_candles(url, "EURUSD", "H1", bars)
    update_features(url, "EURUSD", "H1")
    settings = Settings.from_env(
        {"DATABASE_URL": url, "MODEL_DIR": str(work / "models"), "LOG_LEVEL": "WARNING", "TIMEFRAMES": "H1"},
        env_file=None,
    )
    t = time.perf_counter()
    result = train_model(settings, ["EURUSD"], timeframe="H1", now=TRAINED_AT)
    print(
        f"  trained in {time.perf_counter() - t:.1f} s; evaluation window {result.evaluation_window[0]} .. "
        f"{result.evaluation_window[1]}",
        flush=True,
    )
    model = load_model(result.path)
    rows = load_feature_rows(url, ["EURUSD"], "H1")
    start, end = (pd.Timestamp(x) for x in result.evaluation_window)
    rows = rows[(rows["ts"] >= start) & (rows["ts"] <= end)]
    p = model.probability_up(rows[model.meta["feature_names"]].to_numpy(dtype=np.float64))
    side = np.where(p >= settings.signal_buy_threshold, 1, np.where(p <= settings.signal_sell_threshold, -1, 0))
    candles = bars[(bars["time"] >= start) & (bars["time"] <= end + pd.Timedelta(days=5))].reset_index(drop=True)
    at = pd.DatetimeIndex(candles["time"]).get_indexer(pd.DatetimeIndex(rows["ts"]))
    signals = {int(i): int(s) for i, s in zip(at, side, strict=True) if s != 0 and 0 <= i < len(candles) - 1}
    sl, tp = settings.sl_tp_pips("EURUSD")
    what = (
        f"EURUSD H1 {candles['time'].iloc[0]:%Y-%m-%d} .. {candles['time'].iloc[-1]:%Y-%m-%d} ({len(candles):,} bars, "
        "1-pip spread), "
        f"{len(signals)} signals of the trained model (out of sample), SL/TP {sl:g}/{tp:g} pips, time exit "
        f"{settings.label_max_hold_bars} bars"
    )
    return candles, signals, "H1", sl, tp, settings.label_max_hold_bars, what


def main() -> int:
    args = bench_parser(__doc__, "generated M1 bars and random signals (no training)").parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_parity_"))
    candles, signals, timeframe, sl, tp, hold, what = quick_stretch() if args.quick else real_stretch(work)
    print(what, flush=True)
    rows: list[dict] = []
    details = {"stretch": what}
    for entry in ENTRY_POLICIES:
        tmp = work / entry
        tmp.mkdir()
        url = f"sqlite:///{tmp / 'api.db'}"
        migrate.upgrade(url)
        rig = build_rig(url, tmp, LABEL_MAX_HOLD_BARS=str(hold), ENTRY_POLICY=entry)
        try:
            result = play(
                rig,
                candles,
                signals,
                symbol="EURUSD",
                timeframe=timeframe,
                sl_pips=sl,
                tp_pips=tp,
                pip=PIP,
                point=POINT,
                policy=ExecutionPolicy(entry, hold),
            )
        finally:
            rig.close()
        f = result.figures
        details[entry] = {**f, "seconds": result.seconds, "open_at_end": result.open_at_end}
        n = max(1, f["backtest_trades"])
        print(
            f"  {entry}: backtest {f['backtest_trades']} trades, bridge {f['live_trades']} closed "
            f"(+{result.open_at_end} open at the end); "
            f"same entries {f['same_entries']}, same exits {f['same_exits']}; pips: backtest "
            f"{f['backtest_total_pips']:.1f}, bridge {f['live_total_pips']:.1f}; "
            f"max |diff| {f['max_pips_difference']:.2f} pips, beyond the spread {f['pips_beyond_spread']}; not "
            f"traded: {f['signals_not_traded'] or 0}; played in {result.seconds:.1f} s",
            flush=True,
        )
        # figure, value, unit, baseline, aim, digits
        for figure, value, unit, baseline, aim, digits in (
            (
                f"bridge trades with the backtest's entry (of {f['backtest_trades']})",
                f["same_entries"] / n,
                "",
                1.0,
                "identical",
                3,
            ),
            ("... and its exit (bar and reason)", f["same_exits"] / n, "", 1.0, "identical", 3),
            (
                "net pips, bridge (API trades table)",
                f["live_total_pips"],
                "pips",
                f["backtest_total_pips"],
                "backtest's net pips",
                1,
            ),
            (
                "largest pips difference of a matched trade",
                f["max_pips_difference"],
                "pips",
                None,
                "within the spread",
                2,
            ),
            (
                "bars played per second (bridge + fake terminal + API)",
                len(candles) / result.seconds,
                "bars/s",
                None,
                "machine shared",
                0,
            ),
        ):
            add_row(rows, f"{entry}: {figure}", value, unit, baseline, aim, digits=digits)
    report("bench_parity" + ("_quick" if args.quick else ""), rows)
    out = (
        Path(__file__).resolve().parent
        / "out"
        / ("bench_parity_quick.json" if args.quick else "bench_parity_details.json")
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(details, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
