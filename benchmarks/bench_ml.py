"""The ML core: features, the features_m1 step, incremental updates, training and prediction.

    .venv/bin/python benchmarks/bench_ml.py [--quick]

Creates a scratch database on TEST_DATABASE_URL's server (default
postgresql://postgres@127.0.0.1:5432/test), drops it afterwards, and measures in one run
(sizes in brackets are --quick's):

* ``compute_features`` on 1,000,000 [100,000] generated M1 bars, best of 3, against the
  same indicators from the ``ta`` library (RSI, EMA, SMAs) plus plain pandas for what
  ``ta`` lacks (returns, rolling deviations, ratios, hour and day); and the largest
  difference from ``ta``'s RSI after bar 1,000;
* the ``features_m1`` step end to end for those bars in PostgreSQL (``update_features``
  on a symbol without features: read with COPY, compute, write with COPY), against the
  naive read alone (``pd.read_sql`` of the same candles);
* one new bar: the incremental computation (``LOOKBACK_BARS`` + 1 bars) against a full
  recomputation, and ``update_features`` end to end for that bar against a full run;
  plus how far Wilder's RSI from a 60/300/1,000-bar look-back is from the full history's;
* ``train_model`` (walk-forward folds, backtest and saving included) at 100k, 300k and
  1M [20k, 50k, 100k] rows (labelled rows; the main forest fits on the first 80%), each
  in a fresh process for its peak memory, with the model file's size; and at 100k [20k]
  rows the bounded forest of the settings against an unbounded
  ``RandomForestClassifier`` on the same split: fit time, file size, out-of-sample AUC,
  log loss and accuracy;
* the two MODEL_KINDs at 1,000,000 [100,000] rows, on the same main split: the seed's
  bounded RandomForest (the baseline) against HistGradientBoostingClassifier: fit time,
  file size, out-of-sample AUC and log loss (beside the constant baselines) and the
  backtest's net pips after spread (beside random sides on the same bars);
  ``--kinds-only`` runs just this part;
* one-row prediction p50/p99: ``predict_proba`` with ``n_jobs=1`` against ``n_jobs=-1``;
  the tree-by-tree path ``predict_latest`` uses against ``predict_proba``; and
  ``predict_latest`` itself (database read included).

Prints a table (ratio = value / baseline) and writes benchmarks/out/bench_ml.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from _support import ROOT, add_quantile_rows, add_row, bench_parser, database_name, report, scratch_database

from mt5_pipeline.learning.features import LOOKBACK_BARS, update_features
from mt5_pipeline.learning.indicators import compute_features, wilder_rsi
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.settings import Settings

END = datetime(2024, 6, 28, 21, 0, tzinfo=timezone.utc)
INGEST_BATCH = 200_000


def settings_for(url: str, model_dir: Path, **overrides) -> Settings:
    env = {"DATABASE_URL": url, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING"}
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return Settings.from_env(env, env_file=None)


row = partial(add_row, digits=3, ratio_digits=4)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def market(n: int, seed: int, end: datetime = END) -> pd.DataFrame:
    return generate_candles(n, end=end, seed=seed, momentum=0.08)


def store(url: str, symbol: str, frame: pd.DataFrame, now: datetime) -> None:
    for lo in range(0, len(frame), INGEST_BATCH):
        ingest_candles(url, symbol, "M1", frame.iloc[lo : lo + INGEST_BATCH], now=now)


# ---- features -------------------------------------------------------------------------------


def ta_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The same features, the usual way: ``ta`` indicators plus pandas."""
    import ta

    close = frame["close"]
    volume = frame["tick_volume"].astype(float)
    out = pd.DataFrame(index=frame.index)
    log_close = np.log(close)
    for k in (1, 5, 10):
        out[f"ret_{k}"] = log_close.diff(k)
    for w in (5, 10, 20, 50):
        out[f"ma_{w}"] = ta.trend.SMAIndicator(close, window=w).sma_indicator()
        out[f"ma_{w}_ratio"] = out[f"ma_{w}"] / close - 1
    for w in (5, 10, 20):
        out[f"std_{w}"] = out["ret_1"].rolling(w).std()
    out["rsi_14"] = ta.momentum.RSIIndicator(close, window=14).rsi()
    out["volume_ema_20"] = ta.trend.EMAIndicator(volume, window=20).ema_indicator()
    out["vol_ratio"] = volume / out["volume_ema_20"]
    out["range_ratio"] = (frame["high"] - frame["low"]) / close
    out["hour"] = frame["ts"].dt.hour
    out["dow"] = frame["ts"].dt.day_of_week
    return out


def bench_features(frame: pd.DataFrame, rows: list[dict]) -> None:
    bars = frame.rename(columns={"time": "ts"})
    n = len(bars)
    ours = best_of(lambda: compute_features(bars))
    reference = best_of(lambda: ta_features(bars))
    ours_out, ref_out = compute_features(bars), ta_features(bars)
    rsi_diff = float(np.abs(ours_out["rsi_14"].to_numpy()[1000:] - ref_out["rsi_14"].to_numpy()[1000:]).max())
    ema_diff = float(
        np.abs(ours_out["volume_ema_20"].to_numpy()[1000:] - ref_out["volume_ema_20"].to_numpy()[1000:]).max()
    )
    row(rows, f"compute_features, {n:,} bars", ours, "s", reference, "< 0.5 s; baseline: ta + pandas")
    row(rows, "max |RSI - ta's RSI| after bar 1,000", rsi_diff, "RSI pts", None, "<= 1e-9", digits=None)
    row(rows, "max |volume EMA - ta's EMA| after bar 1,000", ema_diff, "ticks", None, "<= 1e-9", digits=None)

    # Why the look-back is 1,000 bars: Wilder's RSI from a shorter window, against the full history.
    full_rsi = wilder_rsi(bars["close"].to_numpy())
    for lookback in (60, 300, LOOKBACK_BARS):
        worst = 0.0
        for end in range(lookback + 5_000, n, max(1, n // 50)):
            window = bars["close"].to_numpy()[end - lookback : end + 1]
            worst = max(worst, abs(wilder_rsi(window)[-1] - full_rsi[end]))
        row(
            rows,
            f"RSI from a {lookback}-bar look-back vs full history (max of 50 bars)",
            worst,
            "RSI pts",
            None,
            "<= 1e-9 at LOOKBACK_BARS" if lookback == LOOKBACK_BARS else "",
            digits=None,
        )


def bench_feature_step(url: str, frame: pd.DataFrame, rows: list[dict]) -> None:
    from sqlalchemy import text

    from mt5_pipeline.storage.engine import get_engine

    n = len(frame)
    t = time.perf_counter()
    store(url, "EURUSD", frame, END)
    print(f"  ingested {n:,} candles in {time.perf_counter() - t:.1f} s", flush=True)
    with get_engine(url).begin() as conn:
        conn.execute(text("ANALYZE candles"))

    t = time.perf_counter()
    update = update_features(url, "EURUSD", now=END)
    step = time.perf_counter() - t
    # The newest bar opens at END, so at END it is still forming: it gets no feature row.
    assert update.full and update.rows_written == n - 1, update

    engine = get_engine(url)
    t = time.perf_counter()
    naive = pd.read_sql(
        text(
            "SELECT ts, open, high, low, close, tick_volume, spread, real_volume, ingested_at FROM candles WHERE "
            "symbol = 'EURUSD' AND timeframe = 'M1' ORDER BY ts"
        ),
        engine,
    )
    read_sql = time.perf_counter() - t
    assert len(naive) == n
    from mt5_pipeline.storage.candles import read_candles

    copy_read = best_of(lambda: read_candles(url, "EURUSD", "M1"), 1)
    row(
        rows,
        f"features_m1 step end to end, {n:,} bars (read with COPY, compute, replace with COPY; PostgreSQL)",
        step,
        "s",
        read_sql,
        "< 15 s; baseline: pd.read_sql read alone",
    )
    row(rows, f"read {n:,} candles with COPY (read_candles)", copy_read, "s", read_sql, "baseline: pd.read_sql")

    # One new bar, as the EA posts it.
    last = frame.iloc[[-1]].copy()
    times_inc, times_compute = [], []
    for i in range(1, 21):
        new = last.copy()
        new["time"] = new["time"] + pd.Timedelta(minutes=i)
        stamp = END + timedelta(minutes=i)
        ingest_candles(url, "EURUSD", "M1", new, now=stamp)
        t = time.perf_counter()
        result = update_features(url, "EURUSD", now=stamp)
        times_inc.append(time.perf_counter() - t)
        assert result.rows_written == 1 and not result.full, result
    window = frame.rename(columns={"time": "ts"}).iloc[-(LOOKBACK_BARS + 1) :]
    for _ in range(50):
        t = time.perf_counter()
        compute_features(window)
        times_compute.append(time.perf_counter() - t)
    full_compute = best_of(lambda: compute_features(frame.rename(columns={"time": "ts"})), 1)
    t = time.perf_counter()
    update_features(url, "EURUSD", full=True, now=END + timedelta(hours=1))
    full_step = time.perf_counter() - t
    row(
        rows,
        f"one new bar: compute ({LOOKBACK_BARS}-bar look-back), median of 50",
        statistics.median(times_compute) * 1000,
        "ms",
        full_compute * 1000,
        "< 5 ms; baseline: full recomputation",
        digits=3,
    )
    row(
        rows,
        "one new bar: update_features end to end (find stale bars, read look-back, compute, write), median of 20",
        statistics.median(times_inc) * 1000,
        "ms",
        full_step * 1000,
        "baseline: full=True run",
    )


# ---- training -----------------------------------------------------------------------------------


def train_child(url: str, symbol: str, model_dir: str, mode: str) -> None:
    """Run in a fresh process: one training, its peak memory, printed as JSON."""
    from mt5_pipeline.learning.training import build_training_set, make_forest, train_model

    settings = settings_for(url, Path(model_dir))
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    out: dict = {}
    if mode == "train":
        t = time.perf_counter()
        result = train_model(settings, [symbol], now=END + timedelta(days=1))
        out = {
            "seconds": time.perf_counter() - t,
            "rows": result.rows,
            "test_rows": result.metrics["test_rows"],
            "fit_s": result.timings["fit_s"],
            "file_mb": result.path.stat().st_size / 1e6,
            "auc": result.metrics["auc"],
            "wf_auc_mean": result.metrics["wf_auc_mean"],
            "path": str(result.path),
        }
    elif mode == "kinds":
        out = compare_kinds(settings, symbol, Path(model_dir))
    else:  # bounded vs unbounded on the main split, fitted here so both see the same rows
        import joblib
        from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

        from mt5_pipeline.learning.evaluation import time_split
        from mt5_pipeline.learning.indicators import MODEL_FEATURES

        data = build_training_set(settings, [symbol])
        frame = data.frame
        X = frame[list(MODEL_FEATURES)].to_numpy(dtype=np.float32)
        y = frame["label"].to_numpy(dtype=np.int64)
        split = time_split(frame["ts"], frame["label_end_ts"])
        for name, forest in (
            ("bounded", make_forest(settings)),
            ("unbounded", make_forest(settings, max_depth=None, min_samples_leaf=1, max_samples=None)),
        ):
            t = time.perf_counter()
            forest.fit(X[split.train], y[split.train])
            fit = time.perf_counter() - t
            p = forest.predict_proba(X[split.test])[:, 1]
            path = Path(model_dir) / f"{name}.pkl"
            joblib.dump(forest, path, compress=3)
            out[name] = {
                "fit_s": fit,
                "file_mb": path.stat().st_size / 1e6,
                "auc": roc_auc_score(y[split.test], p),
                "log_loss": log_loss(y[split.test], p, labels=[0, 1]),
                "accuracy": accuracy_score(y[split.test], (p >= 0.5).astype(int)),
                "rows": int(len(split.train)),
            }
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def compare_kinds(settings: Settings, symbol: str, model_dir: Path) -> dict:
    """RandomForest and HistGradientBoosting on the same main split: fit, file, AUC, log loss, backtest."""
    import joblib

    from mt5_pipeline.learning.backtest import run_backtest
    from mt5_pipeline.learning.evaluation import classification_metrics, time_split
    from mt5_pipeline.learning.indicators import MODEL_FEATURES
    from mt5_pipeline.learning.training import build_training_set, make_estimator

    data = build_training_set(settings, [symbol])
    frame = data.frame
    X = frame[list(MODEL_FEATURES)].to_numpy(dtype=np.float32)
    y = frame["label"].to_numpy(dtype=np.int64)
    split = time_split(frame["ts"], frame["label_end_ts"])
    test = frame.iloc[split.test]
    out: dict = {"rows": int(len(split.train)), "test_rows": int(len(split.test))}
    for kind in ("random_forest", "hist_gradient_boosting"):
        estimator = make_estimator(settings.replace(model_kind=kind))
        t = time.perf_counter()
        estimator.fit(X[split.train], y[split.train])
        fit = time.perf_counter() - t
        p = estimator.predict_proba(X[split.test])[:, list(estimator.classes_).index(1)]
        path = model_dir / f"{kind}.pkl"
        joblib.dump(estimator, path, compress=3)
        m = classification_metrics(
            y[split.test],
            p,
            train_positive_rate=float(y[split.train].mean()),
            buy_threshold=settings.signal_buy_threshold,
            sell_threshold=settings.signal_sell_threshold,
        )
        bt = run_backtest(
            data.candles,
            pd.DataFrame({"symbol": test["symbol"].to_numpy(), "ts": test["ts"].array, "probability": p}),
            settings,
        ).summary
        out[kind] = {
            "fit_s": fit,
            "file_mb": path.stat().st_size / 1e6,
            "auc": m["auc"],
            "log_loss": m["log_loss"],
            "baseline_log_loss": m["baseline_majority_log_loss"],
            "net_pips": bt["total_pips"],
            "trades": bt["trades"],
            "baseline_net_pips": bt["baseline_random_total_pips"],
        }
    return out


def bench_model_kinds(url: str, symbol: str, rows: list[dict], work: Path) -> None:
    result = run_child(url, symbol, work / "kinds", "kinds")
    rf, hgb = result["random_forest"], result["hist_gradient_boosting"]
    label = (
        f"{result['rows'] + result['test_rows']:,} rows "
        f"({result['rows']:,} to fit, {result['test_rows']:,} to evaluate)"
    )
    print(
        f"  model kinds at {label}: fit RF {rf['fit_s']:.1f} s, HGB {hgb['fit_s']:.1f} s; AUC RF {rf['auc']:.4f}, HGB "
        f"{hgb['auc']:.4f}",
        flush=True,
    )
    row(
        rows,
        f"MODEL_KIND at {label}: HistGradientBoosting fit",
        hgb["fit_s"],
        "s",
        rf["fit_s"],
        "baseline: the RandomForest (RF_* settings)",
    )
    row(
        rows,
        "  HistGradientBoosting model file (joblib, compress=3)",
        hgb["file_mb"],
        "MB",
        rf["file_mb"],
        "baseline: the RandomForest's",
    )
    for kind, r in (("RandomForest", rf), ("HistGradientBoosting", hgb)):
        row(rows, f"  {kind} out-of-sample AUC", r["auc"], "", 0.5, "baseline: constant (0.5)", digits=4)
        row(
            rows,
            f"  {kind} out-of-sample log loss",
            r["log_loss"],
            "",
            r["baseline_log_loss"],
            "baseline: the training base rate as a constant",
            digits=4,
        )
        row(
            rows,
            f"  {kind} backtest net pips after spread ({r['trades']:.0f} trades)",
            r["net_pips"],
            "pips",
            r["baseline_net_pips"],
            "baseline: random sides on the same bars",
            digits=1,
        )
    (work / "kinds.json").write_text(json.dumps(result, indent=2))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process's own address
    space; ru_maxrss would also count the parent's pages at fork, before exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(url: str, symbol: str, model_dir: Path, mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, url, symbol, str(model_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"training child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def bench_training(url: str, sizes: list[int], n_bars: int, rows: list[dict], work: Path) -> Path:
    from sqlalchemy import text

    from mt5_pipeline.storage.engine import get_engine

    model_path = None
    for i, size in enumerate(sizes):
        if size == n_bars:
            symbol = "EURUSD"  # the feature step's bars: `size` of them, features computed
        else:
            symbol = f"SYM{size // 1000}K"
            # Warm-up (300 bars) and the label's look-ahead (5) cost a few rows: `size` labelled rows remain.
            store(url, symbol, market(size + 305, seed=100 + i), END)
            with get_engine(url).begin() as conn:
                conn.execute(text("ANALYZE candles"))
            update_features(url, symbol, now=END)
        result = run_child(url, symbol, work / f"models_{size}", "train")
        print(
            f"  train_model {result['rows']:,} training rows: {result['seconds']:.1f} s, peak "
            f"{result['peak_rss_mb']:.0f} MB, file {result['file_mb']:.1f} MB, AUC {result['auc']:.4f}",
            flush=True,
        )
        label = f"{size // 1000}k"
        aim = "< 180 s on 2 cores" if size >= 1_000_000 else ""
        train_rows = f"{result['rows']:,}"
        row(
            rows,
            f"train_model at {label} rows ({train_rows} in the main fit; 4 walk-forward fits, backtest, save)",
            result["seconds"],
            "s",
            None,
            aim,
        )
        row(rows, f"  of which forest fits, {label} rows", result["fit_s"], "s", None, "")
        row(rows, f"  peak memory, {label} rows", result["peak_rss_mb"], "MB", None, "")
        row(
            rows,
            f"  model file, {label} rows (joblib, compress=3)",
            result["file_mb"],
            "MB",
            None,
            "< 100 MB" if size >= 1_000_000 else "",
        )
        row(
            rows,
            f"  out-of-sample AUC, {label} rows (walk-forward mean {result['wf_auc_mean']:.4f})",
            result["auc"],
            "",
            0.5,
            "baseline: constant (0.5)",
            digits=4,
        )
        model_path = Path(result["path"])
    compare_symbol = f"SYM{sizes[0] // 1000}K"
    cmp = run_child(url, compare_symbol, work / "compare", "compare")
    b, u = cmp["bounded"], cmp["unbounded"]
    label = f"{sizes[0] // 1000}k"
    print(
        f"  bounded vs unbounded at {label}: fit {b['fit_s']:.1f} s vs {u['fit_s']:.1f} s, AUC {b['auc']:.4f} vs "
        f"{u['auc']:.4f}",
        flush=True,
    )
    # The bounded forest against the unbounded one: (figure, result key, unit, aim, digits).
    for figure, key, unit, aim, digits in (
        ("bounded forest fit, {} rows (one fit)", "fit_s", "s", "baseline: unbounded RandomForestClassifier", 3),
        ("bounded forest file, {} rows", "file_mb", "MB", "baseline: unbounded", 3),
        ("bounded forest out-of-sample AUC, {} rows", "auc", "", "not worse than unbounded", 4),
        ("bounded forest out-of-sample log loss, {} rows", "log_loss", "", "not worse than unbounded", 4),
        ("bounded forest out-of-sample accuracy, {} rows", "accuracy", "", "not worse than unbounded", 4),
    ):
        row(rows, figure.format(label), b[key], unit, u[key], aim, digits=digits)
    assert model_path is not None
    return model_path


# ---- prediction -----------------------------------------------------------------------------------


def bench_prediction(url: str, model_path: Path, rows: list[dict], n: int) -> None:
    import shutil

    from mt5_pipeline.learning.features import load_feature_rows
    from mt5_pipeline.learning.indicators import MODEL_FEATURES
    from mt5_pipeline.learning.model import predict_latest
    from mt5_pipeline.learning.model_store import forest_probability_up, load_model

    forest = load_model(model_path).forest
    feats = load_feature_rows(url, ["EURUSD"], usable_only=True)
    X = feats[list(MODEL_FEATURES)].to_numpy(dtype=np.float64)[-2000:]

    def latencies(fn, count: int) -> list[float]:
        out = []
        for i in range(count):
            x = X[i % len(X)][None, :]
            t = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t)
        return out

    def proba(jobs: int):
        def run(x):
            forest.n_jobs = jobs
            return forest.predict_proba(x)

        return run

    latencies(proba(1), 20)
    one = latencies(proba(1), n)
    many = latencies(proba(-1), max(50, n // 5))
    fast = latencies(lambda x: forest_probability_up(forest, x), n)
    forest.n_jobs = 1
    quantile_rows = partial(add_quantile_rows, digits=3, ratio_digits=4)
    quantile_rows(
        rows,
        {
            0.5: ("one-row predict_proba n_jobs=1, p50", "baseline: n_jobs=-1"),
            0.99: ("one-row predict_proba n_jobs=1, p99", "baseline: n_jobs=-1"),
        },
        one,
        many,
    )
    quantile_rows(
        rows,
        {
            0.5: (
                "one-row forest_probability_up (tree by tree, what predict_latest uses), p50",
                "baseline: predict_proba n_jobs=1",
            ),
            0.99: ("one-row forest_probability_up, p99", "< 10 ms; baseline: predict_proba n_jobs=1"),
        },
        fast,
        one,
    )

    model_dir = model_path.parent
    shutil.copyfile(model_path, model_dir / "rf_m1.pkl")
    settings = settings_for(url, model_dir)
    predict_latest(settings, "EURUSD")  # loads and caches the model
    times = []
    for _ in range(n):
        t = time.perf_counter()
        predict_latest(settings, "EURUSD")
        times.append(time.perf_counter() - t)
    quantile_rows(
        rows,
        {
            0.5: ("predict_latest (newest feature row from PostgreSQL + forest), p50", ""),
            0.99: ("predict_latest, p99", "< 10 ms"),
        },
        times,
    )


def main() -> int:
    parser = bench_parser(__doc__, "100,000 bars, training at 20k, 50k and 100k rows")
    parser.add_argument(
        "--kinds-only", action="store_true", help="only the RandomForest vs HistGradientBoosting comparison"
    )
    parser.add_argument("--child", nargs=4, metavar=("MODE", "URL", "SYMBOL", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, url, symbol, model_dir = args.child
        train_child(url, symbol, model_dir, mode)
        return 0

    n_bars = 100_000 if args.quick else 1_000_000
    train_sizes = [20_000, 50_000, n_bars] if args.quick else [100_000, 300_000, n_bars]
    n_predictions = 200 if args.quick else 1_000

    work = Path(tempfile.mkdtemp(prefix="bench_ml_"))
    started = time.perf_counter()
    rows: list[dict] = []
    with scratch_database("mt5_bench_ml") as url:
        print(
            f"{n_bars:,} generated M1 bars (PostgreSQL scratch database {database_name(url)}; {os.cpu_count()} cores)",
            flush=True,
        )
        frame = market(n_bars, seed=1)
        if args.kinds_only:
            store(url, "EURUSD", frame, END)
            update_features(url, "EURUSD", now=END)
            print("model kinds ...", flush=True)
            bench_model_kinds(url, "EURUSD", rows, work)
            report("bench_ml_kinds", rows)
            print(f"(total {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
            return 0
        print("features ...", flush=True)
        bench_features(frame, rows)
        print("features_m1 step ...", flush=True)
        bench_feature_step(url, frame, rows)
        print("training ...", flush=True)
        model_path = bench_training(url, train_sizes, n_bars, rows, work)
        print("model kinds ...", flush=True)
        bench_model_kinds(url, "EURUSD", rows, work)
        print("prediction ...", flush=True)
        bench_prediction(url, model_path, rows, n_predictions)
    report("bench_ml", rows)
    print(f"(total {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
