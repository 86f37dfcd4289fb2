"""rf_m1: train, evaluate, persist and serve the random forest.

Training (:func:`train_model`) reads every symbol's usable ``features_m1`` rows and their
candles, labels them (``labels.py``), evaluates by time with walk-forward folds and a
purge (``evaluation.py``), backtests the evaluation part (``backtest.py``) and saves the
model. The model that is saved is the one trained on the main split's training part:
the metrics in its sidecar describe exactly the forest that trades (the cost: the
newest ``TEST_FRACTION`` of the data is only evaluated on, not learnt from).

Files in ``MODEL_DIR``, each written to a temporary file and renamed into place, so a
reader never sees half a model:

- ``rf_m1-<version>.pkl`` and ``rf_m1-<version>.json`` (the sidecar), and
  ``rf_m1-<version>-equity.png``: every training's own copy;
- ``rf_m1.pkl`` and ``rf_m1.json``: the current model.

The pickle holds ``{"model": forest, "meta": sidecar}``. Loading compares the meta's
feature names, feature-set version and scikit-learn version with this code's and refuses
a mismatch (:class:`ModelMismatchError`). A row in ``model_registry`` points at each
version; the newest is ``is_current``.

Serving (:func:`predict_latest`) keeps the loaded model per process and reloads it when
``rf_m1.pkl`` is replaced (its inode, mtime or size change). Training uses every core;
inference sets ``n_jobs=1`` and asks the trees directly (:func:`forest_probability_up`).

``TrainResult.metrics`` is flat and numeric (NaN where a figure is undefined, null in the
JSON files): the main split's metrics from ``evaluation.classification_metrics`` (each
beside its ``baseline_*``), row counts, and ``wf_*`` summaries of the walk-forward folds;
``TrainResult.backtest`` holds ``backtest.summarize``'s figures and ``baseline_random_*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sqlalchemy import select, update

from mt5_pipeline.backtest import plot_equity, run_backtest
from mt5_pipeline.clock import parse_iso
from mt5_pipeline.evaluation import DEFAULT_FOLDS, TEST_FRACTION, classification_metrics, walk_forward_folds
from mt5_pipeline.features import feature_symbols, load_feature_rows
from mt5_pipeline.indicators import FEATURE_SET_NAME, FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.labels import LabelSpec, lookahead_bars, make_labels
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import features_m1, model_registry

log = logging.getLogger(__name__)

MODEL_NAME = "rf_m1"
TIMEFRAME = "M1"
# A forest needs some rows per leaf and both classes; fewer rows than this is a set-up problem.
MIN_TRAIN_ROWS = 200

HOW_TO_TRAIN = (
    "train one: materialize the rf_m1 asset in Dagster (the rf_m1_train_job in the UI, or "
    "`dagster asset materialize -m mt5_pipeline --select rf_m1`), run `mt5-pipeline train`, "
    "or `docker compose run --rm ml-trainer python train_model.py`"
)


class NoModelError(RuntimeError):
    """No trained model in MODEL_DIR; the message says how to train one."""


class NoFeaturesError(LookupError):
    """No usable feature row for the symbol (nothing ingested yet, or still warming up)."""


class ModelMismatchError(RuntimeError):
    """The saved model was trained for other features or another scikit-learn; the message says what differs."""


class ModelTimeframeError(ValueError):
    """The model was trained on another timeframe; ``available`` lists the timeframes that have a model."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


class InsufficientDataError(ValueError):
    """Too few labelled rows (or one class only) to train and evaluate honestly."""


@dataclass
class TrainResult:
    version: str
    path: Path
    trained_at: datetime
    rows: int  # rows the saved forest was trained on
    symbols: list[str]
    window: tuple[datetime, datetime]  # first and last training bar
    metrics: dict  # flat and numeric (NaN where undefined)
    feature_importances: dict[str, float]
    walk_forward: list[dict]
    backtest: dict
    equity_png: Path | None
    feature_set_version: str
    label_mode: str
    sidecar_path: Path | None = None
    evaluation_window: tuple[datetime, datetime] | None = None
    data_hash: str = ""
    timings: dict = field(default_factory=dict)


@dataclass
class Prediction:
    symbol: str
    timeframe: str
    ts: datetime  # bar open time
    close: float
    probability: float  # of class 1: the price goes up (horizon) / a long wins (triple_barrier)
    model_version: str
    model_trained_at: datetime
    label_mode: str
    label_horizon: int
    model: str = MODEL_NAME


@dataclass
class LoadedModel:
    forest: RandomForestClassifier
    meta: dict
    path: Path

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def trained_at(self) -> datetime:
        return parse_iso(self.meta["trained_at"])

    def probability_up(self, X: np.ndarray) -> np.ndarray:
        return forest_probability_up(self.forest, X)


def forest_probability_up(forest: RandomForestClassifier, X: np.ndarray) -> np.ndarray:
    """``forest.predict_proba(X)[:, class 1]``, the same numbers, summed tree by tree.

    For one row ``predict_proba`` spends ~10 ms in per-tree input checks and the joblib
    dispatch, even with ``n_jobs=1``; the trees themselves take ~1 ms. This asks each
    fitted tree directly, as ``predict_proba`` does after its checks.
    """
    classes = list(forest.classes_)
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    if 1 not in classes:
        return np.zeros(len(X32))
    k = classes.index(1)
    total = np.zeros(len(X32))
    for tree in forest.estimators_:
        values = tree.tree_.predict(X32).reshape(len(X32), -1)[:, : len(classes)]
        norm = values.sum(axis=1)
        norm[norm == 0] = 1.0
        total += values[:, k] / norm
    return total / len(forest.estimators_)


# ---- paths and small helpers ----------------------------------------------------------


def current_model_path(settings: Settings) -> Path:
    return Path(settings.model_dir) / f"{MODEL_NAME}.pkl"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _to_datetime(ns: int) -> datetime:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").to_pydatetime()


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: undefined figures are written as null."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, datetime):
        return _iso(value)
    return value


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "joblib": joblib.__version__,
    }


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file_path)`` to a temp file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(_finite_or_none(data), indent=2, sort_keys=True), encoding="utf-8"))


# ---- the training set -------------------------------------------------------------------


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # symbol, ts, features..., label, label_end_ts; sorted by ts then symbol
    candles: dict[str, pd.DataFrame]


def build_training_set(settings: Settings, symbols: list[str] | None = None, *, now: datetime | None = None) -> TrainingSet:
    """Usable feature rows with labels, for the symbols (default: every symbol with features).

    Closed bars only: the forming bar is neither a training row nor the future a label
    looks at (its close is not a price yet).
    """
    from mt5_pipeline.bars import closed_only
    from mt5_pipeline.storage.bulk import read_candles

    url = settings.database_url
    wanted = sorted({s.upper() for s in symbols}) if symbols else feature_symbols(url, TIMEFRAME)
    parts: list[pd.DataFrame] = []
    candles_by_symbol: dict[str, pd.DataFrame] = {}
    for symbol in wanted:
        feats = load_feature_rows(url, [symbol], TIMEFRAME, usable_only=True)
        if feats.empty:
            continue
        bars = closed_only(read_candles(url, symbol, TIMEFRAME).reset_index(drop=True), TIMEFRAME, now=now)
        labels = make_labels(bars, LabelSpec.from_settings(settings, symbol))
        merged = feats.merge(labels, on="ts", how="inner", validate="one_to_one")
        merged = merged[merged["label"].notna() & merged["label_end_ts"].notna()]
        if merged.empty:
            continue
        candles_by_symbol[symbol] = bars
        parts.append(merged[["symbol", "ts", *MODEL_FEATURES, "label", "label_end_ts"]])
    if not parts:
        raise InsufficientDataError(
            f"no usable labelled feature rows for {wanted or 'any symbol'}: ingest candles (more than the warm-up) and materialize features_m1 first"
        )
    frame = pd.concat(parts, ignore_index=True).sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
    return TrainingSet(frame=frame, candles=candles_by_symbol)


def data_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the rows a model learns and is evaluated on (symbols, times, features, labels)."""
    h = hashlib.sha256()
    h.update("|".join(frame["symbol"].astype(str)).encode())
    h.update(np.ascontiguousarray(pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8).tobytes())
    h.update(np.ascontiguousarray(frame[list(MODEL_FEATURES)].to_numpy(dtype=np.float64)).tobytes())
    h.update(np.ascontiguousarray(frame["label"].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()


def make_forest(settings: Settings, **overrides: Any) -> RandomForestClassifier:
    params: dict[str, Any] = dict(
        n_estimators=settings.rf_n_estimators,
        max_depth=settings.rf_max_depth,
        min_samples_leaf=settings.rf_min_samples_leaf,
        max_samples=settings.rf_max_samples if settings.rf_max_samples < 1 else None,
        random_state=settings.rf_random_state,
        n_jobs=-1,  # all cores to train; predict_latest sets 1
    )
    params.update(overrides)
    return RandomForestClassifier(**params)


def _fold_record(fold, ts_ns: np.ndarray, metrics: dict) -> dict:
    record: dict[str, Any] = {
        "fold": fold.number,
        "train_rows": int(len(fold.train)),
        "test_rows": int(len(fold.test)),
        "train_end": _iso(_to_datetime(ts_ns[fold.train[-1]])) if len(fold.train) else None,
        "test_start": _iso(_to_datetime(ts_ns[fold.test[0]])) if len(fold.test) else None,
        "test_end": _iso(_to_datetime(ts_ns[fold.test[-1]])) if len(fold.test) else None,
    }
    for key in ("auc", "accuracy", "balanced_accuracy", "log_loss", "brier", "signal_share", "signal_hit_rate", "baseline_majority_accuracy", "baseline_majority_log_loss", "baseline_always_buy_hit_rate"):
        value = metrics.get(key, math.nan)
        record[key] = float(value) if value is not None and math.isfinite(value) else None
    return record


def _check_trainable(y: np.ndarray, what: str) -> None:
    if len(y) < MIN_TRAIN_ROWS:
        raise InsufficientDataError(f"{what}: only {len(y)} labelled rows (need at least {MIN_TRAIN_ROWS}); ingest more history")
    if len(np.unique(y)) < 2:
        raise InsufficientDataError(f"{what}: every label is {int(y[0])}; the labels need both classes")


# ---- training -----------------------------------------------------------------------------


def train_model(
    settings: Settings,
    symbols: list[str] | None = None,
    *,
    now: datetime | None = None,
    walk_forward: int = DEFAULT_FOLDS,
) -> TrainResult:
    """Train rf_m1 on the symbols' usable features, evaluate, backtest, save atomically and register it."""
    started = time.perf_counter()
    trained_at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    data = build_training_set(settings, symbols, now=trained_at)
    frame = data.frame
    loaded_s = time.perf_counter() - started

    X = np.ascontiguousarray(frame[list(MODEL_FEATURES)].to_numpy(dtype=np.float32))
    y = frame["label"].to_numpy(dtype=np.int64)
    ts_ns = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    end_ns = pd.DatetimeIndex(frame["label_end_ts"]).as_unit("ns").asi8
    folds = walk_forward_folds(ts_ns, end_ns, walk_forward, TEST_FRACTION)
    main = folds[-1]
    _check_trainable(y[main.train], "training part")
    if len(main.test) == 0:
        raise InsufficientDataError("the evaluation part is empty; ingest more history")

    fold_records: list[dict] = []
    forest = None
    metrics: dict[str, float] = {}
    fit_s = 0.0
    for fold in folds:
        if fold is not main and (len(fold.train) < MIN_TRAIN_ROWS or len(np.unique(y[fold.train])) < 2 or len(fold.test) == 0):
            fold_records.append({"fold": fold.number, "skipped": True, "train_rows": int(len(fold.train)), "test_rows": int(len(fold.test))})
            continue
        model = make_forest(settings)
        t0 = time.perf_counter()
        model.fit(X[fold.train], y[fold.train])
        fit_s += time.perf_counter() - t0
        p = _probability_up(model, X[fold.test])
        fold_metrics = classification_metrics(
            y[fold.test],
            p,
            train_positive_rate=float(y[fold.train].mean()),
            buy_threshold=settings.signal_buy_threshold,
            sell_threshold=settings.signal_sell_threshold,
        )
        fold_records.append(_fold_record(fold, ts_ns, fold_metrics))
        if fold is main:
            forest, metrics, test_p = model, fold_metrics, p

    assert forest is not None
    evaluated = [r for r in fold_records if r.get("auc") is not None]
    aucs = np.array([r["auc"] for r in evaluated], dtype=float)
    accs = np.array([r["accuracy"] for r in evaluated], dtype=float)
    metrics.update(
        {
            "train_rows": float(len(main.train)),
            "test_rows": float(len(main.test)),
            "embargo_bars": float(lookahead_bars(settings)),
            "train_positive_rate": float(y[main.train].mean()),
            "wf_folds": float(len(evaluated)),
            "wf_auc_mean": float(aucs.mean()) if len(aucs) else math.nan,
            "wf_auc_min": float(aucs.min()) if len(aucs) else math.nan,
            "wf_auc_std": float(aucs.std()) if len(aucs) else math.nan,
            "wf_accuracy_mean": float(accs.mean()) if len(accs) else math.nan,
        }
    )

    test_frame = frame.iloc[main.test]
    bt = run_backtest(
        data.candles,
        pd.DataFrame({"symbol": test_frame["symbol"].to_numpy(), "ts": test_frame["ts"].array, "probability": test_p}),
        settings,
    )
    backtest = dict(bt.summary)

    digest = data_hash(frame)
    model_dir = Path(settings.model_dir)
    version = _unique_version(settings, f"{trained_at:%Y%m%dT%H%M%SZ}-{digest[:8]}")
    versioned = model_dir / f"{MODEL_NAME}-{version}.pkl"
    equity_png: Path | None = model_dir / f"{MODEL_NAME}-{version}-equity.png"
    try:
        plot_equity(bt, equity_png, title=f"{MODEL_NAME} {version}: out-of-sample backtest")
    except Exception as exc:  # a plot must never cost a trained model
        log.warning("equity curve not drawn: %s", exc)
        equity_png = None

    train_ts = ts_ns[main.train]
    test_ts = ts_ns[main.test]
    window = (_to_datetime(train_ts.min()), _to_datetime(train_ts.max()))
    evaluation_window = (_to_datetime(test_ts.min()), _to_datetime(test_ts.max()))
    symbols_used = sorted(frame["symbol"].unique().tolist())
    importances = {name: float(v) for name, v in zip(MODEL_FEATURES, forest.feature_importances_, strict=True)}
    meta = {
        "model": MODEL_NAME,
        "version": version,
        "trained_at": _iso(trained_at),
        "symbols": symbols_used,
        "timeframe": TIMEFRAME,
        "train_window": [_iso(window[0]), _iso(window[1])],
        "evaluation_window": [_iso(evaluation_window[0]), _iso(evaluation_window[1])],
        "rows": int(len(main.train)),
        "test_rows": int(len(main.test)),
        "feature_names": list(MODEL_FEATURES),
        "feature_set_name": FEATURE_SET_NAME,
        "feature_set_version": FEATURE_SET_VERSION,
        "label_mode": settings.label_mode,
        "label_horizon": int(lookahead_bars(settings)),
        "label_horizon_bars": settings.label_horizon_bars,
        "label_max_hold_bars": settings.label_max_hold_bars,
        "sl_tp_pips": {s: list(settings.sl_tp_pips(s)) for s in symbols_used},
        "thresholds": {"buy": settings.signal_buy_threshold, "sell": settings.signal_sell_threshold},
        "params": {k: v for k, v in forest.get_params().items() if isinstance(v, (int, float, str, type(None)))},
        "metrics": metrics,
        "walk_forward": fold_records,
        "backtest": backtest,
        "feature_importances": importances,
        "library_versions": library_versions(),
        "sklearn_version": sklearn.__version__,
        "data_hash": digest,
        "path": str(versioned),
        "equity_png": str(equity_png) if equity_png else None,
    }
    save_model(forest, meta, versioned)
    _register(settings, meta, versioned, window, trained_at)
    _publish_current(settings, versioned)
    total_s = time.perf_counter() - started
    log.info("trained %s on %d rows (%s); AUC %.4f vs baseline 0.5", version, len(main.train), ", ".join(symbols_used), metrics.get("auc", math.nan))
    return TrainResult(
        version=version,
        path=versioned,
        trained_at=trained_at,
        rows=int(len(main.train)),
        symbols=symbols_used,
        window=window,
        metrics=metrics,
        feature_importances=importances,
        walk_forward=_finite_or_none(fold_records),
        backtest=backtest,
        equity_png=equity_png,
        feature_set_version=FEATURE_SET_VERSION,
        label_mode=settings.label_mode,
        sidecar_path=_sidecar(versioned),
        evaluation_window=evaluation_window,
        data_hash=digest,
        timings={"load_s": loaded_s, "fit_s": fit_s, "total_s": total_s},
    )


def _probability_up(model: RandomForestClassifier, X: np.ndarray) -> np.ndarray:
    classes = list(model.classes_)
    return model.predict_proba(X)[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


def _unique_version(settings: Settings, base: str) -> str:
    with get_engine(settings.database_url).connect() as conn:
        taken = set(conn.execute(select(model_registry.c.version).where(model_registry.c.version.like(f"{base}%"))).scalars())
    version, i = base, 1
    while version in taken or (Path(settings.model_dir) / f"{MODEL_NAME}-{version}.pkl").exists():
        i += 1
        version = f"{base}-{i}"
    return version


# ---- persistence --------------------------------------------------------------------------


def save_model(forest: RandomForestClassifier, meta: dict, path: Path) -> Path:
    """Write the model and its JSON sidecar next to it, each atomically."""
    path = Path(path)
    bundle = {"model": forest, "meta": _finite_or_none(meta)}
    _atomic_write(path, lambda tmp: joblib.dump(bundle, tmp, compress=3))
    _write_json(_sidecar(path), meta)
    return path


def _publish_current(settings: Settings, versioned: Path) -> None:
    current = current_model_path(settings)
    _atomic_write(current, lambda tmp: shutil.copyfile(versioned, tmp))
    _atomic_write(_sidecar(current), lambda tmp: shutil.copyfile(_sidecar(versioned), tmp))


def _register(settings: Settings, meta: dict, path: Path, window: tuple[datetime, datetime], trained_at: datetime) -> None:
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(update(model_registry).where(model_registry.c.model == MODEL_NAME).values(is_current=False))
        conn.execute(
            model_registry.insert().values(
                model=MODEL_NAME,
                version=meta["version"],
                path=str(path),
                trained_at=trained_at,
                symbols=json.dumps(meta["symbols"]),
                train_start=window[0],
                train_end=window[1],
                rows=int(meta["rows"]),
                feature_set_version=meta["feature_set_version"],
                label_mode=meta["label_mode"],
                metrics=json.dumps(_finite_or_none(meta["metrics"]), sort_keys=True),
                data_hash=meta["data_hash"],
                is_current=True,
            )
        )


def check_compatible(meta: dict, path: Path | str = "") -> None:
    """Raise ModelMismatchError unless the model was trained for this code's features and scikit-learn."""
    problems = []
    names = list(meta.get("feature_names") or [])
    if names != list(MODEL_FEATURES):
        missing = [n for n in MODEL_FEATURES if n not in names]
        extra = [n for n in names if n not in MODEL_FEATURES]
        detail = f"missing {missing}, unknown {extra}" if missing or extra else "same names in another order"
        problems.append(f"feature names differ ({detail})")
    version = str(meta.get("feature_set_version"))
    if version != FEATURE_SET_VERSION:
        problems.append(f"feature set version {version} (this code computes {FEATURE_SET_VERSION})")
    trained_with = str(meta.get("sklearn_version") or meta.get("library_versions", {}).get("sklearn"))
    if trained_with != sklearn.__version__:
        problems.append(f"scikit-learn {trained_with} (installed: {sklearn.__version__})")
    if problems:
        raise ModelMismatchError(
            f"model {path or ''} (version {meta.get('version', '?')}) does not fit this installation: "
            + "; ".join(problems)
            + f". Retrain it: {HOW_TO_TRAIN} (after recomputing features_m1 if the feature set changed)"
        )


def load_model(path: Path | str) -> LoadedModel:
    """Load a saved model and check it; NoModelError if the file is missing, ModelMismatchError if it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise NoModelError(f"no model at {path}; {HOW_TO_TRAIN}")
    try:
        with warnings.catch_warnings():
            # A version mismatch is reported below, from the meta, with a clearer message.
            warnings.simplefilter("ignore")
            bundle = joblib.load(path)
    except Exception as exc:
        raise ModelMismatchError(f"model {path} cannot be loaded ({exc.__class__.__name__}: {exc}); retrain it: {HOW_TO_TRAIN}") from exc
    if not isinstance(bundle, dict) or "model" not in bundle or "meta" not in bundle:
        raise ModelMismatchError(f"{path} is not an {MODEL_NAME} bundle; retrain it: {HOW_TO_TRAIN}")
    check_compatible(bundle["meta"], path)
    forest = bundle["model"]
    forest.n_jobs = 1  # one row at a time: a process pool costs more than it saves
    return LoadedModel(forest=forest, meta=bundle["meta"], path=path)


_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int, int], LoadedModel | Exception]] = {}


def load_current(settings: Settings) -> LoadedModel:
    """The current model, cached per file and reloaded when ``rf_m1.pkl`` is replaced."""
    path = current_model_path(settings).resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NoModelError(f"no trained model: {path} does not exist; {HOW_TO_TRAIN}") from None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(str(path))
        if hit is None or hit[0] != key:
            try:
                value: LoadedModel | Exception = load_model(path)
            except (ModelMismatchError, NoModelError) as exc:
                value = exc
            hit = (key, value)
            _cache[str(path)] = hit
    if isinstance(hit[1], Exception):
        raise hit[1]
    return hit[1]


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()


# ---- serving ------------------------------------------------------------------------------

_LATEST_COLUMNS = ("ts", "close", "usable", "feature_set_version", *MODEL_FEATURES)


def model_timeframes(settings: Settings) -> list[str]:
    """Timeframes that have a model to predict with (today: rf_m1's, when it exists)."""
    info = current_model_info(settings)
    if info is None:
        return []
    return [str(info.get("timeframe") or TIMEFRAME)]


def check_timeframe(loaded: LoadedModel, timeframe: str) -> None:
    """A model only predicts the timeframe it was trained on: M1 patterns say nothing about H1 bars."""
    trained_on = str(loaded.meta.get("timeframe") or TIMEFRAME)
    if timeframe != trained_on:
        raise ModelTimeframeError(
            f"no model for {timeframe}: {MODEL_NAME} was trained on {trained_on} bars and only predicts {trained_on} "
            f"(timeframes with a model: {trained_on})",
            [trained_on],
        )


def predict_latest(settings: Settings, symbol: str, timeframe: str = "M1", *, now: datetime | None = None) -> Prediction:
    """Probability for the symbol's newest CLOSED bar (see :mod:`mt5_pipeline.bars`), from the current model.

    Feature rows are only written for closed bars; the cutoff here also guards against
    rows a previous version wrote for a forming bar. ModelTimeframeError for a timeframe
    the model was not trained on.
    """
    from mt5_pipeline.bars import closed_cutoff
    from mt5_pipeline.features import newest_candle_ts

    loaded = load_current(settings)
    check_timeframe(loaded, timeframe)
    url = settings.database_url
    cutoff = closed_cutoff(timeframe, now=now, newest_open=newest_candle_ts(url, symbol, timeframe))
    f = features_m1.c
    with get_engine(url).connect() as conn:
        row = conn.execute(
            select(*(f[c] for c in _LATEST_COLUMNS))
            .where(f.symbol == symbol, f.timeframe == timeframe, f.ts <= cutoff)
            .order_by(f.ts.desc())
            .limit(1)
        ).mappings().first()
    if row is None:
        raise NoFeaturesError(f"no features for a closed {symbol} {timeframe} bar: ingest its candles and materialize features_m1")
    if str(row["feature_set_version"]) != FEATURE_SET_VERSION:
        raise NoFeaturesError(
            f"the newest features of {symbol} {timeframe} are feature set v{row['feature_set_version']}, this code computes "
            f"v{FEATURE_SET_VERSION}: recompute features_m1 (update_features with full=True)"
        )
    ts = parse_iso(row["ts"])
    if not row["usable"]:
        raise NoFeaturesError(
            f"the newest bar of {symbol} {timeframe} ({_iso(ts)}) is not usable: the symbol needs more history "
            "(warm-up) or a feature is undefined there"
        )
    X = np.array([[np.nan if row[c] is None else float(row[c]) for c in loaded.meta["feature_names"]]], dtype=np.float64)
    if not np.isfinite(X).all():
        raise NoFeaturesError(f"the newest features of {symbol} {timeframe} ({_iso(ts)}) hold a null or non-finite value")
    probability = float(loaded.probability_up(X)[0])
    return Prediction(
        symbol=symbol,
        timeframe=timeframe,
        ts=ts,
        close=float(row["close"]),
        probability=probability,
        model_version=loaded.version,
        model_trained_at=loaded.trained_at,
        label_mode=str(loaded.meta.get("label_mode")),
        label_horizon=int(loaded.meta.get("label_horizon", 0)),
        model=MODEL_NAME,
    )


def current_model_info(settings: Settings) -> dict | None:
    """What /health, the checks and the demo show about the current model; None if there is none.

    Read from the sidecar (cheap; no unpickling). ``trained_at`` is a datetime; metrics
    that were undefined (NaN) are None; ``error`` is set when this installation cannot use
    the model (what :class:`ModelMismatchError` would say).
    """
    path = current_model_path(settings)
    if not path.is_file():
        return None
    sidecar = _sidecar(path)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        try:
            meta = load_current(settings).meta
        except (NoModelError, ModelMismatchError) as exc:
            return {"version": None, "path": str(path), "error": str(exc), "metrics": {}}
    info = dict(meta)
    try:
        check_compatible(meta, path)
    except ModelMismatchError as exc:  # /health shows it; predict_latest would refuse it
        info["error"] = str(exc)
    info["versioned_path"] = meta.get("path")
    info["path"] = str(path)
    info["trained_at"] = parse_iso(meta["trained_at"]) if meta.get("trained_at") else None
    info.setdefault("metrics", {})
    return info
