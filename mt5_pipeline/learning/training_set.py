"""The rows a model learns from: every symbol's usable feature rows of a timeframe, joined
with their labels (``labels.py``), on closed bars only; their fingerprint; and the check
that there are enough of them to train and evaluate honestly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from mt5_pipeline.bars import closed_only
from mt5_pipeline.learning.features import load_feature_rows
from mt5_pipeline.learning.indicators import MODEL_FEATURES
from mt5_pipeline.learning.labels import LabelSpec, make_labels
from mt5_pipeline.learning.model_store import DEFAULT_TIMEFRAME
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.candles import read_candles
from mt5_pipeline.storage.features import feature_symbols

# A forest needs some rows per leaf and both classes; fewer rows than this is a set-up problem.
MIN_TRAIN_ROWS = 200


class InsufficientDataError(ValueError):
    """Too few labelled rows (or one class only) to train and evaluate honestly."""


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # symbol, ts, features..., label, label_end_ts; sorted by ts then symbol
    candles: dict[str, pd.DataFrame]


def ns_to_datetime(ns: int) -> datetime:
    """A training row's time (nanoseconds since the epoch, UTC) as an aware datetime."""
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").to_pydatetime()


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
            f"no usable labelled {timeframe} feature rows for {wanted or 'any symbol'}: "
            "ingest candles (more than the warm-up) and materialize features_m1 first"
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


def check_trainable(y: np.ndarray, what: str) -> None:
    if len(y) < MIN_TRAIN_ROWS:
        raise InsufficientDataError(
            f"{what}: only {len(y)} labelled rows (need at least {MIN_TRAIN_ROWS}); ingest more history"
        )
    if len(np.unique(y)) < 2:
        raise InsufficientDataError(f"{what}: every label is {int(y[0])}; the labels need both classes")
