"""Bulk reads and writes: PostgreSQL through binary COPY, SQLite through plain SQL.

``pd.read_sql`` and row-by-row INSERTs spend most of their time turning each value into
a Python object and back. Here the PostgreSQL paths build and parse COPY's binary format
with numpy instead, and :func:`write_frame` upserts through a temporary table and one
``INSERT ... ON CONFLICT``. (The candle ingest has its own, faster upsert: see
``mt5_pipeline.ingest``.)

Times: PostgreSQL stores ``timestamptz`` (binary: microseconds since 2000-01-01 UTC);
SQLite stores the text SQLAlchemy writes for ``DateTime(timezone=True)``, which is UTC as
``YYYY-MM-DD HH:MM:SS.ffffff``. Both come back as ``datetime64[ns, UTC]``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from psycopg2 import sql
from sqlalchemy import Table

from mt5_pipeline.storage.engine import get_engine, is_postgres

# Seconds between 1970-01-01 and PostgreSQL's binary epoch, 2000-01-01 (both UTC).
PG_EPOCH_OFFSET_S = 946_684_800
PG_EPOCH_OFFSET_US = PG_EPOCH_OFFSET_S * 1_000_000
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no extension
COPY_TRAILER = b"\xff\xff"

CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "tick_volume", "spread", "real_volume", "ingested_at")
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

# ---------------------------------------------------------------------------------------
# Connections
#
# Bulk paths borrow a raw psycopg2 connection from the process-wide SQLAlchemy pool
# (pre-pinged, so a restarted server costs one retry, not a failed request). psycopg2's
# copy_expert hands COPY TO data to a C-level BytesIO.write per row; psycopg 3 yields
# each row through a Python generator, which made reading a million bars about twice as
# slow here. Writing is server-bound either way.
# ---------------------------------------------------------------------------------------


@contextmanager
def pg_connection(database_url: str) -> Iterator[Any]:
    """A pooled psycopg2 connection holding one transaction: committed at the end of the
    block, rolled back if it raises. Thread-safe: each caller gets its own connection."""
    raw = get_engine(database_url).raw_connection()
    try:
        conn = raw.driver_connection
        try:
            yield conn
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # a broken connection: the pool discards it on return
                pass
            raise
    finally:
        raw.close()  # back to the pool


class _ChunkReader:
    """A file for copy_expert that hands over pre-encoded pieces; psycopg2 sends each
    piece it reads as one CopyData message, whatever size it asked for."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces

    def read(self, size: int = -1) -> bytes:
        return next(self._pieces, b"")

    def readline(self, size: int = -1) -> bytes:  # pragma: no cover - psycopg2 only reads
        return self.read(size)


# ---------------------------------------------------------------------------------------
# COPY binary encoding, vectorised.
#
# A binary COPY tuple is: int16 field count, then per field an int32 length (-1 = NULL)
# followed by the value, all big-endian. Rows whose NULLs sit in the same columns and
# whose text values have the same lengths share one layout, so each such group is one
# numpy structured array written out with a single tobytes().
# ---------------------------------------------------------------------------------------

_FIXED_FORMATS = {"f8": ">f8", "f4": ">f4", "i8": ">i8", "i4": ">i4", "i2": ">i2", "bool": "u1", "ts": ">i8"}
_ENCODE_CHUNK_ROWS = 100_000


@dataclass
class CopyColumn:
    """One column ready for binary COPY.

    kind: f8, f4, i8, i4, i2, bool, ts (int64 microseconds since 2000-01-01) or text.
    values: numpy array (text: ``S`` bytes, UTF-8); nulls: bool mask or None.
    """

    kind: str
    values: np.ndarray
    nulls: np.ndarray | None = None

    def variant(self) -> np.ndarray | None:
        """Per row: 0 for NULL, else 1 (+ the byte length for text); None when all rows are alike."""
        if self.values.ndim == 0:
            return None
        if self.kind == "text":
            lengths = np.char.str_len(self.values).astype(np.int32) + 1
            if self.nulls is not None:
                lengths = np.where(self.nulls, 0, lengths)
            return None if lengths.size == 0 or (lengths == lengths[0]).all() else lengths
        if self.nulls is None or not self.nulls.any() or self.nulls.all():
            return None
        return (~self.nulls).astype(np.int32)


def _group_layout(columns: Sequence[CopyColumn], row: int) -> list[tuple[str, str] | None]:
    """Per column the numpy format of its value for the rows like `row` (None = NULL)."""
    layout: list[tuple[str, str] | None] = []
    for col in columns:
        if col.nulls is not None and col.nulls[row]:
            layout.append(None)
        elif col.kind == "text":
            value = col.values.item() if col.values.ndim == 0 else col.values[row]
            layout.append(("text", f"S{len(value)}"))
        else:
            layout.append((col.kind, _FIXED_FORMATS[col.kind]))
    return layout


def _encode_group(columns: Sequence[CopyColumn], rows: np.ndarray | slice, count: int) -> bytes:
    layout = _group_layout(columns, rows.start if isinstance(rows, slice) else int(rows[0]))
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i, spec in enumerate(layout):
        fields.append((f"l{i}", ">i4"))
        if spec is not None:
            fields.append((f"v{i}", spec[1]))
    out = np.empty(count, dtype=np.dtype(fields))
    out["n"] = len(columns)
    for i, (col, spec) in enumerate(zip(columns, layout, strict=True)):
        if spec is None:
            out[f"l{i}"] = -1
            continue
        out[f"l{i}"] = np.dtype(spec[1]).itemsize
        values = col.values if col.values.ndim == 0 else col.values[rows]
        out[f"v{i}"] = values
    return out.tobytes()


def encode_copy_rows(columns: Sequence[CopyColumn], n_rows: int) -> Iterator[bytes]:
    """Binary COPY tuples for `n_rows` rows (no header or trailer), in pieces of ~100k rows."""
    for start in range(0, n_rows, _ENCODE_CHUNK_ROWS):
        stop = min(start + _ENCODE_CHUNK_ROWS, n_rows)
        part = [
            CopyColumn(
                c.kind,
                c.values if c.values.ndim == 0 else c.values[start:stop],
                None if c.nulls is None else c.nulls[start:stop],
            )
            for c in columns
        ]
        count = stop - start
        variants = [v for v in (c.variant() for c in part) if v is not None]
        if not variants:
            yield _encode_group(part, slice(0, count), count)
            continue
        keys = np.stack(variants, axis=1)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        for rows in np.split(order, bounds):
            yield _encode_group(part, rows, len(rows))


def text_column(values: Sequence[str] | np.ndarray | pd.Series, nulls: np.ndarray | None = None) -> CopyColumn:
    series = pd.Series(values, copy=False)
    if nulls is None:
        nulls = series.isna().to_numpy()
    # Few distinct strings (symbols, versions): encode each once, not once per row.
    codes, uniques = pd.factorize(series.where(~nulls, "").astype(str))
    encoded = [str(u).encode("utf-8") for u in uniques]
    width = max((len(e) for e in encoded), default=1) or 1
    table = np.array(encoded or [b""], dtype=f"S{width}")
    return CopyColumn("text", table[np.maximum(codes, 0)], nulls if nulls.any() else None)


def constant_text(value: str) -> CopyColumn:
    data = value.encode("utf-8")
    return CopyColumn("text", np.array(data, dtype=f"S{max(len(data), 1)}"))


def epoch_seconds_to_pg(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds (int64) to PostgreSQL's binary timestamptz (microseconds since 2000)."""
    return (ts.astype(np.int64) - PG_EPOCH_OFFSET_S) * 1_000_000


def datetime_to_pg(value: datetime) -> np.ndarray:
    return np.array(_aware_epoch_us(value) - PG_EPOCH_OFFSET_US, dtype=np.int64)


def _aware_epoch_us(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {value.isoformat()}")
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def copy_in(cur: Any, statement: sql.Composable | str, columns: Sequence[CopyColumn], n_rows: int) -> None:
    """Run ``COPY ... FROM STDIN (FORMAT BINARY)`` (psycopg2 cursor) with the rows of `columns`."""

    def pieces() -> Iterator[bytes]:
        yield COPY_HEADER
        yield from encode_copy_rows(columns, n_rows)
        yield COPY_TRAILER

    cur.copy_expert(statement, _ChunkReader(pieces()))


def copy_out(cur: Any, statement: sql.Composable | str) -> bytes:
    """The bytes of ``COPY ... TO STDOUT`` (psycopg2 cursor)."""
    buffer = io.BytesIO()
    cur.copy_expert(statement, buffer)
    return buffer.getvalue()


def parse_copy_binary(data: bytes, formats: Sequence[str]) -> np.ndarray:
    """Rows of a binary COPY whose fields are all fixed-width and NOT NULL, as a structured
    array with fields v0, v1, ... (big-endian; ``astype`` to use them)."""
    dtype = np.dtype([("n", ">i2")] + [item for i, fmt in enumerate(formats) for item in ((f"l{i}", ">i4"), (f"v{i}", fmt))])
    if not data:
        return np.zeros(0, dtype=dtype)
    if not data.startswith(COPY_SIGNATURE):
        raise RuntimeError("unexpected COPY output: no binary signature")
    start = 19 + int.from_bytes(data[15:19], "big")
    body = len(data) - start - len(COPY_TRAILER)
    if body % dtype.itemsize:
        raise RuntimeError("unexpected COPY output: rows are not the expected fixed width (a NULL?)")
    rows = np.frombuffer(data, dtype=dtype, count=body // dtype.itemsize, offset=start)
    if len(rows) and (rows["n"] != len(formats)).any():
        raise RuntimeError("unexpected COPY output: wrong field count")
    return rows


# ---------------------------------------------------------------------------------------
# SQLite times
# ---------------------------------------------------------------------------------------


def sqlite_datetime_strings(epoch_us: np.ndarray) -> np.ndarray:
    """UTC microseconds since 1970 as the text SQLAlchemy stores for DateTime on SQLite."""
    text = np.datetime_as_string(epoch_us.astype("datetime64[us]"), unit="us")
    return np.char.replace(text, "T", " ")


def sqlite_datetime(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(SQLITE_TS_FORMAT)


def _parse_sqlite_times(values: Sequence[str | None]) -> pd.Series:
    parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=True)
    return parsed.astype("datetime64[ns, UTC]")


# ---------------------------------------------------------------------------------------
# Candles
# ---------------------------------------------------------------------------------------


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
    return pd.Series(us.view("datetime64[us]").astype("datetime64[ns]")).dt.tz_localize("UTC")


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


def _read_candles_pg(url, symbol, timeframe, start, end, last_n) -> pd.DataFrame:
    where = [sql.SQL("symbol = {}").format(sql.Literal(symbol)), sql.SQL("timeframe = {}").format(sql.Literal(timeframe))]
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


def _read_candles_sqlite(url, symbol, timeframe, start, end, last_n) -> pd.DataFrame:
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
    frame = pd.DataFrame({name: np.asarray(values) for name, values in zip(CANDLE_COLUMNS, columns, strict=True) if name not in ("ts", "ingested_at")})
    frame.insert(0, "ts", _parse_sqlite_times(columns[0]))
    frame["ingested_at"] = _parse_sqlite_times(columns[8])
    for name in ("open", "high", "low", "close"):
        frame[name] = frame[name].astype(np.float64)
    for name in ("tick_volume", "spread", "real_volume"):
        frame[name] = frame[name].astype(np.int64)
    return frame[list(CANDLE_COLUMNS)]


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
       (SELECT c.ts FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe ORDER BY c.ts DESC LIMIT 1),
       n.bars,
       (SELECT c.ingested_at FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe ORDER BY c.ingested_at DESC LIMIT 1)
FROM series s LEFT JOIN candle_series n ON n.symbol = s.symbol AND n.timeframe = s.timeframe
ORDER BY 1, 2"""
_PG_COUNT = "SELECT count(*) FROM candles WHERE symbol = %s AND timeframe = %s"

# SQLite: the same walk from Python, one primary-key probe per step (in-process calls).
_SQLITE_FIRST = "SELECT symbol, timeframe FROM candles ORDER BY symbol, timeframe LIMIT 1"
_SQLITE_NEXT = "SELECT symbol, timeframe FROM candles WHERE (symbol, timeframe) > (?, ?) ORDER BY symbol, timeframe LIMIT 1"
_SQLITE_STATS = (
    "SELECT (SELECT max(ts) FROM candles WHERE symbol = ?1 AND timeframe = ?2), "
    "COALESCE((SELECT bars FROM candle_series WHERE symbol = ?1 AND timeframe = ?2), "
    "(SELECT count(*) FROM candles WHERE symbol = ?1 AND timeframe = ?2)), "
    "(SELECT max(ingested_at) FROM candles WHERE symbol = ?1 AND timeframe = ?2)"
)


def _series(database_url: str, *, stats: bool) -> list[tuple]:
    """(symbol, timeframe, newest_ts, bars, newest_ingested_at) per series; stats None unless asked."""
    if is_postgres(database_url):
        query = _PG_SERIES + (_PG_SERIES_STATS if stats else "SELECT symbol, timeframe, NULL, NULL, NULL FROM series ORDER BY 1, 2")
        with pg_connection(database_url) as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL jit = off")  # index probes: compiling them costs more than running them
            cur.execute(query)
            rows = cur.fetchall()
            if stats:
                for i, row in enumerate(rows):
                    if row[3] is None:  # not kept by the ingest core: counted, once per call
                        cur.execute(_PG_COUNT, (row[0], row[1]))
                        rows[i] = (*row[:3], cur.fetchone()[0], row[4])

        def when(value):
            return value.astimezone(timezone.utc) if value is not None else None

    else:
        rows = []
        with get_engine(database_url).connect() as conn:
            key = conn.exec_driver_sql(_SQLITE_FIRST).first()
            while key is not None:
                figures = conn.exec_driver_sql(_SQLITE_STATS, (key[0], key[1])).first() if stats else (None, None, None)
                rows.append((key[0], key[1], *figures))
                key = conn.exec_driver_sql(_SQLITE_NEXT, (key[0], key[1])).first()

        def when(value):
            return pd.Timestamp(value, tz="UTC").to_pydatetime() if value is not None else None

    return [(r[0], r[1], when(r[2]), r[3], when(r[4])) for r in rows]


# ---------------------------------------------------------------------------------------
# Generic upsert
# ---------------------------------------------------------------------------------------


def _pg_kind(type_name: str) -> str:
    if type_name == "double precision":
        return "f8"
    if type_name == "real":
        return "f4"
    if type_name == "bigint":
        return "i8"
    if type_name == "integer":
        return "i4"
    if type_name == "smallint":
        return "i2"
    if type_name == "boolean":
        return "bool"
    if type_name.startswith("timestamp"):
        return "ts"
    if type_name == "text" or type_name.startswith("character varying"):
        return "text"
    raise TypeError(f"write_frame cannot COPY a column of type {type_name!r}")


def _datetime_us(series: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch microseconds, NaT mask) of a timezone-aware column."""
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        if series.dtype == object:
            series = pd.to_datetime(series, utc=False)
        if not isinstance(series.dtype, pd.DatetimeTZDtype):
            raise ValueError(f"column {name!r} must hold timezone-aware (UTC) times, got {series.dtype}")
    nulls = series.isna().to_numpy()
    values = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]").view(np.int64)
    return values, nulls


def _copy_column(series: pd.Series, kind: str, name: str) -> CopyColumn:
    if kind == "ts":
        values, nulls = _datetime_us(series, name)
        return CopyColumn("ts", values - PG_EPOCH_OFFSET_US, nulls if nulls.any() else None)
    if kind == "text":
        return text_column(series)
    nulls = series.isna().to_numpy()
    if kind == "bool":
        values = series.where(~nulls, False).astype(bool).to_numpy()
    elif kind in ("f8", "f4"):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = series.astype("Int64").to_numpy(dtype=np.int64, na_value=0) if nulls.any() else series.to_numpy().astype(np.int64)
    return CopyColumn(kind, values, nulls if nulls.any() else None)


def _dedupe(frame: pd.DataFrame, key_columns: list[str]) -> pd.DataFrame:
    duplicated = frame.duplicated(subset=key_columns, keep="last")
    return frame.loc[~duplicated] if duplicated.any() else frame


def write_frame(database_url: str, table: Table, frame: pd.DataFrame, key_columns: list[str]) -> int:
    """Upsert the frame's rows into `table` on `key_columns`; returns the rows written.

    Only the frame's columns are written (others keep their defaults or stored values).
    Rows repeating a key keep the last. NaN / NaT / None are stored as NULL.
    PostgreSQL: binary COPY into a temporary table + one INSERT ... ON CONFLICT DO UPDATE.
    SQLite: executemany of INSERT ... ON CONFLICT DO UPDATE.
    """
    unknown = [c for c in frame.columns if c not in table.c]
    if unknown:
        raise ValueError(f"write_frame: {table.name} has no column(s) {unknown}")
    missing_keys = [k for k in key_columns if k not in frame.columns]
    if missing_keys:
        raise ValueError(f"write_frame: the frame lacks key column(s) {missing_keys}")
    if frame.empty:
        return 0
    frame = _dedupe(frame.reset_index(drop=True), key_columns)
    columns = list(frame.columns)
    if is_postgres(database_url):
        _write_frame_pg(database_url, table, frame, columns, key_columns)
    else:
        _write_frame_sqlite(database_url, table, frame, columns, key_columns)
    return len(frame)


def _write_frame_pg(url: str, table: Table, frame: pd.DataFrame, columns: list[str], keys: list[str]) -> None:
    target = sql.Identifier(*([table.schema] if table.schema else []), table.name)
    temp = sql.Identifier(f"_write_{table.name}")
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    updates = [c for c in columns if c not in keys]
    conflict = (
        sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates))
        if updates
        else sql.SQL("DO NOTHING")
    )
    with pg_connection(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"{table.schema}.{table.name}" if table.schema else table.name,),
        )
        types = dict(cur.fetchall())
        copy_columns = [_copy_column(frame[c], _pg_kind(types[c]), c) for c in columns]
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(temp, cols, target))
        copy_in(cur, sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(temp, cols), copy_columns, len(frame))
        cur.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                target, cols, cols, temp, sql.SQL(", ").join(map(sql.Identifier, keys)), conflict
            )
        )


def _sqlite_values(series: pd.Series, column, name: str) -> list:
    from sqlalchemy import Boolean, DateTime

    kind = getattr(column.type, "impl", column.type)  # see through TypeDecorators (UtcDateTime)
    nulls = series.isna().to_numpy()
    if isinstance(kind, DateTime):
        us, nat = _datetime_us(series, name)
        text = sqlite_datetime_strings(us).astype(object)
        text[nat] = None
        return text.tolist()
    if isinstance(kind, Boolean):
        values = series.where(~nulls, False).astype(bool).astype(int).astype(object).to_numpy()
    else:
        values = series.to_numpy(dtype=object)
    if nulls.any():
        values = values.copy()
        values[nulls] = None
    return values.tolist()


def _write_frame_sqlite(url: str, table: Table, frame: pd.DataFrame, columns: list[str], keys: list[str]) -> None:
    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    updates = [c for c in columns if c not in keys]
    conflict = "DO UPDATE SET " + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in updates) if updates else "DO NOTHING"
    statement = (
        f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(map(quote, keys))}) {conflict}"
    )
    values = [_sqlite_values(frame[c], table.c[c], c) for c in columns]
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(statement, list(zip(*values, strict=True)))
