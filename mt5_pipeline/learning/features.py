"""features_m1: the features of every closed bar, stored, and kept up to date incrementally.

The formulas live in :mod:`mt5_pipeline.learning.indicators`; this module decides which bars to
(re)compute; :mod:`mt5_pipeline.storage.features` stores and reads the rows. Rules,
each tested:

- **Closed bars only.** The forming bar gets no row (:mod:`mt5_pipeline.bars`): a feature
  row is never computed from a partial bar; it is computed once the bar has closed.
- **Incremental.** :func:`update_features` recomputes from the earliest new or changed
  bar onward, reading ``LOOKBACK_BARS`` bars before it. (13/14)^500 is below 1e-16, so
  the result equals a full recomputation to far better than 1e-9. ``usable`` agrees too:
  if the look-back is full the bars written have at least ``LOOKBACK_BARS`` >=
  ``WARMUP_BARS`` predecessors; if it is short it holds the whole history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from mt5_pipeline.bars import closed_cutoff
from mt5_pipeline.clock import resolve_now
from mt5_pipeline.learning.indicators import (
    FEATURE_SET_VERSION,
    FLOAT_COLUMNS,
    WARMUP_BARS,
    compute_features,
)
from mt5_pipeline.storage import features as stored
from mt5_pipeline.storage.candles import list_symbols, newest_candle_ts, read_candles
from mt5_pipeline.storage.features import feature_symbols

log = logging.getLogger(__name__)

# 500, not more: every live bar reads and recomputes this many, and beyond it the
# recursions' seeds weigh less than 1e-16.
LOOKBACK_BARS = 500
# Candles committed out of order (a slow transaction whose ingested_at is older than a
# faster one's) are still found if they are this much older than the watermark.
WATERMARK_MARGIN = timedelta(seconds=60)

assert WARMUP_BARS <= LOOKBACK_BARS
assert stored.FLOAT_COLUMNS == FLOAT_COLUMNS  # the table holds exactly what the formulas compute


# ---- which bars to (re)compute --------------------------------------------------------------


@dataclass
class FeatureUpdate:
    symbol: str
    timeframe: str
    rows_written: int
    newest_ts: datetime | None
    lookback_bars: int  # bars read before the first recomputed one
    recomputed_from: datetime | None  # first bar written; None when nothing was stale
    full: bool


def first_stale_bar(
    database_url: str, symbol: str, timeframe: str = "M1", *, closed_until: datetime | None = None
) -> tuple[datetime | None, bool]:
    """(open time of the earliest bar whose features are missing or stale, whether to recompute everything).

    Only closed bars count (``ts <= closed_until``, see :mod:`mt5_pipeline.bars`): the
    forming bar gets no feature row, so a feature row is never computed from a partial bar.

    Stale: the candle's ``ingested_at`` differs from the ``source_ingested_at`` its
    features were computed from (ingest re-stamps a bar it replaced). Only candles stamped
    after the watermark are compared, through the (symbol, timeframe, ingested_at) index:
    the watermark is the newest feature row's ``source_ingested_at`` minus
    ``WATERMARK_MARGIN``, since every run computes up to the newest bar it saw, and a bar
    changed after that run was stamped after that bar was (less a slow commit's lag).
    Bars newer than every feature row are stale whatever their stamp (a clock that went back).
    """
    newest = stored.newest_feature(database_url, symbol, timeframe)
    if newest is None or newest.feature_set_version != FEATURE_SET_VERSION:
        return None, True
    start = stored.first_stale_candle(
        database_url,
        symbol,
        timeframe,
        version=FEATURE_SET_VERSION,
        stamped_since=newest.source_ingested_at - WATERMARK_MARGIN,
        after=newest.ts,
        closed_until=closed_until,
    )
    return start, False


def update_features(
    database_url: str,
    symbol: str,
    timeframe: str = "M1",
    *,
    full: bool = False,
    now: datetime | None = None,
) -> FeatureUpdate:
    """Compute and store the features of new or changed bars (all bars when ``full``).

    Incremental: recompute from the earliest stale bar onward (see :func:`first_stale_bar`)
    with ``LOOKBACK_BARS`` bars before it; a full run also deletes feature rows whose
    candle is gone. Only closed bars get features (``now`` decides which bar is still
    forming). Safe to call from several processes at once.
    """
    with stored.one_writer(database_url, symbol, timeframe):
        return _update_features(database_url, symbol, timeframe, full=full, now=now)


def _update_features(
    database_url: str, symbol: str, timeframe: str, *, full: bool, now: datetime | None
) -> FeatureUpdate:
    computed_at = resolve_now(now)
    closed_until = closed_cutoff(
        timeframe, now=computed_at, newest_open=newest_candle_ts(database_url, symbol, timeframe)
    )
    start: datetime | None = None
    if not full:
        start, full = first_stale_bar(database_url, symbol, timeframe, closed_until=closed_until)
        if start is None and not full:
            return FeatureUpdate(
                symbol, timeframe, 0, stored.newest_ts(database_url, symbol, timeframe), 0, None, False
            )

    if full:
        bars = read_candles(database_url, symbol, timeframe, end=closed_until)
        lookback = 0
    else:
        assert start is not None
        # Bounds are inclusive and bar times are whole seconds: a microsecond before `start`
        # is the bar before it.
        before = read_candles(
            database_url, symbol, timeframe, end=start - timedelta(microseconds=1), last_n=LOOKBACK_BARS
        )
        rest = read_candles(database_url, symbol, timeframe, start=start, end=closed_until)
        lookback = len(before)
        bars = pd.concat([before, rest], ignore_index=True) if lookback else rest

    feats = compute_features(bars, timeframe=timeframe)
    out = feats.iloc[lookback:].reset_index(drop=True) if lookback else feats
    stored.replace_rows(
        database_url,
        symbol,
        timeframe,
        out,
        start=None if full else start,
        version=FEATURE_SET_VERSION,
        computed_at=computed_at,
    )
    newest = out["ts"].iloc[-1].to_pydatetime() if len(out) else stored.newest_ts(database_url, symbol, timeframe)
    first = out["ts"].iloc[0].to_pydatetime() if len(out) else None
    log.info(
        "features %s %s: %d rows from %s (look-back %d bars, full=%s)",
        symbol,
        timeframe,
        len(out),
        first,
        lookback,
        full,
    )
    return FeatureUpdate(symbol, timeframe, int(len(out)), newest, int(lookback), first, bool(full))


def update_all_features(database_url: str, timeframe: str = "M1") -> list[FeatureUpdate]:
    """`update_features` for every symbol with candles in the timeframe (the seed's prepare_dataset)."""
    return [update_features(database_url, symbol, tf) for symbol, tf in list_symbols(database_url, timeframe)]


def load_feature_rows(
    database_url: str,
    symbols: list[str] | None = None,
    timeframe: str = "M1",
    usable_only: bool = True,
) -> pd.DataFrame:
    """Feature rows sorted by symbol, ts: symbol, timeframe, ts, raw levels, features,
    after_gap, usable, feature_set_version, source_ingested_at, computed_at.

    ``usable_only`` keeps the rows a model may learn from: usable and of this code's
    feature-set version. NULLs (warm-up) come back as NaN.
    """
    wanted = symbols if symbols is not None else feature_symbols(database_url, timeframe)
    return stored.read_rows(database_url, wanted, timeframe, version=FEATURE_SET_VERSION, usable_only=usable_only)
