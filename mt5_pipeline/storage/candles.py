"""The candles table: every statement that reads or writes it, on both backends.

Reading (:func:`read_candles`, :func:`newest_candle_ts`, :func:`closes_before`,
:func:`newest_bars`, :func:`list_symbols`, :func:`candles_stamped_since`,
:func:`ready_bar`) lives here, beside the column list; the ingest core's upsert is
:func:`store_batch`, written once per backend in :mod:`~mt5_pipeline.storage.candle_store_pg`
and :mod:`~mt5_pipeline.storage.candle_store_sqlite`. The PostgreSQL/SQLite difference
stays inside storage/: callers hand a validated :class:`CandleBatch` and get counts back.

Storing, worth knowing:

* Ingests of one series are serialised (an advisory lock on PostgreSQL, BEGIN IMMEDIATE
  on SQLite); ``ingested_at`` is stamped from the database clock once the lock is held and
  is always later than the series' newest stamp, so a correction is never missed by the
  incremental features however late it commits.
* On PostgreSQL a batch holding a closed bar notifies ``CANDLES_CHANNEL`` in its own
  transaction ("SYMBOL TIMEFRAME OPEN"), so the live worker wakes the moment the bar is
  visible, never before.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from psycopg2 import sql
from sqlalchemy import select

from mt5_pipeline.bars import Ready, ready_among
from mt5_pipeline.clock import as_utc, parse_iso
from mt5_pipeline.storage.bulk import (
    PG_EPOCH_OFFSET_US,
    _parse_sqlite_times,
    copy_out,
    parse_copy_binary,
    pg_connection,
    sqlite_datetime,
)
from mt5_pipeline.storage.candle_batch import CANDLES_CHANNEL, CandleBatch, newest_closed_in_batch
from mt5_pipeline.storage.candle_store_pg import series_lock_key, store_pg
from mt5_pipeline.storage.candle_store_sqlite import store_sqlite
from mt5_pipeline.storage.engine import get_engine, is_postgres
from mt5_pipeline.storage.schema import candles

# The batch and the lock are the stores'; callers import them from here, with the table.
__all__ = [
    "CANDLES_CHANNEL",
    "CANDLE_COLUMNS",
    "CANDLE_COPY_FORMATS",
    "CandleBatch",
    "candles_stamped_since",
    "closes_before",
    "list_symbols",
    "newest_bars",
    "newest_candle_ts",
    "newest_closed_in_batch",
    "newest_two_bars",
    "read_candles",
    "ready_bar",
    "series_lock_key",
    "store_batch",
]

CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "tick_volume", "spread", "real_volume", "ingested_at")


def store_batch(
    database_url: str, batch: CandleBatch, stamp_base: datetime | None, *, clock: datetime
) -> tuple[int, int, int | None]:
    """Upsert a validated batch in one transaction: (inserted, updated, first changed ts in epoch µs).

    ``stamp_base``: a fixed base for ``ingested_at`` (tests; None: the database clock);
    ``clock``: the time that decides which bars of the batch are closed (the NOTIFY).
    """
    if is_postgres(database_url):
        return store_pg(database_url, batch, stamp_base, clock=clock)
    return store_sqlite(database_url, batch, stamp_base)


# ---- reading ------------------------------------------------------------------------------


def _empty_candles() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
            "open": pd.Series([], dtype="float64"),
            "high": pd.Series([], dtype="float64"),
            "low": pd.Series([], dtype="float64"),
            "close": pd.Series([], dtype="float64"),
            "tick_volume": pd.Series([], dtype="int64"),
            "spread": pd.Series([], dtype="int64"),
            "real_volume": pd.Series([], dtype="int64"),
            "ingested_at": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )


def _pg_times(values: np.ndarray) -> pd.Series:
    us = values.astype(np.int64) + PG_EPOCH_OFFSET_US
    # Straight to a tz-aware index: the .dt accessor costs 3x more, on every live bar.
    return pd.Series(pd.DatetimeIndex(us.view("datetime64[us]").astype("datetime64[ns]"), tz="UTC"))


# ts, open, high, low, close, tick_volume, spread (int4), real_volume, ingested_at: all NOT NULL.
CANDLE_COPY_FORMATS = (">i8", ">f8", ">f8", ">f8", ">f8", ">i8", ">i4", ">i8", ">i8")


def _parse_candle_copy(data: bytes) -> pd.DataFrame:
    rows = parse_copy_binary(data, CANDLE_COPY_FORMATS)
    if len(rows) == 0:
        return _empty_candles()
    return pd.DataFrame(
        {
            "ts": _pg_times(rows["v0"]),
            "open": rows["v1"].astype(np.float64),
            "high": rows["v2"].astype(np.float64),
            "low": rows["v3"].astype(np.float64),
            "close": rows["v4"].astype(np.float64),
            "tick_volume": rows["v5"].astype(np.int64),
            "spread": rows["v6"].astype(np.int64),
            "real_volume": rows["v7"].astype(np.int64),
            "ingested_at": _pg_times(rows["v8"]),
        }
    )


def read_candles(
    database_url: str,
    symbol: str,
    timeframe: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    last_n: int | None = None,
) -> pd.DataFrame:
    """Bars of one series sorted by ts, bounds inclusive.

    Columns: ts (datetime64[ns, UTC]), open, high, low, close, tick_volume, spread,
    real_volume, ingested_at. ``last_n`` keeps only the newest n bars with ts <= end
    (look-backs for incremental features).
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (UTC), got {value.isoformat()}")
    if last_n is not None and last_n <= 0:
        return _empty_candles()
    if is_postgres(database_url):
        return _read_candles_pg(database_url, symbol, timeframe, start, end, last_n)
    return _read_candles_sqlite(database_url, symbol, timeframe, start, end, last_n)


def _read_candles_pg(
    url: str, symbol: str, timeframe: str, start: datetime | None, end: datetime | None, last_n: int | None
) -> pd.DataFrame:
    where = [
        sql.SQL("symbol = {}").format(sql.Literal(symbol)),
        sql.SQL("timeframe = {}").format(sql.Literal(timeframe)),
    ]
    if start is not None:
        where.append(sql.SQL("ts >= {}").format(sql.Literal(start)))
    if end is not None:
        where.append(sql.SQL("ts <= {}").format(sql.Literal(end)))
    order = sql.SQL("ORDER BY ts DESC LIMIT {}").format(sql.Literal(int(last_n))) if last_n else sql.SQL("ORDER BY ts")
    # COPY takes no parameters; sql.Literal quotes on the client, so the values are safe.
    statement = sql.SQL(
        "COPY (SELECT ts, open, high, low, close, tick_volume, spread, real_volume, ingested_at "
        "FROM candles WHERE {} {}) TO STDOUT (FORMAT BINARY)"
    ).format(sql.SQL(" AND ").join(where), order)
    with pg_connection(url) as conn, conn.cursor() as cur:
        frame = _parse_candle_copy(copy_out(cur, statement))
    if last_n:
        frame = frame.iloc[::-1].reset_index(drop=True)
    return frame


def _read_candles_sqlite(
    url: str, symbol: str, timeframe: str, start: datetime | None, end: datetime | None, last_n: int | None
) -> pd.DataFrame:
    clauses = ["symbol = ?", "timeframe = ?"]
    params: list[object] = [symbol, timeframe]
    if start is not None:
        clauses.append("ts >= ?")
        params.append(sqlite_datetime(start))
    if end is not None:
        clauses.append("ts <= ?")
        params.append(sqlite_datetime(end))
    query = f"SELECT {', '.join(CANDLE_COLUMNS)} FROM candles WHERE {' AND '.join(clauses)} ORDER BY ts"
    if last_n:
        query = f"SELECT * FROM ({query} DESC LIMIT {int(last_n)}) ORDER BY ts"
    with get_engine(url).connect() as conn:
        rows = conn.exec_driver_sql(query, tuple(params)).fetchall()
    if not rows:
        return _empty_candles()
    columns = list(zip(*rows, strict=True))
    frame = pd.DataFrame(
        {
            name: np.asarray(values)
            for name, values in zip(CANDLE_COLUMNS, columns, strict=True)
            if name not in ("ts", "ingested_at")
        }
    )
    frame.insert(0, "ts", _parse_sqlite_times(columns[0]))
    frame["ingested_at"] = _parse_sqlite_times(columns[8])
    for name in ("open", "high", "low", "close"):
        frame[name] = frame[name].astype(np.float64)
    for name in ("tick_volume", "spread", "real_volume"):
        frame[name] = frame[name].astype(np.int64)
    return frame[list(CANDLE_COLUMNS)]


def newest_candle_ts(database_url: str, symbol: str, timeframe: str) -> datetime | None:
    """The series' newest stored bar, forming or not (one primary-key lookup)."""
    c = candles.c
    with get_engine(database_url).connect() as conn:
        value = conn.execute(
            select(c.ts).where(c.symbol == symbol, c.timeframe == timeframe).order_by(c.ts.desc()).limit(1)
        ).scalar()
    return None if value is None else parse_iso(value)


def newest_two_bars(database_url: str, symbol: str, timeframe: str) -> list[tuple[datetime, datetime]]:
    """(open, ingested_at) of the series' two newest bars, newest first (one index range)."""
    c = candles.c
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(
            select(c.ts, c.ingested_at)
            .where(c.symbol == symbol, c.timeframe == timeframe)
            .order_by(c.ts.desc())
            .limit(2)
        ).all()
    return [(as_utc(parse_iso(r.ts)), as_utc(parse_iso(r.ingested_at))) for r in rows]


def closes_before(database_url: str, symbol: str, timeframe: str, before: datetime, n: int) -> np.ndarray:
    """The closes of the series' last ``n`` bars opening before ``before``, oldest first."""
    c = candles.c
    with get_engine(database_url).connect() as conn:
        newest_first = (
            conn.execute(
                select(c.close)
                .where(c.symbol == symbol, c.timeframe == timeframe, c.ts < before)
                .order_by(c.ts.desc())
                .limit(n)
            )
            .scalars()
            .all()
        )
    return np.asarray(newest_first[::-1], dtype=np.float64)


def list_symbols(database_url: str, timeframe: str | None = None) -> list[tuple[str, str]]:
    """Distinct (symbol, timeframe) pairs in candles, sorted."""
    return [(r[0], r[1]) for r in _series(database_url, stats=False) if timeframe is None or r[1] == timeframe]


def newest_bars(database_url: str) -> list[dict]:
    """Per (symbol, timeframe): symbol, timeframe, newest_ts, bars, newest_ingested_at (UTC).

    Constant time in the table's size (it runs on every /health, /metrics scrape and
    sensor tick): the series and their newest bar and stamp are index probes, the bar
    count is ``candle_series``, kept by the ingest core.
    """
    return [
        {"symbol": r[0], "timeframe": r[1], "newest_ts": r[2], "bars": int(r[3] or 0), "newest_ingested_at": r[4]}
        for r in _series(database_url, stats=True)
    ]


# PostgreSQL has no skip scan: walk the primary key from one (symbol, timeframe) to the
# next, so finding the series costs one index probe each instead of reading every bar.
_PG_SERIES = """
WITH RECURSIVE series AS (
    (SELECT symbol, timeframe FROM candles ORDER BY symbol, timeframe LIMIT 1)
    UNION ALL
    SELECT nxt.symbol, nxt.timeframe FROM series s,
    LATERAL (SELECT c.symbol, c.timeframe FROM candles c
             WHERE (c.symbol, c.timeframe) > (s.symbol, s.timeframe)
             ORDER BY c.symbol, c.timeframe LIMIT 1) nxt
)
"""
# Newest bar: the primary key backwards; newest stamp: ix_candles_symbol_tf_ingested_at
# backwards; bars: candle_series (NULL for a series written around the ingest core,
# counted separately: a count in this statement, even never run, inflates its estimated
# cost past jit_above_cost, and JIT compilation alone took 300 ms at 10M rows).
_PG_SERIES_STATS = """
SELECT s.symbol, s.timeframe,
       (SELECT c.ts FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe
        ORDER BY c.ts DESC LIMIT 1),
       n.bars,
       (SELECT c.ingested_at FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe
        ORDER BY c.ingested_at DESC LIMIT 1)
FROM series s LEFT JOIN candle_series n ON n.symbol = s.symbol AND n.timeframe = s.timeframe
ORDER BY 1, 2"""
_PG_COUNT = "SELECT count(*) FROM candles WHERE symbol = %s AND timeframe = %s"

# SQLite: the same walk from Python, one primary-key probe per step (in-process calls).
_SQLITE_FIRST = "SELECT symbol, timeframe FROM candles ORDER BY symbol, timeframe LIMIT 1"
_SQLITE_NEXT = (
    "SELECT symbol, timeframe FROM candles WHERE (symbol, timeframe) > (?, ?) ORDER BY symbol, timeframe LIMIT 1"
)
_SQLITE_STATS = (
    "SELECT (SELECT max(ts) FROM candles WHERE symbol = ?1 AND timeframe = ?2), "
    "COALESCE((SELECT bars FROM candle_series WHERE symbol = ?1 AND timeframe = ?2), "
    "(SELECT count(*) FROM candles WHERE symbol = ?1 AND timeframe = ?2)), "
    "(SELECT max(ingested_at) FROM candles WHERE symbol = ?1 AND timeframe = ?2)"
)


def _series(database_url: str, *, stats: bool) -> list[tuple[Any, ...]]:
    """(symbol, timeframe, newest_ts, bars, newest_ingested_at) per series; stats None unless asked."""
    if is_postgres(database_url):
        return [(r[0], r[1], _aware(r[2]), r[3], _aware(r[4])) for r in _series_pg(database_url, stats=stats)]
    return [(r[0], r[1], _utc_text(r[2]), r[3], _utc_text(r[4])) for r in _series_sqlite(database_url, stats=stats)]


def _series_pg(database_url: str, *, stats: bool) -> list[tuple[Any, ...]]:
    query = _PG_SERIES + (
        _PG_SERIES_STATS if stats else "SELECT symbol, timeframe, NULL, NULL, NULL FROM series ORDER BY 1, 2"
    )
    with pg_connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL jit = off")  # index probes: compiling them costs more than running them
        cur.execute(query)
        rows: list[tuple[Any, ...]] = cur.fetchall()
        if stats:
            for i, row in enumerate(rows):
                if row[3] is None:  # not kept by the ingest core: counted, once per call
                    cur.execute(_PG_COUNT, (row[0], row[1]))
                    rows[i] = (*row[:3], cur.fetchone()[0], row[4])
    return rows


def _series_sqlite(database_url: str, *, stats: bool) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    with get_engine(database_url).connect() as conn:
        key = conn.exec_driver_sql(_SQLITE_FIRST).first()
        while key is not None:
            figures = conn.exec_driver_sql(_SQLITE_STATS, (key[0], key[1])).first() if stats else None
            rows.append((key[0], key[1], *(figures or (None, None, None))))
            key = conn.exec_driver_sql(_SQLITE_NEXT, (key[0], key[1])).first()
    return rows


def _aware(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def _utc_text(value: str | None) -> datetime | None:
    return pd.Timestamp(value, tz="UTC").to_pydatetime() if value is not None else None


_PG_STAMPED_SINCE = (
    f"SELECT {', '.join(CANDLE_COLUMNS)} FROM candles "
    "WHERE symbol = %s AND timeframe = %s AND ingested_at >= %s ORDER BY ts"
)


def candles_stamped_since(database_url: str, symbol: str, timeframe: str, since: datetime) -> list[tuple]:
    """The series' bars stamped (``ingested_at``) at or after ``since``, sorted by ts, as
    tuples in CANDLE_COLUMNS order with aware UTC datetimes.

    Through the (symbol, timeframe, ingested_at) index: on a live series that is the bar
    just posted and the forming one, whatever the series' length. Plain tuples, not a
    frame: this runs on every live bar, and building a frame for two rows costs more
    than reading them.
    """
    if is_postgres(database_url):
        # Straight to the driver: the column types' result processing and the statement's
        # compilation were most of this read's cost, on every live bar.
        with get_engine(database_url).connect() as conn:
            rows = conn.exec_driver_sql(_PG_STAMPED_SINCE, (symbol, timeframe, since)).fetchall()
        return [(as_utc(r[0]), *r[1:8], as_utc(r[8])) for r in rows]
    c = candles.c
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(
            select(*(c[name] for name in CANDLE_COLUMNS))
            .where(c.symbol == symbol, c.timeframe == timeframe, c.ingested_at >= since)
            .order_by(c.ts)
        ).all()
    return [(parse_iso(r[0]), *r[1:8], parse_iso(r[8])) for r in rows]


def ready_bar(
    database_url: str,
    symbol: str,
    timeframe: str,
    *,
    grace_seconds: float,
    now: datetime | None = None,
    final: datetime | None = None,
) -> Ready:
    """The newest closed bar of the series whose final version is in, or whose grace has
    passed (see the module docstring). `final`: the newest bar the caller knows was sent
    after its close (the live worker's NOTIFY), when the stamp cannot say so yet."""
    rows = newest_two_bars(database_url, symbol, timeframe)
    return ready_among(
        rows[0] if rows else None,
        rows[1][0] if len(rows) > 1 else None,
        timeframe,
        grace_seconds=grace_seconds,
        now=now,
        final=final,
    )
