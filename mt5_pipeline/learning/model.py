"""rf_<tf> serving: the champion's prediction for a symbol's newest closed bar.

Serving only: training is ``training.py`` (callers that train import it there), files and
the per-process cache are ``model_store.py``, the candidates' table ``model_registry.py``.

:func:`predict_latest` keeps the loaded model per process and reloads it when
``rf_m1.pkl`` is replaced. Training uses every core; inference sets ``n_jobs=1`` and asks
the trees directly (:func:`forest_probability_up`), one row at a time through the flat
forest (:mod:`mt5_pipeline.learning.flat_forest`: every tree walked at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import RowMapping, select

from mt5_pipeline.bars import closed_cutoff
from mt5_pipeline.clock import iso_z, parse_iso
from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.learning.model_store import (
    DEFAULT_TIMEFRAME,
    HOW_TO_TRAIN,
    LoadedModel,
    ModelMismatchError,
    current_model_path,
    load_current,
    model_name,
)
from mt5_pipeline.learning.prediction import Prediction
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.candles import newest_candle_ts
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import features_m1

TIMEFRAME = DEFAULT_TIMEFRAME


class NoFeaturesError(LookupError):
    """No usable feature row for the symbol (nothing ingested yet, or still warming up)."""


class ModelTimeframeError(ValueError):
    """No model is kept for that timeframe; ``available`` lists the timeframes that have one."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


# ---- serving ------------------------------------------------------------------------------

_LATEST_COLUMNS = ("ts", "close", "usable", "feature_set_version", *MODEL_FEATURES)


def model_timeframes(settings: Settings) -> list[str]:
    """Timeframes (of TIMEFRAMES) whose champion exists: the ones signals can be made for."""
    return [tf for tf in settings.timeframes if current_model_path(settings, tf).is_file()]


def check_timeframe(settings: Settings, timeframe: str) -> None:
    """A model only predicts the timeframe it was trained on: M1 patterns say nothing about H1 bars.

    A timeframe outside TIMEFRAMES has no model and never will: ModelTimeframeError (the
    API's 422). One inside it that is not trained yet is NoModelError (503, train it).
    """
    if timeframe not in settings.timeframes:
        have = model_timeframes(settings)
        raise ModelTimeframeError(
            f"no model for {timeframe}: models are kept for TIMEFRAMES={','.join(settings.timeframes)} "
            f"(timeframes with a model: {', '.join(have) or 'none yet'}); add {timeframe} to TIMEFRAMES to train one",
            have,
        )


def predict_latest(
    settings: Settings, symbol: str, timeframe: str = "M1", *, now: datetime | None = None, bar: datetime | None = None
) -> Prediction:
    """Probability for the symbol's newest CLOSED bar (see :mod:`mt5_pipeline.bars`), from
    the timeframe's champion (``rf_<tf>.pkl``).

    Feature rows are only written for closed bars; the cutoff here also guards against
    rows an older version wrote for a forming bar. ModelTimeframeError for a timeframe no
    model is kept for. `bar`: the ready bar (:func:`mt5_pipeline.storage.candles.ready_bar`): never
    a newer one is predicted (its final version may still come); an older one when the
    features have not caught up with it yet (the Dagster path computes them in its own run).
    """

    loaded = _champion(settings, timeframe)
    url = settings.database_url
    cutoff = closed_cutoff(timeframe, now=now, newest_open=newest_candle_ts(url, symbol, timeframe))
    if bar is not None:
        cutoff = min(cutoff, bar)
    f = features_m1.c
    with get_engine(url).connect() as conn:
        row = (
            conn.execute(
                select(*(f[c] for c in _LATEST_COLUMNS))
                .where(f.symbol == symbol, f.timeframe == timeframe, f.ts <= cutoff)
                .order_by(f.ts.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NoFeaturesError(
            f"no features for a closed {symbol} {timeframe} bar: ingest its candles and materialize "
            f"features_{timeframe.lower()}"
        )
    return _predict(loaded, symbol, timeframe, row)


def predict_row(settings: Settings, symbol: str, timeframe: str, row: Mapping[str, Any]) -> Prediction:
    """The prediction from a feature row already in hand (the live worker's, computed from
    its tail and just stored): the same model, checks and values as :func:`predict_latest`
    reading that row back, without the read. ``row``: ts, close, usable,
    feature_set_version and the model's features (NaN or None where undefined)."""
    return _predict(_champion(settings, timeframe), symbol, timeframe, row)


def _champion(settings: Settings, timeframe: str) -> LoadedModel:
    check_timeframe(settings, timeframe)
    loaded = load_current(settings, timeframe)
    trained_on = str(loaded.meta.get("timeframe") or DEFAULT_TIMEFRAME)
    if trained_on != timeframe:  # a file copied by hand under another timeframe's name
        raise ModelMismatchError(
            f"{current_model_path(settings, timeframe)} was trained on {trained_on} bars, not {timeframe}; "
            f"{HOW_TO_TRAIN}"
        )
    return loaded


def _predict(loaded: LoadedModel, symbol: str, timeframe: str, row: RowMapping | Mapping[str, Any]) -> Prediction:
    if str(row["feature_set_version"]) != FEATURE_SET_VERSION:
        raise NoFeaturesError(
            f"the newest features of {symbol} {timeframe} are feature set v{row['feature_set_version']}, this code "
            "computes "
            f"v{FEATURE_SET_VERSION}: recompute features_m1 (update_features with full=True)"
        )
    ts = parse_iso(row["ts"])
    if not row["usable"]:
        raise NoFeaturesError(
            f"the newest bar of {symbol} {timeframe} ({iso_z(ts)}) is not usable: the symbol needs more history "
            "(warm-up) or a feature is undefined there"
        )
    X = np.array(
        [[np.nan if row[c] is None else float(row[c]) for c in loaded.meta["feature_names"]]], dtype=np.float64
    )
    if not np.isfinite(X).all():
        raise NoFeaturesError(
            f"the newest features of {symbol} {timeframe} ({iso_z(ts)}) hold a null or non-finite value"
        )
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
        model=model_name(timeframe),
    )
