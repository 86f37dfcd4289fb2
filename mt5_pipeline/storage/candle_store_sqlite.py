"""Storing a candle batch on SQLite: the PostgreSQL store's semantics in one write transaction.

A temp table, one UPDATE for bars that differ, one INSERT for new ones, under BEGIN
IMMEDIATE (the write lock from the start, so the counts and the writes see the same
data, and the stamp is read once the lock is held). One machine: its clock is the
database's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from mt5_pipeline.clock import utcnow
from mt5_pipeline.storage.bulk import sqlite_datetime, sqlite_datetime_strings
from mt5_pipeline.storage.candle_batch import BAR_VALUES, CandleBatch
from mt5_pipeline.storage.engine import get_engine

_SET = ", ".join(f"{v} = t.{v}" for v in BAR_VALUES)
_DIFFERS = " OR ".join(f"c.{v} IS NOT t.{v}" for v in BAR_VALUES)


def store_sqlite(url: str, batch: CandleBatch, stamp_base: datetime | None) -> tuple[int, int, int | None]:
    """(inserted, updated, first changed ts in epoch µs) -- one transaction."""
    raw = get_engine(url).raw_connection()
    try:
        db: Any = raw.driver_connection
        saved = db.isolation_level
        db.isolation_level = None  # explicit BEGIN/COMMIT below
        cur = db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            inserted, updated, first = _upsert(cur, batch, stamp_base)
            cur.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
            db.isolation_level = saved
    finally:
        raw.close()
    first_us = None if first is None else int(pd.Timestamp(first, tz="UTC").value // 1000)
    return inserted, updated, first_us


def _rows(batch: CandleBatch) -> list[tuple[Any, ...]]:
    ts_text = sqlite_datetime_strings(batch.ts * 1_000_000).tolist()
    return list(
        zip(
            ts_text,
            batch.open.tolist(),
            batch.high.tolist(),
            batch.low.tolist(),
            batch.close.tolist(),
            batch.tick_volume.tolist(),
            batch.spread.tolist(),
            batch.real_volume.tolist(),
            strict=True,
        )
    )


def _upsert(cur: Any, batch: CandleBatch, stamp_base: datetime | None) -> tuple[int, int, str | None]:
    """(inserted, updated, first changed ts as stored text), under the write lock."""
    key = (batch.symbol, batch.timeframe)
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _ingest_candles (ts TEXT PRIMARY KEY, open REAL, high REAL, low REAL, "
        "close REAL, tick_volume INTEGER, spread INTEGER, real_volume INTEGER)"
    )
    cur.execute("DELETE FROM temp._ingest_candles")
    cur.executemany("INSERT INTO temp._ingest_candles VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _rows(batch))
    first = cur.execute(
        "SELECT min(t.ts) FROM temp._ingest_candles t LEFT JOIN candles c "
        f"ON c.symbol = ? AND c.timeframe = ? AND c.ts = t.ts WHERE c.ts IS NULL OR {_DIFFERS}",
        key,
    ).fetchone()[0]
    stamp = sqlite_datetime(_stamp(cur, batch, stamp_base))
    cur.execute(
        f"UPDATE candles AS c SET {_SET}, ingested_at = ? FROM temp._ingest_candles t "
        f"WHERE c.symbol = ? AND c.timeframe = ? AND c.ts = t.ts AND ({_DIFFERS})",
        (stamp, *key),
    )
    updated = cur.rowcount
    cur.execute(
        "INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, tick_volume, spread, real_volume, "
        "ingested_at) "
        "SELECT ?, ?, t.ts, t.open, t.high, t.low, t.close, t.tick_volume, t.spread, t.real_volume, ? "
        "FROM temp._ingest_candles t WHERE NOT EXISTS "
        "(SELECT 1 FROM candles c WHERE c.symbol = ? AND c.timeframe = ? AND c.ts = t.ts)",
        (*key, stamp, *key),
    )
    inserted = cur.rowcount
    if inserted:
        cur.execute("UPDATE candle_series SET bars = bars + ? WHERE symbol = ? AND timeframe = ?", (inserted, *key))
        if cur.rowcount == 0:
            cur.execute(
                "INSERT INTO candle_series (symbol, timeframe, bars) SELECT ?, ?, count(*) FROM candles WHERE symbol "
                "= ? AND timeframe = ?",
                (*key, *key),
            )
    cur.execute("DELETE FROM temp._ingest_candles")
    return inserted, updated, first


def _stamp(cur: Any, batch: CandleBatch, stamp_base: datetime | None) -> datetime:
    """Now (or the caller's base), but always after every stamp already stored in the series."""
    newest = cur.execute(
        "SELECT max(ingested_at) FROM candles WHERE symbol = ? AND timeframe = ?", (batch.symbol, batch.timeframe)
    ).fetchone()[0]
    stamp_at = stamp_base or utcnow()
    if newest is not None:
        stamp_at = max(stamp_at, pd.Timestamp(newest, tz="UTC").to_pydatetime() + timedelta(microseconds=1))
    return stamp_at
