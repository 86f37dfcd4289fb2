"""Bulk reads and the generic upsert on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.storage.bulk import CopyColumn, encode_copy_rows, text_column, write_frame
from mt5_pipeline.storage.candles import list_symbols, newest_bars, read_candles
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import FEATURE_COLUMNS, RAW_LEVEL_COLUMNS, candles, features_m1

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2024, 6, 3, 9, 0, tzinfo=timezone.utc)


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def load(url: str, symbol: str = "EURUSD", n: int = 10, timeframe: str = "M1", now: datetime = NOW) -> None:
    step = {"M1": 1, "M5": 5}[timeframe]
    rows = [
        {
            "time": int(minute(i * step).timestamp()),
            "open": 1.1 + i / 1e4,
            "high": 1.2,
            "low": 1.0,
            "close": 1.1,
            "tick_volume": i,
            "spread": 1,
            "real_volume": 2 * i,
        }
        for i in range(n)
    ]
    ingest_candles(url, symbol, timeframe, rows, now=now)


def test_read_candles_bounds_are_inclusive_and_sorted(db_url):
    load(db_url)
    frame = read_candles(db_url, "EURUSD", "M1", minute(2), minute(5))
    assert list(frame.columns) == [
        "ts",
        "open",
        "high",
        "low",
        "close",
        "tick_volume",
        "spread",
        "real_volume",
        "ingested_at",
    ]
    assert list(frame["ts"]) == [pd.Timestamp(minute(i)) for i in range(2, 6)]
    assert list(frame["tick_volume"]) == [2, 3, 4, 5] and list(frame["real_volume"]) == [4, 6, 8, 10]
    assert frame["open"].tolist() == [1.1 + i / 1e4 for i in range(2, 6)]
    assert {str(frame[c].dtype) for c in ("ts", "ingested_at")} == {"datetime64[ns, UTC]"}
    assert (frame["ingested_at"] == pd.Timestamp(NOW)).all()
    assert len(read_candles(db_url, "EURUSD", "M1")) == 10
    assert len(read_candles(db_url, "EURUSD", "M1", start=minute(8))) == 2
    assert len(read_candles(db_url, "EURUSD", "M1", end=minute(0))) == 1


def test_read_candles_last_n_looks_back_from_end(db_url):
    load(db_url)
    frame = read_candles(db_url, "EURUSD", "M1", end=minute(6), last_n=3)
    assert list(frame["ts"]) == [pd.Timestamp(minute(i)) for i in (4, 5, 6)]
    assert list(read_candles(db_url, "EURUSD", "M1", last_n=1)["ts"]) == [pd.Timestamp(minute(9))]
    assert read_candles(db_url, "EURUSD", "M1", last_n=0).empty


def test_read_candles_of_an_unknown_series_is_an_empty_typed_frame(db_url):
    frame = read_candles(db_url, "NOPE", "M1")
    assert frame.empty and str(frame["ts"].dtype) == "datetime64[ns, UTC]" and frame["open"].dtype == np.float64
    with pytest.raises(ValueError, match="timezone-aware"):
        read_candles(db_url, "EURUSD", "M1", start=datetime(2024, 1, 1))


def test_symbols_and_newest_bars(db_url):
    assert newest_bars(db_url) == [] and list_symbols(db_url) == []
    load(db_url, "GBPUSD", 4)
    load(db_url, "EURUSD", 10, now=NOW + timedelta(seconds=1))
    load(db_url, "EURUSD", 3, timeframe="M5")
    assert list_symbols(db_url) == [("EURUSD", "M1"), ("EURUSD", "M5"), ("GBPUSD", "M1")]
    assert list_symbols(db_url, "M5") == [("EURUSD", "M5")]
    bars = {(b["symbol"], b["timeframe"]): b for b in newest_bars(db_url)}
    assert bars[("EURUSD", "M1")] == {
        "symbol": "EURUSD",
        "timeframe": "M1",
        "newest_ts": minute(9),
        "bars": 10,
        "newest_ingested_at": NOW + timedelta(seconds=1),
    }
    assert bars[("GBPUSD", "M1")]["bars"] == 4 and bars[("EURUSD", "M5")]["newest_ts"] == minute(10)
    assert bars[("GBPUSD", "M1")]["newest_ts"].tzinfo is not None


def test_ingested_times_compare_with_sqlalchemy_queries(db_url):
    # Other modules query candles through SQLAlchemy Core: the stored text (SQLite) or
    # timestamptz (PostgreSQL) must match the datetimes they bind.
    load(db_url)
    with get_engine(db_url).connect() as conn:
        found = conn.execute(select(candles.c.ts, candles.c.ingested_at).where(candles.c.ts == minute(3))).all()
        later = (
            conn.execute(select(candles.c.ts).where(candles.c.ts > minute(7)).order_by(candles.c.ts)).scalars().all()
        )
    assert [(ts.astimezone(timezone.utc), at.astimezone(timezone.utc)) for ts, at in found] == [(minute(3), NOW)]
    assert [ts.astimezone(timezone.utc) for ts in later] == [minute(8), minute(9)]


def feature_frame(symbol: str, n: int, computed_at: datetime, *, offset: float = 0.0) -> pd.DataFrame:
    ts = pd.date_range(T0, periods=n, freq="min", tz="UTC")
    frame = pd.DataFrame({"symbol": symbol, "timeframe": "M1", "ts": ts})
    for k, name in enumerate(RAW_LEVEL_COLUMNS + FEATURE_COLUMNS):
        frame[name] = np.arange(n) * 0.5 + k + offset
    frame.loc[: min(2, n - 1), "ma_50"] = np.nan  # warm-up rows: NULLs in some columns
    frame.loc[0, "ret_1"] = np.nan
    frame["after_gap"] = np.arange(n) % 2 == 0
    frame["usable"] = np.arange(n) > 2
    frame["feature_set_version"] = "1"
    frame["source_ingested_at"] = pd.Timestamp(NOW)
    frame["computed_at"] = pd.Timestamp(computed_at)
    return frame


def read_features(url: str) -> pd.DataFrame:
    with get_engine(url).connect() as conn:
        rows = conn.execute(select(features_m1).order_by(features_m1.c.symbol, features_m1.c.ts)).mappings().all()
    frame = pd.DataFrame([dict(r) for r in rows])
    for name in ("ts", "source_ingested_at", "computed_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def test_write_frame_upserts_with_nulls_booleans_text_and_times(db_url):
    first = pd.concat([feature_frame("EURUSD", 8, NOW), feature_frame("XAUUSD.cash", 5, NOW)], ignore_index=True)
    assert write_frame(db_url, features_m1, first, ["symbol", "timeframe", "ts"]) == 13
    stored = read_features(db_url)
    assert len(stored) == 13
    eur = stored[stored["symbol"] == "EURUSD"].reset_index(drop=True)
    assert eur["ma_50"].isna().tolist()[:4] == [True, True, True, False]
    assert pd.isna(eur.loc[0, "ret_1"]) and eur.loc[1, "ret_1"] == first.loc[1, "ret_1"]
    assert eur["after_gap"].astype(bool).tolist() == [i % 2 == 0 for i in range(8)]
    assert eur["usable"].astype(bool).tolist() == [i > 2 for i in range(8)]
    assert eur["close"].tolist() == first.loc[:7, "close"].tolist()
    assert (eur["computed_at"] == pd.Timestamp(NOW)).all() and list(eur["ts"]) == list(first.loc[:7, "ts"])
    assert set(stored["symbol"]) == {"EURUSD", "XAUUSD.cash"}

    # Recomputed rows replace the stored ones; a key twice in the frame: the last wins.
    later = NOW + timedelta(hours=1)
    again = feature_frame("EURUSD", 3, later, offset=100.0)
    again = pd.concat([again, again.iloc[[2]].assign(rsi_14=-1.0)], ignore_index=True)
    assert write_frame(db_url, features_m1, again, ["symbol", "timeframe", "ts"]) == 3
    stored = read_features(db_url)
    assert len(stored) == 13
    eur = stored[stored["symbol"] == "EURUSD"].reset_index(drop=True)
    assert (
        eur.loc[:2, "computed_at"].eq(pd.Timestamp(later)).all()
        and eur.loc[3:, "computed_at"].eq(pd.Timestamp(NOW)).all()
    )
    assert eur.loc[1, "close"] == again.loc[1, "close"] and eur.loc[2, "rsi_14"] == -1.0


def test_write_frame_writes_only_the_given_columns(db_url):
    write_frame(db_url, features_m1, feature_frame("EURUSD", 3, NOW), ["symbol", "timeframe", "ts"])
    partial = feature_frame("EURUSD", 1, NOW)[
        ["symbol", "timeframe", "ts", "feature_set_version", "source_ingested_at", "computed_at"]
    ]
    partial = partial.assign(usable=True, rsi_14=55.5)
    assert write_frame(db_url, features_m1, partial, ["symbol", "timeframe", "ts"]) == 1
    row = read_features(db_url).iloc[0]
    assert row["rsi_14"] == 55.5 and row["usable"]
    assert row["close"] == RAW_LEVEL_COLUMNS.index("close") and row["hour"] == len(
        RAW_LEVEL_COLUMNS
    ) + FEATURE_COLUMNS.index("hour")


def test_write_frame_refuses_what_it_cannot_store_faithfully(db_url):
    frame = feature_frame("EURUSD", 2, NOW)
    with pytest.raises(ValueError, match="no column"):
        write_frame(db_url, features_m1, frame.assign(colour="red"), ["symbol", "timeframe", "ts"])
    with pytest.raises(ValueError, match="timezone-aware"):
        write_frame(
            db_url, features_m1, frame.assign(ts=frame["ts"].dt.tz_localize(None)), ["symbol", "timeframe", "ts"]
        )
    assert write_frame(db_url, features_m1, frame.iloc[0:0], ["symbol", "timeframe", "ts"]) == 0


def test_copy_encoding_groups_rows_by_null_pattern_and_text_length():
    values = np.array([1.5, np.nan, 2.5, np.nan])
    columns = [
        text_column(pd.Series(["A", "BBB", None, "A"])),
        CopyColumn("f8", values, np.isnan(values)),
        CopyColumn("i4", np.array([1, 2, 3, 4])),
    ]
    data = b"".join(encode_copy_rows(columns, 4))
    # Row = int16 count, then per field int32 length (+ value). NULL = length -1, no value.
    sizes = {
        "A, 1.5": 2 + (4 + 1) + (4 + 8) + (4 + 4),
        "BBB, NULL": 2 + (4 + 3) + 4 + (4 + 4),
        "NULL, 2.5": 2 + 4 + (4 + 8) + (4 + 4),
        "A, NULL": 2 + (4 + 1) + 4 + (4 + 4),
    }
    assert len(data) == sum(sizes.values())
    assert data.count(b"BBB") == 1 and data.count(b"\xff\xff\xff\xff") == 3
