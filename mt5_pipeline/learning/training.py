"""Training a candidate: data, walk-forward evaluation, backtest, champion comparison, save.

:func:`train_model` runs the steps below in order; each is a function of its own.

1. :func:`build_training_set` reads every symbol's usable feature rows of the timeframe
   and their candles, and labels them (``labels.py``).
2. :func:`cross_validate` evaluates by time with walk-forward folds and a purge
   (``evaluation.py``); the model kept is the one fit on the main split's training part,
   so the metrics in its sidecar describe exactly the estimator that would trade (the
   cost: the newest ``TEST_FRACTION`` is only evaluated on, not learnt from).
3. The main split's evaluation part is backtested (``backtest.py``).
4. :func:`challenge` scores the candidate and the current champion on the same newest
   out-of-sample rows and decides (``promotion.py``).
5. The candidate is saved under its version whatever the decision, recorded in the
   registry (``model_registry.py``), and copied over ``rf_<tf>.pkl`` only if promoted
   (``model_store.py``).

A retrain that raises is recorded as ``failed`` (with the reason) before the error
propagates, so /health and /metrics see it the same day.

The estimator is ``MODEL_KIND``: the seed's RandomForest, or scikit-learn's
HistGradientBoostingClassifier, under the same evaluation and promotion rules.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from mt5_pipeline.clock import iso_z, resolve_now
from mt5_pipeline.learning import model_registry
from mt5_pipeline.learning.backtest import plot_equity, run_backtest
from mt5_pipeline.learning.drift import reference_histograms, signal_reference
from mt5_pipeline.learning.evaluation import (
    DEFAULT_FOLDS,
    TEST_FRACTION,
    Fold,
    classification_metrics,
    walk_forward_folds,
)
from mt5_pipeline.learning.features import feature_symbols, load_feature_rows
from mt5_pipeline.learning.indicators import FEATURE_SET_NAME, FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.learning.labels import LabelSpec, lookahead_bars, make_labels
from mt5_pipeline.learning.model_store import (
    DEFAULT_TIMEFRAME,
    LoadedModel,
    ModelMismatchError,
    NoModelError,
    current_model_path,
    finite_or_none,
    library_versions,
    load_model,
    model_name,
    probability_up,
    publish_champion,
    save_model,
    sidecar_path,
)
from mt5_pipeline.learning.promotion import MIN_COMPARE_ROWS, Decision, decide, window_scores
from mt5_pipeline.settings import Settings

log = logging.getLogger("mt5_pipeline.learning.model")

# Enough for a bootstrap band, small enough for a JSON sidecar (~8 bytes a trade).
MAX_SAVED_TRADE_PIPS = 20_000
# A forest needs some rows per leaf and both classes; fewer rows than this is a set-up problem.
MIN_TRAIN_ROWS = 200


class InsufficientDataError(ValueError):
    """Too few labelled rows (or one class only) to train and evaluate honestly."""


@dataclass
class TrainResult:
    version: str
    path: Path  # the candidate's versioned file (rf_<tf>-<version>.pkl), promoted or not
    trained_at: datetime
    rows: int  # rows the saved estimator was trained on
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
    timeframe: str = DEFAULT_TIMEFRAME
    kind: str = "random_forest"
    decision: Decision | None = None

    @property
    def promoted(self) -> bool:
        return self.decision is not None and self.decision.promoted


def _to_datetime(ns: int) -> datetime:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").to_pydatetime()


# ---- 1. the training set ----------------------------------------------------------------------


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # symbol, ts, features..., label, label_end_ts; sorted by ts then symbol
    candles: dict[str, pd.DataFrame]


def build_training_set(
    settings: Settings,
    symbols: list[str] | None = None,
    timeframe: str = DEFAULT_TIMEFRAME,
    *,
    now: datetime | None = None,
) -> TrainingSet:
    """Usable feature rows with labels, for the symbols (default: every symbol with features).

    Closed bars only: the forming bar is neither a training row nor the future a label
    looks at (its close is not a price yet).
    """
    from mt5_pipeline.bars import closed_only
    from mt5_pipeline.storage.candles import read_candles

    url = settings.database_url
    wanted = sorted({s.upper() for s in symbols}) if symbols else feature_symbols(url, timeframe)
    parts: list[pd.DataFrame] = []
    candles_by_symbol: dict[str, pd.DataFrame] = {}
    for symbol in wanted:
        feats = load_feature_rows(url, [symbol], timeframe, usable_only=True)
        if feats.empty:
            continue
        bars = closed_only(read_candles(url, symbol, timeframe).reset_index(drop=True), timeframe, now=now)
        labels = make_labels(bars, LabelSpec.from_settings(settings, symbol))
        merged = feats.merge(labels, on="ts", how="inner", validate="one_to_one")
        merged = merged[merged["label"].notna() & merged["label_end_ts"].notna()]
        if merged.empty:
            continue
        candles_by_symbol[symbol] = bars
        parts.append(merged[["symbol", "ts", *MODEL_FEATURES, "label", "label_end_ts"]])
    if not parts:
        raise InsufficientDataError(
            f"no usable labelled {timeframe} feature rows for {wanted or 'any symbol'}: ingest candles (more than the warm-up) and materialize features_m1 first"
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


# ---- 2. the estimator and its evaluation ------------------------------------------------------


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


def make_hist_gradient_boosting(settings: Settings, **overrides: Any) -> HistGradientBoostingClassifier:
    params: dict[str, Any] = dict(
        max_iter=settings.hgb_max_iter,
        learning_rate=settings.hgb_learning_rate,
        min_samples_leaf=settings.rf_min_samples_leaf,
        # Early stopping would hold out a random (not time-ordered) tenth of the training
        # rows; a fixed number of rounds keeps the evaluation purely by time.
        early_stopping=False,
        random_state=settings.rf_random_state,
    )
    params.update(overrides)
    return HistGradientBoostingClassifier(**params)


def make_estimator(settings: Settings, **overrides: Any):
    """The MODEL_KIND estimator with its settings."""
    if settings.model_kind == "hist_gradient_boosting":
        return make_hist_gradient_boosting(settings, **overrides)
    return make_forest(settings, **overrides)


def _fold_record(fold: Fold, ts_ns: np.ndarray, metrics: dict) -> dict:
    record: dict[str, Any] = {
        "fold": fold.number,
        "train_rows": int(len(fold.train)),
        "test_rows": int(len(fold.test)),
        "train_end": iso_z(_to_datetime(ts_ns[fold.train[-1]])) if len(fold.train) else None,
        "test_start": iso_z(_to_datetime(ts_ns[fold.test[0]])) if len(fold.test) else None,
        "test_end": iso_z(_to_datetime(ts_ns[fold.test[-1]])) if len(fold.test) else None,
    }
    for key in (
        "auc",
        "accuracy",
        "balanced_accuracy",
        "log_loss",
        "brier",
        "signal_share",
        "signal_hit_rate",
        "baseline_majority_accuracy",
        "baseline_majority_log_loss",
        "baseline_always_buy_hit_rate",
    ):
        value = metrics.get(key, math.nan)
        record[key] = float(value) if value is not None and math.isfinite(value) else None
    return record


def _check_trainable(y: np.ndarray, what: str) -> None:
    if len(y) < MIN_TRAIN_ROWS:
        raise InsufficientDataError(
            f"{what}: only {len(y)} labelled rows (need at least {MIN_TRAIN_ROWS}); ingest more history"
        )
    if len(np.unique(y)) < 2:
        raise InsufficientDataError(f"{what}: every label is {int(y[0])}; the labels need both classes")


@dataclass
class CrossValidation:
    estimator: Any  # fit on the main split's training part
    metrics: dict  # the main split's, plus wf_* summaries and row counts
    test_probability: np.ndarray  # the estimator's on the main split's evaluation part
    folds: list[dict]
    fit_s: float


def cross_validate(
    settings: Settings, X: np.ndarray, y: np.ndarray, ts_ns: np.ndarray, folds: list[Fold]
) -> CrossValidation:
    """Fit and score every walk-forward fold; the last one is the main split."""
    main = folds[-1]
    records: list[dict] = []
    kept = None
    fit_s = 0.0
    for fold in folds:
        if fold is not main and (
            len(fold.train) < MIN_TRAIN_ROWS or len(np.unique(y[fold.train])) < 2 or len(fold.test) == 0
        ):
            records.append(
                {
                    "fold": fold.number,
                    "skipped": True,
                    "train_rows": int(len(fold.train)),
                    "test_rows": int(len(fold.test)),
                }
            )
            continue
        estimator = make_estimator(settings)
        t0 = time.perf_counter()
        estimator.fit(X[fold.train], y[fold.train])
        fit_s += time.perf_counter() - t0
        p = _probability(estimator, X[fold.test])
        fold_metrics = classification_metrics(
            y[fold.test],
            p,
            train_positive_rate=float(y[fold.train].mean()),
            buy_threshold=settings.signal_buy_threshold,
            sell_threshold=settings.signal_sell_threshold,
        )
        records.append(_fold_record(fold, ts_ns, fold_metrics))
        if fold is main:
            kept = (estimator, fold_metrics, p)
    assert kept is not None
    estimator, metrics, test_p = kept
    evaluated = [r for r in records if r.get("auc") is not None]
    aucs = np.array([r["auc"] for r in evaluated], dtype=float)
    accs = np.array([r["accuracy"] for r in evaluated], dtype=float)
    metrics = dict(metrics)
    metrics.update(
        {
            "train_rows": float(len(main.train)),
            "test_rows": float(len(main.test)),
            "embargo_bars": float(lookahead_bars(settings)),
            "train_positive_rate": float(y[main.train].mean()),
            "mean_probability": float(np.mean(test_p)) if len(test_p) else math.nan,
            "wf_folds": float(len(evaluated)),
            "wf_auc_mean": float(aucs.mean()) if len(aucs) else math.nan,
            "wf_auc_min": float(aucs.min()) if len(aucs) else math.nan,
            "wf_auc_std": float(aucs.std()) if len(aucs) else math.nan,
            "wf_accuracy_mean": float(accs.mean()) if len(accs) else math.nan,
        }
    )
    return CrossValidation(estimator, metrics, test_p, records, fit_s)


def _probability(estimator: Any, X: np.ndarray) -> np.ndarray:
    classes = list(estimator.classes_)
    return estimator.predict_proba(X)[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


def feature_importances(estimator: Any) -> dict[str, float]:
    """Impurity importances of a forest; empty for estimators without them (gradient boosting)."""
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        return {}
    return {name: float(v) for name, v in zip(MODEL_FEATURES, values, strict=True)}


def feature_reference(train_frame: pd.DataFrame, X_train: np.ndarray) -> dict:
    """Decile histograms of the training rows, per symbol and pooled (``drift.py`` compares live rows with them).

    Per symbol, because one model serves every market and their volatilities differ: a
    quiet pair would always look drifted against a pool that includes a wild one.
    """
    names = list(MODEL_FEATURES)
    symbols = train_frame["symbol"].to_numpy()
    return {
        "all": reference_histograms(X_train, names),
        "by_symbol": {str(sym): reference_histograms(X_train[symbols == sym], names) for sym in sorted(set(symbols))},
    }


# ---- 4. champion and challenger ------------------------------------------------------------------


def _champion(settings: Settings, timeframe: str) -> tuple[LoadedModel | None, str]:
    """The current champion, or None and why it cannot be compared."""
    try:
        return load_model(current_model_path(settings, timeframe)), ""
    except NoModelError:
        return None, ""
    except ModelMismatchError as exc:
        return (
            None,
            f"the champion cannot be used by this installation ({str(exc).split('. Retrain')[0]}), judged on the baselines alone",
        )


def challenge(
    settings: Settings,
    data: TrainingSet,
    X: np.ndarray,
    y: np.ndarray,
    ts_ns: np.ndarray,
    main: Fold,
    cv: CrossValidation,
    main_backtest: dict,
    *,
    timeframe: str,
    force: bool,
) -> Decision:
    """Score the candidate and the champion on the same newest out-of-sample rows and decide."""
    champion, note = _champion(settings, timeframe)
    positions = main.test
    champion_version = champion.version if champion is not None else None
    if champion is not None:
        start = (champion.meta.get("evaluation_window") or [None])[0] or (
            champion.meta.get("train_window") or [None, None]
        )[1]
        start_ns = pd.Timestamp(start).as_unit("ns").value if start else None
        if start_ns is not None:
            positions = main.test[ts_ns[main.test] >= start_ns]
        if len(positions) < MIN_COMPARE_ROWS:
            note = (
                f"champion {champion.version} has only {len(positions)} out-of-sample rows in the candidate's evaluation part "
                f"(need {MIN_COMPARE_ROWS}), judged on the baselines alone"
            )
            champion, positions = None, main.test
    train_rate = float(cv.metrics["train_positive_rate"])
    rows = data.frame.iloc[positions]
    if len(positions) == len(main.test):
        m = cv.metrics
        candidate = {
            "auc": m["auc"],
            "log_loss": m["log_loss"],
            "net_pips": float(main_backtest["total_pips"]),
            "trades": float(main_backtest["trades"]),
            "baseline_auc": m["baseline_auc"],
            "baseline_log_loss": m["baseline_majority_log_loss"],
            "baseline_net_pips": float(main_backtest["baseline_random_total_pips"]),
            "rows": float(len(positions)),
        }
    else:
        p = cv.test_probability[np.searchsorted(main.test, positions)]
        candidate = window_scores(settings, y[positions], p, rows, data.candles, train_positive_rate=train_rate)
    champion_scores = None
    if champion is not None:
        champion_scores = window_scores(
            settings,
            y[positions],
            champion.probability_up(X[positions]),
            rows,
            data.candles,
            train_positive_rate=train_rate,
        )
    window = {
        "start": iso_z(_to_datetime(ts_ns[positions[0]])),
        "end": iso_z(_to_datetime(ts_ns[positions[-1]])),
        "rows": int(len(positions)),
    }
    return decide(
        settings,
        candidate,
        champion_scores,
        champion_version=champion_version,
        champion_note=note,
        force=force,
        window=window,
    )


# ---- the whole retrain -----------------------------------------------------------------------------


def train_model(
    settings: Settings,
    symbols: list[str] | None = None,
    *,
    now: datetime | None = None,
    walk_forward: int = DEFAULT_FOLDS,
    timeframe: str = DEFAULT_TIMEFRAME,
    force: bool | None = None,
) -> TrainResult:
    """Train a candidate for the timeframe, evaluate it, challenge the champion, save and register it.

    The candidate replaces ``rf_<tf>.pkl`` only if promoted (``result.decision``). A
    retrain that raises is registered as failed before the error propagates.
    """
    trained_at = resolve_now(now)
    try:
        return _train(
            settings,
            symbols,
            trained_at=trained_at,
            walk_forward=walk_forward,
            timeframe=timeframe,
            force=settings.promotion_force if force is None else force,
        )
    except Exception as exc:
        try:
            model_registry.record_failure(
                settings,
                timeframe,
                trained_at,
                f"{type(exc).__name__}: {exc}",
                kind=settings.model_kind,
                label_mode=settings.label_mode,
            )
        except Exception as record_exc:  # the original error matters more
            log.error("could not record the failed retrain: %s", record_exc)
        raise


def _train(
    settings: Settings,
    symbols: list[str] | None,
    *,
    trained_at: datetime,
    walk_forward: int,
    timeframe: str,
    force: bool,
) -> TrainResult:
    started = time.perf_counter()
    name = model_name(timeframe)
    data = build_training_set(settings, symbols, timeframe, now=trained_at)
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

    cv = cross_validate(settings, X, y, ts_ns, folds)
    metrics = cv.metrics

    test_frame = frame.iloc[main.test]
    bt = run_backtest(
        data.candles,
        pd.DataFrame(
            {
                "symbol": test_frame["symbol"].to_numpy(),
                "ts": test_frame["ts"].array,
                "probability": cv.test_probability,
            }
        ),
        settings,
    )
    backtest = dict(bt.summary)

    decision = challenge(settings, data, X, y, ts_ns, main, cv, backtest, timeframe=timeframe, force=force)

    digest = data_hash(frame)
    model_dir = Path(settings.model_dir)
    version = model_registry.unique_version(settings, f"{trained_at:%Y%m%dT%H%M%SZ}-{digest[:8]}", timeframe)
    versioned = model_dir / f"{name}-{version}.pkl"
    equity_png: Path | None = model_dir / f"{name}-{version}-equity.png"
    try:
        plot_equity(bt, equity_png, title=f"{name} {version}: out-of-sample backtest")
    except Exception as exc:  # a plot must never cost a trained model
        log.warning("equity curve not drawn: %s", exc)
        equity_png = None

    train_ts = ts_ns[main.train]
    test_ts = ts_ns[main.test]
    window = (_to_datetime(train_ts.min()), _to_datetime(train_ts.max()))
    evaluation_window = (_to_datetime(test_ts.min()), _to_datetime(test_ts.max()))
    symbols_used = sorted(frame["symbol"].unique().tolist())
    estimator = cv.estimator
    importances = feature_importances(estimator)
    meta = {
        "model": name,
        "version": version,
        "trained_at": iso_z(trained_at),
        "symbols": symbols_used,
        "timeframe": timeframe,
        "kind": settings.model_kind,
        "train_window": [iso_z(window[0]), iso_z(window[1])],
        "evaluation_window": [iso_z(evaluation_window[0]), iso_z(evaluation_window[1])],
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
        "params": {k: v for k, v in estimator.get_params().items() if isinstance(v, (int, float, str, type(None)))},
        "metrics": metrics,
        "walk_forward": cv.folds,
        "backtest": backtest,
        # Each backtest trade's net pips, by exit time: what live trades are judged
        # against (live_performance's bootstrap band); the newest if there are very many.
        "execution_policy": {"entry": settings.entry_policy, "max_hold_bars": settings.label_max_hold_bars},
        "backtest_trade_pips": [
            round(float(x), 2)
            for x in bt.trades.sort_values("exit_ts", kind="stable")["pips"].to_numpy()[-MAX_SAVED_TRADE_PIPS:]
        ],
        "feature_importances": importances,
        # What the drift checks compare the live features and signals with.
        "feature_reference": feature_reference(frame.iloc[main.train], X[main.train]),
        # Per symbol, as the features: one symbol's normal BUY/SELL mix is not another's.
        "signal_reference": signal_reference(
            test_frame["symbol"].to_numpy(),
            cv.test_probability,
            settings.signal_buy_threshold,
            settings.signal_sell_threshold,
        ),
        "promotion": {"decision": decision.decision, "reason": decision.reason, **decision.scores()},
        "library_versions": library_versions(),
        "sklearn_version": sklearn.__version__,
        "data_hash": digest,
        "path": str(versioned),
        "equity_png": str(equity_png) if equity_png else None,
    }
    save_model(estimator, meta, versioned)
    if decision.promoted:
        # The file first: a champion row never points at a model that is not in place.
        publish_champion(settings, versioned, timeframe)
    model_registry.record_candidate(
        settings,
        meta,
        versioned,
        window,
        trained_at,
        decision=decision.decision,
        reason=decision.reason,
        scores=decision.scores(),
        champion_version=decision.champion_version,
    )
    total_s = time.perf_counter() - started
    log.info(
        "trained %s %s on %d rows (%s); AUC %.4f vs baseline 0.5; %s",
        name,
        version,
        len(main.train),
        ", ".join(symbols_used),
        metrics.get("auc", math.nan),
        decision.reason,
    )
    return TrainResult(
        version=version,
        path=versioned,
        trained_at=trained_at,
        rows=int(len(main.train)),
        symbols=symbols_used,
        window=window,
        metrics=metrics,
        feature_importances=importances,
        walk_forward=finite_or_none(cv.folds),
        backtest=backtest,
        equity_png=equity_png,
        feature_set_version=FEATURE_SET_VERSION,
        label_mode=settings.label_mode,
        sidecar_path=sidecar_path(versioned),
        evaluation_window=evaluation_window,
        data_hash=digest,
        timings={"load_s": loaded_s, "fit_s": cv.fit_s, "total_s": total_s},
        timeframe=timeframe,
        kind=settings.model_kind,
        decision=decision,
    )


__all__ = [
    "CrossValidation",
    "InsufficientDataError",
    "MIN_TRAIN_ROWS",
    "TrainResult",
    "TrainingSet",
    "build_training_set",
    "challenge",
    "cross_validate",
    "data_hash",
    "feature_importances",
    "make_estimator",
    "make_forest",
    "make_hist_gradient_boosting",
    "probability_up",
    "train_model",
]
