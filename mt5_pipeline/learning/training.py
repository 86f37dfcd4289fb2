"""Training a candidate: data, walk-forward evaluation, backtest, champion comparison, save.

:func:`train_model` runs the steps below in order; each is a function of its own.

1. :func:`build_training_set` reads every symbol's usable feature rows of the timeframe
   and their candles, and labels them (``labels.py``; ``training_set.py``).
2. :func:`cross_validate` evaluates by time with walk-forward folds and a purge
   (``evaluation.py``); the model kept is the one fit on the main split's training part,
   so the metrics in its sidecar describe exactly the estimator that would trade (the
   cost: the newest ``TEST_FRACTION`` is only evaluated on, not learnt from;
   ``cross_validation.py``, the estimators in ``estimators.py``).
3. The main split's evaluation part is backtested (``backtest.py``).
4. :func:`challenge` scores the candidate and the current champion on the same newest
   out-of-sample rows and decides (``promotion.py``; ``challenge.py``).
5. The candidate is saved under its version whatever the decision, recorded in the
   registry (``model_registry.py``), and copied over ``rf_<tf>.pkl`` only if promoted
   (``model_store.py``).

A retrain that raises is recorded as ``failed`` (with the reason) before the error
propagates, so /health and /metrics see it the same day.

The estimator is ``MODEL_KIND``: the seed's RandomForest, or scikit-learn's
HistGradientBoostingClassifier, under the same evaluation and promotion rules.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn

from mt5_pipeline.clock import iso_z, resolve_now
from mt5_pipeline.learning import model_registry
from mt5_pipeline.learning.backtest import BacktestResult, plot_equity, run_backtest
from mt5_pipeline.learning.challenge import challenge
from mt5_pipeline.learning.cross_validation import CrossValidation, cross_validate
from mt5_pipeline.learning.drift import reference_histograms, signal_reference
from mt5_pipeline.learning.estimators import (
    feature_importances,
    make_estimator,
    make_forest,
    make_hist_gradient_boosting,
)
from mt5_pipeline.learning.evaluation import DEFAULT_FOLDS, TEST_FRACTION, Fold, walk_forward_folds
from mt5_pipeline.learning.indicators import FEATURE_SET_NAME, FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.learning.labels import lookahead_bars
from mt5_pipeline.learning.model_store import (
    DEFAULT_TIMEFRAME,
    finite_or_none,
    library_versions,
    model_name,
    probability_up,
    publish_champion,
    save_model,
    sidecar_path,
)
from mt5_pipeline.learning.promotion import Decision
from mt5_pipeline.learning.training_set import (
    MIN_TRAIN_ROWS,
    InsufficientDataError,
    TrainingSet,
    build_training_set,
    check_trainable,
    data_hash,
    ns_to_datetime,
)
from mt5_pipeline.settings import Settings

log = logging.getLogger("mt5_pipeline.learning.model")

# Enough for a bootstrap band, small enough for a JSON sidecar (~8 bytes a trade).
MAX_SAVED_TRADE_PIPS = 20_000


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


# ---- its steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """The training set as arrays, cut into walk-forward folds; the last fold is the main split."""

    X: np.ndarray
    y: np.ndarray
    ts_ns: np.ndarray
    folds: list[Fold]

    @property
    def main(self) -> Fold:
        return self.folds[-1]

    def _window(self, positions: np.ndarray) -> tuple[datetime, datetime]:
        ts = self.ts_ns[positions]
        return ns_to_datetime(ts.min()), ns_to_datetime(ts.max())

    @property
    def train_window(self) -> tuple[datetime, datetime]:
        return self._window(self.main.train)

    @property
    def evaluation_window(self) -> tuple[datetime, datetime]:
        return self._window(self.main.test)


def _split(frame: pd.DataFrame, walk_forward: int) -> _Split:
    X = np.ascontiguousarray(frame[list(MODEL_FEATURES)].to_numpy(dtype=np.float32))
    y = frame["label"].to_numpy(dtype=np.int64)
    ts_ns = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    end_ns = pd.DatetimeIndex(frame["label_end_ts"]).as_unit("ns").asi8
    split = _Split(X, y, ts_ns, walk_forward_folds(ts_ns, end_ns, walk_forward, TEST_FRACTION))
    check_trainable(y[split.main.train], "training part")
    if len(split.main.test) == 0:
        raise InsufficientDataError("the evaluation part is empty; ingest more history")
    return split


def _backtest(settings: Settings, data: TrainingSet, split: _Split, cv: CrossValidation) -> BacktestResult:
    """The main split's evaluation part, traded on the candidate's probabilities."""
    test_frame = data.frame.iloc[split.main.test]
    predictions = pd.DataFrame(
        {
            "symbol": test_frame["symbol"].to_numpy(),
            "ts": test_frame["ts"].array,
            "probability": cv.test_probability,
        }
    )
    return run_backtest(data.candles, predictions, settings)


@dataclass(frozen=True)
class _Files:
    version: str
    path: Path  # rf_<tf>-<version>.pkl
    equity_png: Path | None  # None when the plot could not be drawn


def _files(settings: Settings, timeframe: str, trained_at: datetime, digest: str, bt: BacktestResult) -> _Files:
    """The candidate's version and file names, and its equity curve drawn."""
    name = model_name(timeframe)
    model_dir = Path(settings.model_dir)
    version = model_registry.unique_version(settings, f"{trained_at:%Y%m%dT%H%M%SZ}-{digest[:8]}", timeframe)
    equity_png = model_dir / f"{name}-{version}-equity.png"
    try:
        plot_equity(bt, equity_png, title=f"{name} {version}: out-of-sample backtest")
    except Exception as exc:  # a plot must never cost a trained model
        log.warning("equity curve not drawn: %s", exc)
        return _Files(version, model_dir / f"{name}-{version}.pkl", None)
    return _Files(version, model_dir / f"{name}-{version}.pkl", equity_png)


def _sidecar(
    settings: Settings,
    data: TrainingSet,
    split: _Split,
    cv: CrossValidation,
    bt: BacktestResult,
    backtest: dict,
    decision: Decision,
    files: _Files,
    *,
    timeframe: str,
    trained_at: datetime,
    digest: str,
) -> dict:
    """Everything saved beside the estimator: what it learnt from, how it scored, what the
    drift checks and the live-performance band compare with, and the decision."""
    frame, main = data.frame, split.main
    window, evaluation_window = split.train_window, split.evaluation_window
    symbols_used = sorted(frame["symbol"].unique().tolist())
    return {
        "model": model_name(timeframe),
        "version": files.version,
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
        "params": {k: v for k, v in cv.estimator.get_params().items() if isinstance(v, (int, float, str, type(None)))},
        "metrics": cv.metrics,
        "walk_forward": cv.folds,
        "backtest": backtest,
        "execution_policy": {"entry": settings.entry_policy, "max_hold_bars": settings.label_max_hold_bars},
        # Each backtest trade's net pips, by exit time: what live trades are judged
        # against (live_performance's bootstrap band); the newest if there are very many.
        "backtest_trade_pips": [
            round(float(x), 2)
            for x in bt.trades.sort_values("exit_ts", kind="stable")["pips"].to_numpy()[-MAX_SAVED_TRADE_PIPS:]
        ],
        "feature_importances": feature_importances(cv.estimator),
        # What the drift checks compare the live features and signals with.
        "feature_reference": feature_reference(frame.iloc[main.train], split.X[main.train]),
        # Per symbol, as the features: one symbol's normal BUY/SELL mix is not another's.
        "signal_reference": signal_reference(
            frame.iloc[main.test]["symbol"].to_numpy(),
            cv.test_probability,
            settings.signal_buy_threshold,
            settings.signal_sell_threshold,
        ),
        "promotion": {"decision": decision.decision, "reason": decision.reason, **decision.scores()},
        "library_versions": library_versions(),
        "sklearn_version": sklearn.__version__,
        "data_hash": digest,
        "path": str(files.path),
        "equity_png": str(files.equity_png) if files.equity_png else None,
    }


def _save(
    settings: Settings,
    cv: CrossValidation,
    meta: dict,
    files: _Files,
    decision: Decision,
    split: _Split,
    *,
    timeframe: str,
    trained_at: datetime,
) -> None:
    """The versioned file always, the champion's file if promoted, and the registry row."""
    save_model(cv.estimator, meta, files.path)
    if decision.promoted:
        # The file first: a champion row never points at a model that is not in place.
        publish_champion(settings, files.path, timeframe)
    model_registry.record_candidate(
        settings,
        meta,
        files.path,
        split.train_window,
        trained_at,
        decision=decision.decision,
        reason=decision.reason,
        scores=decision.scores(),
        champion_version=decision.champion_version,
    )


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
    data = build_training_set(settings, symbols, timeframe, now=trained_at)
    loaded_s = time.perf_counter() - started
    split = _split(data.frame, walk_forward)
    cv = cross_validate(settings, split.X, split.y, split.ts_ns, split.folds)
    bt = _backtest(settings, data, split, cv)
    backtest = dict(bt.summary)
    decision = challenge(
        settings, data, split.X, split.y, split.ts_ns, split.main, cv, backtest, timeframe=timeframe, force=force
    )
    digest = data_hash(data.frame)
    files = _files(settings, timeframe, trained_at, digest, bt)
    meta = _sidecar(
        settings,
        data,
        split,
        cv,
        bt,
        backtest,
        decision,
        files,
        timeframe=timeframe,
        trained_at=trained_at,
        digest=digest,
    )
    _save(settings, cv, meta, files, decision, split, timeframe=timeframe, trained_at=trained_at)
    total_s = time.perf_counter() - started
    log.info(
        "trained %s %s on %d rows (%s); AUC %.4f vs baseline 0.5; %s",
        meta["model"],
        files.version,
        len(split.main.train),
        ", ".join(meta["symbols"]),
        cv.metrics.get("auc", math.nan),
        decision.reason,
    )
    return TrainResult(
        version=files.version,
        path=files.path,
        trained_at=trained_at,
        rows=int(len(split.main.train)),
        symbols=meta["symbols"],
        window=split.train_window,
        metrics=cv.metrics,
        feature_importances=meta["feature_importances"],
        walk_forward=finite_or_none(cv.folds),
        backtest=backtest,
        equity_png=files.equity_png,
        feature_set_version=FEATURE_SET_VERSION,
        label_mode=settings.label_mode,
        sidecar_path=sidecar_path(files.path),
        evaluation_window=split.evaluation_window,
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
