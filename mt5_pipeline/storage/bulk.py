"""Bulk reads and writes: PostgreSQL through binary COPY, SQLite through plain SQL.

``pd.read_sql`` and row-by-row INSERTs spend most of their time turning each value into
a Python object and back. Here the PostgreSQL paths build and parse COPY's binary format
with numpy instead, and :func:`write_frame` upserts through a temporary table and one
``INSERT ... ON CONFLICT``. This module is the codec and those generic paths; the
candles and features_m1 tables' own statements (their faster writes and reads) are
:mod:`mt5_pipeline.storage.candles` and :mod:`mt5_pipeline.storage.features`.

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
from sqlalchemy import Column, Table

from mt5_pipeline.storage.engine import get_engine, is_postgres

# Seconds between 1970-01-01 and PostgreSQL's binary epoch, 2000-01-01 (both UTC).
PG_EPOCH_OFFSET_S = 946_684_800
PG_EPOCH_OFFSET_US = PG_EPOCH_OFFSET_S * 1_000_000
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no extension
COPY_TRAILER = b"\xff\xff"

SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

# ---------------------------------------------------------------------------------------
# Connections
#
# Bulk paths borrow a raw psycopg2 connection from the process-wide SQLAlchemy pool
# (pinged after idle, so a restarted server costs one retry, not a failed request). psycopg2's
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
        if conn is None:  # only a connection already given back to the pool has none
            raise RuntimeError("the pool lent a detached connection")
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
    dtype = np.dtype(
        [("n", ">i2")] + [item for i, fmt in enumerate(formats) for item in ((f"l{i}", ">i4"), (f"v{i}", fmt))]
    )
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
    texts = pd.Series(np.asarray(values, dtype=object))  # None becomes NaT
    parsed = pd.to_datetime(texts, format="ISO8601", utc=True)
    return parsed.astype("datetime64[ns, UTC]")


# ---------------------------------------------------------------------------------------
# Generic upsert
# ---------------------------------------------------------------------------------------


# PostgreSQL's type name -> how write_frame encodes the column for COPY.
_PG_KINDS = {
    "double precision": "f8",
    "real": "f4",
    "bigint": "i8",
    "integer": "i4",
    "smallint": "i2",
    "boolean": "bool",
    "text": "text",
}


def _pg_kind(type_name: str) -> str:
    if type_name in _PG_KINDS:
        return _PG_KINDS[type_name]
    if type_name.startswith("timestamp"):
        return "ts"
    if type_name.startswith("character varying"):
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
        values = (
            series.astype("Int64").to_numpy(dtype=np.int64, na_value=0)
            if nulls.any()
            else series.to_numpy().astype(np.int64)
        )
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
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
        )
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
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(temp, cols, target)
        )
        copy_in(cur, sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(temp, cols), copy_columns, len(frame))
        cur.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                target, cols, cols, temp, sql.SQL(", ").join(map(sql.Identifier, keys)), conflict
            )
        )


def _sqlite_values(series: pd.Series, column: Column[Any], name: str) -> list:
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
    conflict = (
        "DO UPDATE SET " + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in updates) if updates else "DO NOTHING"
    )
    statement = (
        f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) VALUES "
        f"({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(map(quote, keys))}) {conflict}"
    )
    values = [_sqlite_values(frame[c], table.c[c], c) for c in columns]
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(statement, list(zip(*values, strict=True)))
