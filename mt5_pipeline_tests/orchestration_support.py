"""Shared set-up for the Dagster-layer tests: a database with fresh candles, and resources."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
from sqlalchemy import Insert, insert

from mt5_pipeline.definitions import build_defs
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.orchestration.assets import features_m1
from mt5_pipeline.orchestration.checks import asset_checks
from mt5_pipeline.orchestration.resources import resources_for
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.schema import candles

# Small and fast: enough bars for warm-up, a split with embargo and a few folds.
# Forced promotion: a few thousand random-walk bars carry no edge a model must beat, and
# these tests are about the graph; promotion has its own tests (test_promotion.py).
FAST_MODEL = {"RF_N_ESTIMATORS": 10, "RF_MAX_DEPTH": 6, "RF_MIN_SAMPLES_LEAF": 20, "PROMOTION_FORCE": "true"}
# A band this narrow turns every probability into a BUY or a SELL, so tests that need a
# queued signal do not depend on what the forest happens to predict; a wide TTL, so they
# do not depend on where in the minute they run either (a bar is "too late" after its
# close + TTL).
ALWAYS_DECIDE = {"SIGNAL_BUY_THRESHOLD": 0.5, "SIGNAL_SELL_THRESHOLD": 0.4999, "SIGNAL_TTL_SECONDS": 600}


def minute_now() -> datetime:
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


def load_symbols(url: str, symbols: dict[str, int], *, end: datetime | None = None, bars: int = 4000) -> None:
    """`bars` closed M1 bars per symbol, the newest opening at `end` (default: the last closed minute)."""
    for seed, (symbol, _) in enumerate(symbols.items()):
        frame = generate_candles(
            bars,
            end=end or minute_now() - timedelta(minutes=1),
            seed=seed,
            with_weekends=False,
            start_price=1.1 + seed * 0.2,
        )
        ingest_candles(url, symbol, "M1", frame)


def defs_for(settings: Settings, **overrides) -> dg.Definitions:
    return build_defs(settings, resources_for(settings, **overrides))


def materialize_features(instance: dg.DagsterInstance, resources: dict, symbol: str = "EURUSD"):
    """features_m1 for one symbol's partition, with its asset checks."""
    return dg.materialize(
        [features_m1, *asset_checks],
        partition_key=symbol,
        instance=instance,
        resources=resources,
        selection=[features_m1],
    )


def raw_bar(
    symbol: str, ts: datetime, ohlc: tuple[float, float, float, float], *, ingested_at: datetime, spread: int = 1
) -> Insert:
    """An INSERT of one M1 bar as given, past the ingest core's validation: how a test breaks
    the data a check watches on purpose."""
    open_, high, low, close = ohlc
    return insert(candles).values(
        symbol=symbol,
        timeframe="M1",
        ts=ts,
        open=open_,
        high=high,
        low=low,
        close=close,
        tick_volume=1,
        spread=spread,
        real_volume=0,
        ingested_at=ingested_at,
    )
