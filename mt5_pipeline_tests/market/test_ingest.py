"""The ingest core on both backends: every validation rule, idempotency, corrections."""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.market.candle_checks import validate_batch
from mt5_pipeline.market.candle_problems import FieldError
from mt5_pipeline.market.ingest import (
    FUTURE_SKEW_SECONDS,
    MAX_REPORTED_ERRORS,
    TIMEFRAMES,
    CandleValidationError,
    IngestResult,
    _drop_refused,
    ingest_candles,
    validate_candles,
)
from mt5_pipeline.storage.candles import read_candles

NOW = datetime(2024, 6, 3, 12, 0, 30, tzinfo=timezone.utc)  # a Monday, half a minute into 12:00
T0 = int(datetime(2024, 6, 3, 9, 0, tzinfo=timezone.utc).timestamp())


def bar(i: int = 0, **changes) -> dict:
    """A valid M1 candle at T0 + i minutes, as the EA sends it (MqlRates names)."""
    candle = {
        "time": T0 + 60 * i,
        "open": 1.08010,
        "high": 1.08030,
        "low": 1.07990,
        "close": 1.08020,
        "tick_volume": 57,
        "spread": 2,
        "real_volume": 0,
    }
    candle.update(changes)
    return candle


def bars(n: int, start: int = 0) -> list[dict]:
    return [bar(i, close=round(1.08 + 0.0001 * (i % 3), 5)) for i in range(start, start + n)]


def stored(url: str, symbol: str = "EURUSD", timeframe: str = "M1") -> pd.DataFrame:
    return read_candles(url, symbol, timeframe)


# ---- storing ---------------------------------------------------------------------------


def test_new_bars_are_stored_with_their_values_and_ingested_at(db_url):
    result = ingest_candles(db_url, "EURUSD", "M1", bars(5), now=NOW)
    assert result == IngestResult(
        received=5, inserted=5, updated=0, unchanged=0, first_changed_ts=datetime.fromtimestamp(T0, timezone.utc)
    )
    frame = stored(db_url)
    assert list(frame["ts"]) == [pd.Timestamp(T0 + 60 * i, unit="s", tz="UTC") for i in range(5)]
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
    first = frame.iloc[0]
    assert (first["open"], first["high"], first["low"], first["close"]) == (1.0801, 1.0803, 1.0799, 1.08)
    assert (first["tick_volume"], first["spread"], first["real_volume"]) == (57, 2, 0)
    assert (frame["ingested_at"] == pd.Timestamp(NOW)).all()


def test_iso_times_and_optional_fields(db_url):
    later = NOW + timedelta(seconds=5)
    candles = [
        {"time": "2024-06-03T09:00:00Z", "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "tick_volume": 1},
        {
            "time": "2024-06-03T11:01:00+02:00",
            "open": 1.1,
            "high": 1.2,
            "low": 1.0,
            "close": 1.1,
            "tick_volume": 1,
            "spread": None,
        },
    ]
    result = ingest_candles(db_url, "EURUSD", "M1", candles, now=later)
    assert result.inserted == 2
    frame = stored(db_url)
    assert list(frame["ts"]) == [pd.Timestamp("2024-06-03 09:00", tz="UTC"), pd.Timestamp("2024-06-03 09:01", tz="UTC")]
    assert list(frame["spread"]) == [0, 0] and list(frame["real_volume"]) == [0, 0]


def test_repeated_batch_changes_nothing(db_url):
    ingest_candles(db_url, "EURUSD", "M1", bars(10), now=NOW)
    before = stored(db_url)
    again = ingest_candles(db_url, "EURUSD", "M1", bars(10), now=NOW + timedelta(minutes=5))
    assert (again.inserted, again.updated, again.unchanged, again.first_changed_ts) == (0, 0, 10, None)
    pd.testing.assert_frame_equal(stored(db_url), before)  # ingested_at untouched too


def test_corrected_bar_replaces_the_stored_one_and_bumps_ingested_at(db_url):
    # The EA sends the forming bar, then its final version.
    ingest_candles(db_url, "EURUSD", "M1", bars(3), now=NOW)
    later = NOW + timedelta(minutes=1)
    final = bar(2, close=1.08025, high=1.08040, tick_volume=80)
    result = ingest_candles(db_url, "EURUSD", "M1", [bar(1, close=1.08 + 0.0001), final], now=later)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 1)
    assert result.first_changed_ts == datetime.fromtimestamp(T0 + 120, timezone.utc)
    frame = stored(db_url).set_index("ts")
    row = frame.loc[pd.Timestamp(T0 + 120, unit="s", tz="UTC")]
    assert (row["close"], row["high"], row["tick_volume"]) == (1.08025, 1.0804, 80)
    assert row["ingested_at"] == pd.Timestamp(later)
    assert frame.loc[pd.Timestamp(T0 + 60, unit="s", tz="UTC"), "ingested_at"] == pd.Timestamp(NOW)


def test_mixed_batch_counts_new_changed_and_unchanged(db_url):
    ingest_candles(db_url, "EURUSD", "M1", bars(6, start=2), now=NOW)  # minutes 2..7
    batch = bars(10)  # minutes 0..9: 0,1 and 8,9 new; 2..7 stored
    batch[5] = bar(5, spread=3)  # changed
    result = ingest_candles(db_url, "EURUSD", "M1", batch, now=NOW)
    assert (result.received, result.inserted, result.updated, result.unchanged) == (10, 4, 1, 5)
    assert result.first_changed_ts == datetime.fromtimestamp(T0, timezone.utc)
    assert len(stored(db_url)) == 10


def test_same_time_twice_in_a_batch_the_last_wins(db_url):
    batch = [bar(0, close=1.08001), bar(1), bar(0, close=1.08002)]
    result = ingest_candles(db_url, "EURUSD", "M1", batch, now=NOW)
    assert (result.received, result.inserted, result.duplicates) == (3, 2, 1)
    assert stored(db_url)["close"].iloc[0] == 1.08002


def test_series_are_kept_apart(db_url):
    ingest_candles(db_url, "EURUSD", "M1", bars(3), now=NOW)
    result = ingest_candles(db_url, "EURUSD.m", "M1", bars(3), now=NOW)
    assert result.inserted == 3
    assert ingest_candles(db_url, "EURUSD", "M5", [bar(0), bar(5)], now=NOW).inserted == 2
    assert (
        len(stored(db_url)) == 3 and len(stored(db_url, "EURUSD.m")) == 3 and len(stored(db_url, timeframe="M5")) == 2
    )


def test_dataframe_input_with_ts_or_time(db_url):
    frame = pd.DataFrame(bars(4))
    frame["ts"] = pd.to_datetime(frame.pop("time"), unit="s", utc=True)
    assert ingest_candles(db_url, "EURUSD", "M1", frame, now=NOW).inserted == 4
    as_time = pd.DataFrame(bars(6))  # epoch seconds in a `time` column
    result = ingest_candles(db_url, "EURUSD", "M1", as_time, now=NOW)
    assert (result.inserted, result.unchanged) == (2, 4)


def test_sparse_batch_far_apart_in_time(db_url):
    # Two bars years apart: the core looks up the batch's own times, not the whole range.
    ingest_candles(db_url, "EURUSD", "M1", bars(3), now=NOW)
    old = bar(0, time=T0 - 3 * 365 * 86_400)
    result = ingest_candles(db_url, "EURUSD", "M1", [old, bars(3)[1], bar(2, close=1.0803)], now=NOW)
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 1)
    assert result.first_changed_ts == datetime.fromtimestamp(old["time"], timezone.utc)


def test_empty_batch_stores_nothing(db_url):
    assert ingest_candles(db_url, "EURUSD", "M1", [], now=NOW) == IngestResult(0, 0, 0, 0, None, 0)


def test_concurrent_ingests_of_one_series_never_conflict(db_url):
    errors: list[BaseException] = []
    results: list[IngestResult] = []

    def send(start: int) -> None:
        try:
            results.append(ingest_candles(db_url, "EURUSD", "M1", bars(200, start=start), now=NOW + timedelta(hours=6)))
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(start,)) for start in (0, 100, 0, 150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stored(db_url)) == 350
    assert sum(r.inserted for r in results) == 350


# ---- validation: every rule names the row and field, and nothing is stored --------------

RULES = [
    # (row 1 of the batch replaced by ..., loc, words in the message)
    (bar(1, open=math.nan), "candles[1].open", "finite"),
    (bar(1, high=math.inf), "candles[1].high", "finite"),
    (bar(1, low=0.0, open=0.5, close=0.5), "candles[1].low", "greater than 0"),
    (bar(1, low=-1.0), "candles[1].low", "greater than 0"),
    (bar(1, high=1.08015), "candles[1].high", "max(open, close)"),
    (bar(1, low=1.08015), "candles[1].low", "min(open, close)"),
    (bar(1, tick_volume=-1), "candles[1].tick_volume", ">= 0"),
    (bar(1, real_volume=-5), "candles[1].real_volume", ">= 0"),
    (bar(1, spread=-2), "candles[1].spread", ">= 0"),
    (bar(1, tick_volume=5.5), "candles[1].tick_volume", "whole number"),
    (bar(1, spread=2**40), "candles[1].spread", "too large"),
    (bar(1, close="1.0802"), "candles[1].close", "got a string"),
    (bar(1, open=True), "candles[1].open", "boolean"),
    (bar(1, high=None), "candles[1].high", "null"),
    (bar(1, high=[1.0]), "candles[1].high", "array"),
    ({k: v for k, v in bar(1).items() if k != "low"}, "candles[1].low", "required"),
    ({k: v for k, v in bar(1).items() if k != "time"}, "candles[1].time", "required"),
    ("not a candle", "candles[1]", "expected an object"),
    (bar(1, time=T0 + 90), "candles[1].time", "M1 bars open"),
    (bar(1, time=T0 + 60.5), "candles[1].time", "whole epoch seconds"),
    (bar(1, time="2024-06-03T09:01:00"), "candles[1].time", "no time zone"),
    (bar(1, time="3 June 2024 9am"), "candles[1].time", "not an ISO 8601"),
    (bar(1, time="2024-06-03T09:01:00.250Z"), "candles[1].time", "fractions of a second"),
    (bar(1, time=True), "candles[1].time", "boolean"),
    (bar(1, time=(T0 + 60) * 1000), "candles[1].time", "milliseconds"),
    (bar(1, time=-60), "candles[1].time", "before 1970"),
]


@pytest.mark.parametrize("bad, loc, words", RULES, ids=[f"{r[1]}:{r[2]}" for r in RULES])
def test_each_rule_rejects_the_whole_batch(db_url, bad, loc, words):
    ingest_candles(db_url, "EURUSD", "M1", bars(3), now=NOW)
    before = stored(db_url)
    batch = [bar(0, close=1.08025), bad, bar(5)]  # a change, the bad row, a new bar
    with pytest.raises(CandleValidationError) as info:
        ingest_candles(db_url, "EURUSD", "M1", batch, now=NOW + timedelta(minutes=1))
    assert [e.loc for e in info.value.errors] == [loc], info.value.errors
    assert words in info.value.errors[0].message
    assert info.value.total == 1
    pd.testing.assert_frame_equal(stored(db_url), before)  # nothing stored, nothing changed


def test_future_bar_beyond_the_skew_is_rejected_but_the_forming_bar_is_not(db_url):
    minute = (int(NOW.timestamp()) // 60) * 60
    # The forming bar opened at 12:00 (<= now); 12:01 is 30 s ahead, within the skew.
    assert (
        ingest_candles(db_url, "EURUSD", "M1", [bar(0, time=minute), bar(0, time=minute + 60)], now=NOW).inserted == 2
    )
    too_far = minute + 60 + FUTURE_SKEW_SECONDS  # 90 s ahead of now
    with pytest.raises(CandleValidationError) as info:
        ingest_candles(db_url, "EURUSD", "M1", [bar(0, time=too_far)], now=NOW)
    assert info.value.errors[0].loc == "candles[0].time" and "in the future" in info.value.errors[0].message
    assert len(stored(db_url)) == 2


@pytest.mark.parametrize(
    "symbol, timeframe, loc",
    [
        ("EUR USD", "M1", "symbol"),
        ("", "M1", "symbol"),
        ("X" * 33, "M1", "symbol"),
        ("EURUSD", "M2", "timeframe"),
        ("EURUSD", "m1", "timeframe"),
    ],
)
def test_symbol_and_timeframe_are_checked(db_url, symbol, timeframe, loc):
    with pytest.raises(CandleValidationError) as info:
        ingest_candles(db_url, symbol, timeframe, bars(2), now=NOW)
    assert info.value.errors[0].loc == loc
    assert stored(db_url, symbol, timeframe).empty


def test_every_bad_row_and_field_is_named_in_row_order():
    batch = [bar(0), bar(1, high=1.0), bar(2, open="x", tick_volume=-1), 7, bar(4, low=1.5, time=T0 + 241)]
    with pytest.raises(CandleValidationError) as info:
        validate_candles("EURUSD", "M1", batch, now=NOW)
    locs = [e.loc for e in info.value.errors]
    assert locs == [
        "candles[1].high",
        "candles[2].open",
        "candles[2].tick_volume",
        "candles[3]",
        "candles[4].time",
        "candles[4].low",
    ]
    assert "candles[1].high" in str(info.value)


def test_a_huge_garbage_batch_reports_a_capped_list_and_the_total():
    garbage = [{"time": "x", "open": "y"} for _ in range(100_000)]
    with pytest.raises(CandleValidationError) as info:
        validate_candles("EURUSD", "M1", garbage, now=NOW)
    errors = info.value.errors
    assert len(errors) == MAX_REPORTED_ERRORS + 1
    assert errors[-1].loc == "candles" and "more errors" in errors[-1].message
    assert info.value.total == 100_000 * 6  # time, open, and high/low/close/tick_volume missing


def test_dataframe_problems_are_reported_per_row_or_column():
    frame = pd.DataFrame(bars(3))
    frame.loc[1, "close"] = np.nan
    frame = frame.drop(columns=["tick_volume"])
    with pytest.raises(CandleValidationError) as info:
        validate_candles("EURUSD", "M1", frame, now=NOW)
    assert [e.loc for e in info.value.errors] == ["candles.tick_volume", "candles[1].close"]
    naive = pd.DataFrame(bars(2)).assign(time=pd.to_datetime([T0, T0 + 60], unit="s"))
    with pytest.raises(CandleValidationError, match="timezone-aware"):
        validate_candles("EURUSD", "M1", naive, now=NOW)


# ---- alignment of the longer timeframes -------------------------------------------------


def utc(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize(
    "timeframe, good, bad, offset",
    [
        ("M5", utc(2024, 6, 3, 9, 5), utc(2024, 6, 3, 9, 6), 0),
        ("M15", utc(2024, 6, 3, 9, 45), utc(2024, 6, 3, 9, 50), 0),
        ("M30", utc(2024, 6, 3, 9, 30), utc(2024, 6, 3, 9, 15), 0),
        ("H1", utc(2024, 6, 3, 9), utc(2024, 6, 3, 9, 30), 0),
        ("H4", utc(2024, 6, 3, 8), utc(2024, 6, 3, 9), 0),
        ("H4", utc(2024, 6, 3, 6), utc(2024, 6, 3, 8), 2),  # broker UTC+2: 08:00 local = 06:00 UTC
        ("D1", utc(2024, 6, 3), utc(2024, 6, 3, 1), 0),
        ("D1", utc(2024, 6, 2, 21), utc(2024, 6, 3), 3),  # broker midnight at UTC+3
        ("W1", utc(2024, 6, 2), utc(2024, 6, 3), 0),  # Sunday, not Monday
        ("W1", utc(2024, 6, 1, 22), utc(2024, 6, 2), 2),
        ("MN1", utc(2024, 6, 1), utc(2024, 6, 2), 0),
        ("MN1", utc(2024, 5, 31, 22), utc(2024, 6, 1), 2),
    ],
)
def test_bars_open_on_their_timeframe_boundaries(timeframe, good, bad, offset):
    assert len(validate_candles("EURUSD", timeframe, [bar(0, time=good)], now=NOW, utc_offset_hours=offset)) == 1
    with pytest.raises(CandleValidationError) as info:
        validate_candles("EURUSD", timeframe, [bar(0, time=bad)], now=NOW, utc_offset_hours=offset)
    assert info.value.errors[0].loc == "candles[0].time" and f"{timeframe} bars open" in info.value.errors[0].message


def test_timeframes_are_the_settings_list():
    assert TIMEFRAMES == ("M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1", "MN1")


def test_a_committed_closed_bar_notifies_the_live_worker_and_a_forming_one_does_not(pg_url):
    """PostgreSQL: NOTIFY candles_closed "SYMBOL TF OPEN", delivered at commit."""
    import psycopg

    from mt5_pipeline.storage.candles import CANDLES_CHANNEL
    from mt5_pipeline.storage.engine import psycopg_conninfo

    bar = datetime(2025, 10, 27, 11, 29, tzinfo=timezone.utc)
    candle = {
        "time": int(bar.timestamp()),
        "open": 1.1,
        "high": 1.1002,
        "low": 1.0999,
        "close": 1.1001,
        "tick_volume": 9,
    }
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {CANDLES_CHANNEL}")
        ingest_candles(pg_url, "EURUSD", "M1", [candle], now=bar + timedelta(seconds=45))  # forming
        assert [n.payload for n in listener.notifies(timeout=0.5)] == []
        ingest_candles(pg_url, "EURUSD", "M1", [candle], now=bar + timedelta(seconds=60.2))  # final, unchanged
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == [f"EURUSD M1 {int(bar.timestamp())}"]
        nxt = {**candle, "time": int(bar.timestamp()) + 60}
        ingest_candles(pg_url, "EURUSD", "M1", [candle, nxt], now=bar + timedelta(seconds=75))  # a later bar closes it
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == [f"EURUSD M1 {int(bar.timestamp())}"]


def test_a_partial_batch_drops_exactly_the_rows_each_later_check_refused():
    # The price-jump check and the offset check each name rows of the batch as validated;
    # dropping the first check's rows before the second's shifted its positions onto good
    # rows (a bad row stored, a good one lost) or past the end.
    batch, _ = validate_batch(
        "XAUUSD", "M1", [bar(i) for i in range(5)], now=NOW, utc_offset_hours=0.0, server_zone=None, partial=True
    )
    assert len(batch) == 5
    jump = (np.array([1]), [FieldError("candles[1].high", "a bad tick")], 1)
    offset = (np.array([3]), [FieldError("candles[3].time", "another offset")], 1)
    both = (np.array([3]), [FieldError("candles[3].close", "also a bad tick")], 1)
    kept, rejected, errors = _drop_refused(batch, [jump, offset, both], 0, [], partial=True)
    assert list(kept.ts) == [batch.ts[0], batch.ts[2], batch.ts[4]]
    assert rejected == 2  # rows, not refusals: row 3 was refused twice
    assert [e.loc for e in errors] == ["candles[1].high", "candles[3].time", "candles[3].close"]
    with pytest.raises(CandleValidationError):
        _drop_refused(batch, [jump], 0, [], partial=False)
