"""MN1 is a calendar month and W1 the broker's week: the closed rule, the grid check, the
signal's expiry and the feed's age limit follow the calendar, not 30 days or the epoch."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.bars import bar_close, closed_only, is_closed
from mt5_pipeline.market.ingest import CandleValidationError, validate_candles
from mt5_pipeline.signals.generation import signal_expires_at, too_late
from mt5_pipeline.storage.candles import newest_closed_in_batch


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# A UTC+2 server: its January bar opens on 2024-12-31 at 22:00 UTC.
JAN, FEB, MAR = utc(2024, 12, 31, 22), utc(2025, 1, 31, 22), utc(2025, 2, 28, 22)


def test_a_31_day_month_is_not_closed_a_day_early():
    assert bar_close(JAN, "MN1") == FEB and bar_close(FEB, "MN1") == MAR
    # 30 days after it opened, January is still forming (features and signals would have
    # come from it a day early).
    assert not is_closed(JAN, "MN1", now=JAN + timedelta(days=30, hours=12))
    assert is_closed(JAN, "MN1", now=FEB)
    assert not is_closed(FEB, "MN1", now=FEB + timedelta(days=27, hours=23))
    assert is_closed(FEB, "MN1", now=MAR)
    # Every broker offset: a UTC-5 server's July opens at 05:00 UTC and closes on 1 August.
    assert bar_close(utc(2025, 7, 1, 5), "MN1") == utc(2025, 8, 1, 5)
    assert bar_close(utc(2025, 6, 30, 10), "MN1") == utc(2025, 7, 31, 10)  # UTC+14


def test_closed_only_drops_the_forming_month():
    frame = pd.DataFrame({"ts": pd.to_datetime([JAN, FEB], utc=True), "close": [1.0, 1.1]})
    assert list(closed_only(frame, "MN1", now=JAN + timedelta(days=30, hours=12))["ts"]) == [
        pd.Timestamp(JAN)
    ]  # only JAN kept by "a later bar exists"
    assert closed_only(frame.iloc[[1]], "MN1", now=MAR - timedelta(hours=1)).empty
    assert len(closed_only(frame.iloc[[1]], "MN1", now=MAR)) == 1


def test_februarys_signal_expires_at_its_close_not_on_3_march(settings):
    ttl = timedelta(seconds=settings.signal_ttl_seconds)
    assert signal_expires_at(FEB, "MN1", settings) == MAR + ttl
    assert too_late(settings, FEB, "MN1", now=MAR + ttl - timedelta(seconds=1)) is None
    late = too_late(settings, FEB, "MN1", now=MAR + ttl)
    assert late["bar_close"] == "2025-02-28T22:00:00Z"


def test_the_feed_age_limit_allows_two_long_months(settings):
    # On 31 August the newest closed MN1 bar is July's, 62 days old: not a stalled feed.
    assert settings.max_bar_age_seconds("MN1") >= 62 * 86_400


def _batch(ts: list[datetime], timeframe: str, offset_hours: float = 0.0):
    rows = [
        {"time": int(t.timestamp()), "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "tick_volume": 1} for t in ts
    ]
    return validate_candles("EURUSD", timeframe, rows, now=utc(2025, 6, 1), utc_offset_hours=offset_hours)


def test_the_notification_says_a_month_closed_only_when_it_has():
    batch = _batch([JAN], "MN1", 2)
    assert newest_closed_in_batch(batch, JAN + timedelta(days=30, hours=12)) is None
    assert newest_closed_in_batch(batch, FEB) == int(JAN.timestamp())


def test_w1_bars_open_on_the_brokers_sunday():
    # A UTC+2 server's week opens on Sunday 00:00 server time: Saturday 22:00 UTC.
    saturday_22 = utc(2025, 3, 1, 22)
    assert _batch([saturday_22], "W1", 2).ts.tolist() == [int(saturday_22.timestamp())]
    with pytest.raises(CandleValidationError, match="W1 bars open on Sunday at 00:00"):
        _batch([utc(2025, 3, 6)], "W1", 2)  # the epoch's week (a Thursday)
    assert bar_close(saturday_22, "W1") == saturday_22 + timedelta(days=7)
    assert np.all(_batch([utc(2025, 3, 2)], "W1").ts == int(utc(2025, 3, 2).timestamp()))  # Sunday, a UTC server


def test_the_worker_looks_every_minute_for_bars_on_the_brokers_day(settings_for, sqlite_url):
    from mt5_pipeline.signals.live import LiveWorker

    worker = LiveWorker(settings_for(sqlite_url, live_close_grace_seconds=2))
    worker._timeframes, worker._timeframes_read_at = ["H4", "MN1"], float("inf")
    # A UTC+2 server's H4 bar closes at 22:00 UTC, not on the UTC grid: a tick each minute.
    assert worker.next_tick(utc(2025, 3, 3, 21, 59, 30)) == utc(2025, 3, 3, 22, 0, 2)
