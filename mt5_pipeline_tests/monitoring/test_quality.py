"""Each data-quality check passes on good data and fails on data built to break it."""

from datetime import timedelta

import pandas as pd
from sqlalchemy import delete, update

from mt5_pipeline.learning.features import update_features
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.monitoring import quality
from mt5_pipeline.signals.queue import enqueue
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import candles, features_m1
from mt5_pipeline_tests.orchestration.test_sensors import _signal
from mt5_pipeline_tests.orchestration_support import minute_now, raw_bar


def _load(url, frame, symbol="EURUSD"):
    ingest_candles(url, symbol, "M1", frame)


def test_ohlc_check(db_url):
    now = minute_now()
    _load(db_url, generate_candles(500, end=now, with_weekends=False))
    assert quality.candles_ohlc_consistent(db_url).passed
    with get_engine(db_url).begin() as conn:  # bypasses the ingest core's validation on purpose
        conn.execute(raw_bar("BROKEN", now, (1.1, 1.0, 1.05, 1.2), ingested_at=now))
    outcome = quality.candles_ohlc_consistent(db_url)
    assert not outcome.passed and outcome.metadata["inconsistent_bars"] == 1


def test_duplicate_check_catches_symbol_spellings(db_url):
    now = minute_now()
    frame = generate_candles(50, end=now, with_weekends=False)
    _load(db_url, frame)
    assert quality.candles_no_duplicates(db_url).passed
    with get_engine(db_url).begin() as conn:
        row = frame.iloc[-1]
        ohlc = (float(row.open), float(row.high), float(row.low), float(row.close))
        conn.execute(raw_bar("eurusd", row["time"].to_pydatetime(), ohlc, ingested_at=now))
    assert not quality.candles_no_duplicates(db_url).passed


def test_gap_check_expects_weekends_and_warns_on_outages(db_url):
    # Ends on a Wednesday, with a real FX weekend inside.
    end = pd.Timestamp("2024-06-12 12:00", tz="UTC").to_pydatetime()
    frame = generate_candles(12_000, end=end, with_weekends=True)
    _load(db_url, frame)
    good = quality.candles_gaps(db_url)
    assert good.passed and good.metadata["EURUSD_weekend_gaps"] >= 1
    # A two-hour outage on a Tuesday.
    cut = (frame["time"] > pd.Timestamp("2024-06-11 08:00", tz="UTC")) & (
        frame["time"] < pd.Timestamp("2024-06-11 10:00", tz="UTC")
    )
    with get_engine(db_url).begin() as conn:
        for ts in frame.loc[cut, "time"]:
            conn.execute(delete(candles).where(candles.c.ts == ts.to_pydatetime()))
    bad = quality.candles_gaps(db_url)
    assert not bad.passed and bad.severity == "WARN" and bad.metadata["long_gaps"] == 1


def test_freshness_check(db_url, settings_for):
    settings = settings_for(db_url)
    now = minute_now()
    _load(db_url, generate_candles(100, end=now - timedelta(minutes=1), with_weekends=False))
    assert quality.candles_fresh(db_url, settings, now=now + timedelta(seconds=5)).passed
    stale = quality.candles_fresh(db_url, settings, now=now + timedelta(hours=1))
    assert not stale.passed and "EURUSD" in stale.description


def test_feature_checks(db_url):
    _load(db_url, generate_candles(1500, end=minute_now(), with_weekends=False))
    update_features(db_url, "EURUSD")
    assert quality.features_finite(db_url).passed
    assert quality.features_match_candles(db_url).passed
    with get_engine(db_url).begin() as conn:
        newest = conn.execute(features_m1.select().order_by(features_m1.c.ts.desc()).limit(2)).all()
        conn.execute(update(features_m1).where(features_m1.c.ts == newest[0].ts).values(rsi_14=float("inf")))
        conn.execute(delete(features_m1).where(features_m1.c.ts == newest[1].ts))
    assert not quality.features_finite(db_url).passed
    assert not quality.features_match_candles(db_url).passed


def test_auc_judgement():
    assert quality.judge_auc({"auc": 0.51, "baseline_auc": 0.5}).passed
    assert quality.judge_auc({"auc": 0.49, "baseline_auc": 0.5}).passed  # within the margin: noise
    weak = quality.judge_auc({"auc": 0.45, "baseline_auc": 0.5})
    assert not weak.passed and weak.severity == "WARN"


def test_pending_past_expiry_check(db_url, settings_for):
    settings = settings_for(db_url)
    now = minute_now()
    assert enqueue(db_url, _signal(now), now=now)
    assert quality.no_pending_past_expiry(settings, now=now).passed
    assert not quality.no_pending_past_expiry(settings, now=now + timedelta(hours=1)).passed
