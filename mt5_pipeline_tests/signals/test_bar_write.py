"""A live bar's feature rows and its signal commit together: one round trip on PostgreSQL,
one transaction on SQLite; the pusher is woken only when a signal was queued, and a
failure stores neither."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest
from sqlalchemy.exc import DataError, IntegrityError

from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.learning.features import load_feature_rows
from mt5_pipeline.learning.indicators import FLOAT_COLUMNS
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.bar_write import BarWrite
from mt5_pipeline.signals.series_tail import SeriesTails
from mt5_pipeline.storage.engine import get_engine, psycopg_conninfo
from mt5_pipeline.storage.features import NewRows
from mt5_pipeline_tests.ea_server import make_signal

BAR = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
AT = BAR + timedelta(seconds=61)


def _rows(bar: datetime, value: float) -> NewRows:
    matrix = np.full((1, len(FLOAT_COLUMNS)), value)
    matrix[0, 0] = np.nan  # a warm-up NaN is stored as NULL
    return NewRows([bar], matrix, np.array([False]), np.array([True]), [bar + timedelta(seconds=60)])


def _signal(symbol: str = "XAUUSD", **kw: object) -> Signal:
    return Signal.from_payload(make_signal(symbol, ts=BAR, **kw))


def _write(url: str, rows: NewRows, symbol: str = "XAUUSD") -> BarWrite:
    return BarWrite(SeriesTails(url), (symbol, "M1"), rows, AT)


def test_the_rows_and_the_signal_commit_together(db_url):
    write = _write(db_url, _rows(BAR, 0.25))
    assert write.enqueue(db_url, _signal(), now=AT) is True
    write.finish()  # nothing left to store
    stored = load_feature_rows(db_url, ["XAUUSD"], usable_only=False)
    assert len(stored) == 1 and stored["ts"].iloc[0] == BAR
    assert np.isnan(stored[FLOAT_COLUMNS[0]].iloc[0]) and stored[FLOAT_COLUMNS[1]].iloc[0] == 0.25
    assert queue.status_counts(db_url)["PENDING"] == 1

    # A second signal for the bar: not queued, the rows (recomputed) are stored all the same.
    again = _write(db_url, _rows(BAR, 0.5))
    assert again.enqueue(db_url, _signal(), now=AT) is False
    stored = load_feature_rows(db_url, ["XAUUSD"], usable_only=False)
    assert len(stored) == 1 and stored[FLOAT_COLUMNS[1]].iloc[0] == 0.5
    assert queue.status_counts(db_url)["PENDING"] == 1


def test_a_failed_write_stores_neither_and_the_connection_stays_usable(db_url):
    write = _write(db_url, _rows(BAR, 0.25))
    # A model version past the column's 64 characters: the signal's INSERT fails after the
    # rows' statements ran. SQLite does not enforce lengths: there a missing side fails it.
    bad = _signal(model_version="v" * 300)
    if db_url.startswith("sqlite"):
        object.__setattr__(bad, "side", None)
    with pytest.raises((DataError, IntegrityError)):
        write.enqueue(db_url, bad, now=AT)
    assert load_feature_rows(db_url, ["XAUUSD"], usable_only=False).empty
    assert queue.status_counts(db_url).get("PENDING", 0) == 0
    # The pooled connections are back in their usual (transactional) mode.
    for _ in range(3):
        with get_engine(db_url).begin() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert _write(db_url, _rows(BAR, 0.75)).enqueue(db_url, _signal(), now=AT) is True


def test_the_pusher_is_woken_only_when_a_signal_is_queued(pg_url):
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        assert _write(pg_url, _rows(BAR, 0.25)).enqueue(pg_url, _signal(), now=AT) is True
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [(queue.NOTIFY_CHANNEL, "1")]
        assert _write(pg_url, _rows(BAR, 0.5)).enqueue(pg_url, _signal(), now=AT) is False
        assert list(listener.notifies(timeout=0.3)) == []


def test_without_a_signal_the_rows_are_stored_alone(db_url):
    write = _write(db_url, _rows(BAR, 0.25), symbol="US30")
    write.finish()
    assert len(load_feature_rows(db_url, ["US30"], usable_only=False)) == 1
    assert queue.status_counts(db_url).get("PENDING", 0) == 0
