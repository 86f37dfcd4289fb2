"""The model on real market bars: EURUSD H1, April 2017 to February 2018 (5,000 bars).

    pip install -e '.[bench]'        # the `backtesting` package ships the bars
    .venv/bin/python benchmarks/bench_real.py

Synthetic random walks cannot tell a good model from a bad one: their only edge is the
momentum the generator puts in. This runs the H1 pipeline unchanged on real bars —
import (``ingest_candles``), ``update_features`` for H1, ``train_model(timeframe="H1")``
with its walk-forward folds, backtest and promotion rule — for both ``MODEL_KIND``s, and
reports every figure beside its naive baseline, whatever it says.

Assumptions, stated because the file does not carry them: times are taken as UTC (the
file has no zone), and every bar pays a spread of ``SPREAD_POINTS`` points (1 pip, a
typical retail EURUSD spread; the file has no spread column, and a backtest without a
cost flatters any model). Labels, SL/TP (20/40 pips) and the holding limit (60 bars =
60 hours) are the pipeline's defaults.

Prints a table (ratio = value / baseline) and writes benchmarks/out/bench_real.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from _support import add_row, report

from mt5_pipeline.settings import Settings

SPREAD_POINTS = 10  # 1.0 pip on a 5-digit EURUSD quote
TRAINED_AT = datetime(2018, 3, 1, tzinfo=timezone.utc)


def eurusd_h1() -> pd.DataFrame:
    try:
        from backtesting.test import EURUSD
    except ImportError:  # pragma: no cover - depends on the machine
        sys.exit("the `backtesting` package is missing: pip install -e '.[bench]'")
    frame = EURUSD.reset_index().rename(
        columns={
            "index": "time",
            "Open": "open",
            "High": "high",
            "Low": "low",
            "Close": "close",
            "Volume": "tick_volume",
        }
    )
    frame = frame.rename(columns={frame.columns[0]: "time"})
    frame["time"] = pd.to_datetime(frame["time"]).dt.tz_localize("UTC")
    frame["tick_volume"] = frame["tick_volume"].astype("int64")
    frame["spread"] = SPREAD_POINTS
    frame["real_volume"] = 0
    return frame[["time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume"]]


def run(kind: str, url: str, model_dir: Path) -> dict:
    from mt5_pipeline.learning.training import train_model

    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "MODEL_DIR": str(model_dir),
            "MODEL_KIND": kind,
            "LOG_LEVEL": "WARNING",
            "TIMEFRAMES": "H1",
        },
        env_file=None,
    )
    t = time.perf_counter()
    result = train_model(settings, ["EURUSD"], timeframe="H1", now=TRAINED_AT)
    return {
        "seconds": time.perf_counter() - t,
        "metrics": result.metrics,
        "backtest": result.backtest,
        "walk_forward": result.walk_forward,
        "decision": result.decision.decision,
        "reason": result.decision.reason,
        "train_window": [result.window[0].isoformat(), result.window[1].isoformat()],
        "evaluation_window": [result.evaluation_window[0].isoformat(), result.evaluation_window[1].isoformat()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="the same run (5,000 bars are quick already); accepted for run_all.py"
    )
    parser.parse_args()
    from mt5_pipeline.learning.features import update_features
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.storage import migrate

    bars = eurusd_h1()
    work = Path(tempfile.mkdtemp(prefix="bench_real_"))
    rows: list[dict] = []
    results = {}
    print(
        f"EURUSD H1 from the backtesting package: {len(bars):,} bars, {bars['time'].iloc[0]} .. "
        f"{bars['time'].iloc[-1]}",
        flush=True,
    )
    for kind in ("random_forest", "hist_gradient_boosting"):
        url = (
            f"sqlite:///{work / kind}.db"  # a fresh database per kind: each model is the first, judged on the baselines
        )
        migrate.upgrade(url)
        ingest_candles(url, "EURUSD", "H1", bars)
        update = update_features(url, "EURUSD", "H1")
        r = run(kind, url, work / f"models_{kind}")
        results[kind] = r
        m, b = r["metrics"], r["backtest"]
        name = "RandomForest" if kind == "random_forest" else "HistGradientBoosting"
        print(
            f"  {name}: {update.rows_written} H1 feature rows; trained on {m['train_rows']:.0f} rows, evaluated on "
            f"{m['test_rows']:.0f} ({r['evaluation_window'][0][:10]} .. {r['evaluation_window'][1][:10]})",
            flush=True,
        )
        add_row(
            rows,
            f"{name}: out-of-sample AUC (main split, last 20%)",
            m["auc"],
            "",
            m["baseline_auc"],
            "baseline: constant (0.5)",
            digits=4,
            ratio_digits=4,
        )
        add_row(
            rows,
            f"{name}: walk-forward AUC, mean of {m['wf_folds']:.0f} folds (min {m['wf_auc_min']:.4f})",
            m["wf_auc_mean"],
            "",
            0.5,
            "baseline: constant (0.5)",
            digits=4,
            ratio_digits=4,
        )
        add_row(
            rows,
            f"{name}: out-of-sample log loss",
            m["log_loss"],
            "",
            m["baseline_majority_log_loss"],
            "baseline: training base rate as a constant",
            digits=4,
            ratio_digits=4,
        )
        add_row(
            rows,
            f"{name}: accuracy",
            m["accuracy"],
            "",
            m["baseline_majority_accuracy"],
            "baseline: the training majority class",
            digits=4,
            ratio_digits=4,
        )
        add_row(
            rows,
            f"{name}: hit rate of its BUY/SELL calls ({m['signal_share']:.1%} of bars)",
            m["signal_hit_rate"],
            "",
            m["baseline_always_buy_hit_rate"],
            "baseline: always BUY",
            digits=4,
            ratio_digits=4,
        )
        add_row(
            rows,
            f"{name}: backtest net pips after a 1-pip spread ({b['trades']:.0f} trades)",
            b["total_pips"],
            "pips",
            b["baseline_random_total_pips"],
            "baseline: random sides on the same bars",
            digits=1,
            ratio_digits=3,
        )
        add_row(
            rows,
            f"{name}: backtest profit factor",
            b["profit_factor"],
            "",
            b["baseline_random_profit_factor"],
            "baseline: random sides",
            digits=3,
            ratio_digits=3,
        )
        print(
            "    walk-forward folds: "
            + "; ".join(
                f"#{f['fold']} AUC {f['auc']:.4f} (test {f['test_start'][:10]}..{f['test_end'][:10]})"
                for f in r["walk_forward"]
                if f.get("auc") is not None
            ),
            flush=True,
        )
        print(f"    promotion rule (first model, baselines only): {r['decision'].upper()} - {r['reason']}", flush=True)
    report("bench_real", rows)
    out = Path(__file__).resolve().parent / "out" / "bench_real_details.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out.relative_to(Path(__file__).resolve().parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
