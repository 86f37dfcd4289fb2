"""The features_m1 table: every statement that reads or writes it, on both backends.

:mod:`mt5_pipeline.learning.features` decides which bars to (re)compute; this module finds the
stale ones, replaces the recomputed tail, reads rows back and serialises the writers, so
feature SQL is written once. The PostgreSQL paths move rows with binary COPY (a million
rows are read or replaced in about a second); SQLite's use plain SQL.

The feature-set version is the caller's (it belongs to the formulas): every function
that writes or filters on it takes it as ``version``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from psycopg2 import sql
from sqlalchemy import Float, delete, func, insert, select, text
from sqlalchemy.engine import Connection

from mt5_pipeline.clock import parse_iso
from mt5_pipeline.storage.bulk import (
    PG_EPOCH_OFFSET_US,
    CopyColumn,
    constant_text,
    copy_in,
    copy_out,
    datetime_to_pg,
    parse_copy_binary,
    pg_connection,
    write_frame,
)
from mt5_pipeline.storage.dialect import RowsInsert
from mt5_pipeline.storage.engine import get_engine, is_postgres
from mt5_pipeline.storage.schema import candles, features_m1

# The raw levels and features, in the table's order (the formulas' FLOAT_COLUMNS).
FLOAT_COLUMNS: tuple[str, ...] = tuple(c.name for c in features_m1.columns if isinstance(c.type, Float))
_TIME_COLUMNS = ("ts", "source_ingested_at", "computed_at")
_WRITE_COLUMNS = (
    "symbol",
    "timeframe",
    "ts",
    *FLOAT_COLUMNS,
    "after_gap",
    "usable",
    "feature_set_version",
    "source_ingested_at",
    "computed_at",
)


def _as_utc(value: datetime | str | None) -> datetime | None:
    return None if value is None else parse_iso(value)


# ---- finding what is stale -----------------------------------------------------------------


class NewestFeature(NamedTuple):
    ts: datetime
    source_ingested_at: datetime
    feature_set_version: str


def newest_feature(database_url: str, symbol: str, timeframe: str) -> NewestFeature | None:
    """The series' newest feature row: its bar, the candle stamp it was computed from, its version."""
    f = features_m1.c
    with get_engine(database_url).connect() as conn:
        row = conn.execute(
            select(f.ts, f.source_ingested_at, f.feature_set_version)
            .where(f.symbol == symbol, f.timeframe == timeframe)
            .order_by(f.ts.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return NewestFeature(parse_iso(row.ts), parse_iso(row.source_ingested_at), str(row.feature_set_version))


def first_stale_candle(
    database_url: str,
    symbol: str,
    timeframe: str,
    *,
    version: str,
    stamped_since: datetime,
    after: datetime,
    closed_until: datetime | None,
) -> datetime | None:
    """The earliest bar (``ts <= closed_until``) that is either stamped at or after
    ``stamped_since`` with an ``ingested_at`` other than the ``source_ingested_at`` of its
    ``version`` features (missing features count), or newer than ``after`` whatever its
    stamp. The first probe walks the (symbol, timeframe, ingested_at) index."""
    f, c = features_m1.c, candles.c
    closed = [] if closed_until is None else [c.ts <= closed_until]
    # A correlated scalar probe per candidate: the planner must look each one up by
    # the primary key, whatever its statistics say (fresh tables have none, and a
    # join planned on guesses walked 20,000 x 20,000 rows). OFFSET 0 keeps PostgreSQL
    # from turning min() into a walk of the whole primary key.
    computed_from = (
        select(f.source_ingested_at)
        .where(f.symbol == c.symbol, f.timeframe == c.timeframe, f.ts == c.ts, f.feature_set_version == version)
        .scalar_subquery()
    )
    stale = (
        select(c.ts.label("ts"))
        .where(
            c.symbol == symbol,
            c.timeframe == timeframe,
            c.ingested_at >= stamped_since,
            computed_from.is_distinct_from(c.ingested_at),
            *closed,
        )
        .offset(0)
        .subquery()
    )
    with get_engine(database_url).connect() as conn:
        changed = conn.execute(select(func.min(stale.c.ts))).scalar()
        beyond = conn.execute(
            select(c.ts)
            .where(c.symbol == symbol, c.timeframe == timeframe, c.ts > after, *closed)
            .order_by(c.ts)
            .limit(1)
        ).scalar()
    found = [t for t in (_as_utc(changed), _as_utc(beyond)) if t is not None]
    return min(found) if found else None


def newest_ts(database_url: str, symbol: str, timeframe: str) -> datetime | None:
    f = features_m1.c
    with get_engine(database_url).connect() as conn:
        value = conn.execute(select(func.max(f.ts)).where(f.symbol == symbol, f.timeframe == timeframe)).scalar()
    return _as_utc(value)


def feature_symbols(database_url: str, timeframe: str = "M1") -> list[str]:
    """Symbols that have feature rows for the timeframe."""
    f = features_m1.c
    with get_engine(database_url).connect() as conn:
        return sorted(conn.execute(select(f.symbol).where(f.timeframe == timeframe).distinct()).scalars())


# ---- writing ------------------------------------------------------------------------------


@contextmanager
def one_writer(database_url: str, symbol: str, timeframe: str) -> Iterator[None]:
    """Serialize the feature updates of one series across processes (PostgreSQL).

    Two runs for consecutive bars can overlap (the sensor launches one per new bar); on
    PostgreSQL the second would delete and re-insert the tail under the first's feet and
    fail on the primary key. A session advisory lock makes it wait, then find little or
    nothing stale. SQLite has one writer at a time anyway, and its upsert is idempotent.
    """
    if not is_postgres(database_url):
        yield
        return
    key = {"key": _writer_key(symbol, timeframe)}
    with get_engine(database_url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), key)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), key)
            conn.commit()


def replace_rows(
    database_url: str,
    symbol: str,
    timeframe: str,
    rows: pd.DataFrame,
    *,
    start: datetime | None,
    version: str,
    computed_at: datetime,
) -> None:
    """Store ``rows`` (ts, the float columns, after_gap, usable, source_ingested_at) as the
    series' features from ``start`` on; ``start`` None: the whole series.

    PostgreSQL: the old rows from ``start`` on are deleted and the new ones copied in, in
    one transaction (readers see the old rows until then). SQLite: an upsert, and a whole-
    series replace also deletes the rows whose candle is gone.
    """
    if is_postgres(database_url):
        _replace_rows_pg(database_url, symbol, timeframe, rows, start, version, computed_at)
        return
    if len(rows):
        rows = rows.assign(feature_set_version=version, computed_at=pd.Timestamp(computed_at))
        rows.insert(0, "symbol", symbol)
        rows.insert(1, "timeframe", timeframe)
        write_frame(database_url, features_m1, rows, ["symbol", "timeframe", "ts"])
    if start is None:
        _delete_orphans(database_url, symbol, timeframe)


def _replace_rows_pg(
    database_url: str,
    symbol: str,
    timeframe: str,
    out: pd.DataFrame,
    start: datetime | None,
    version: str,
    computed_at: datetime,
) -> None:
    """A DELETE and a binary COPY straight into the table: an upsert through a temporary
    table and ON CONFLICT cost twice as long for a million rows, and the rows from
    ``start`` on are all recomputed anyway. Rows holding NULLs (the warm-up) go in their
    own COPY so the million others share one fixed layout."""

    def times(values: Any) -> np.ndarray:
        return pd.DatetimeIndex(values).as_unit("us").asi8 - PG_EPOCH_OFFSET_US

    n = len(out)
    floats = {c: out[c].to_numpy(dtype=np.float64) for c in FLOAT_COLUMNS}
    has_null = np.zeros(n, dtype=bool)
    for values in floats.values():
        has_null |= np.isnan(values)
    ts = times(out["ts"])
    source = times(out["source_ingested_at"])
    after_gap = out["after_gap"].to_numpy(dtype=bool)
    usable = out["usable"].to_numpy(dtype=bool)

    def columns(rows: np.ndarray) -> list[CopyColumn]:
        cols = [constant_text(symbol), constant_text(timeframe), CopyColumn("ts", ts[rows])]
        for c in FLOAT_COLUMNS:
            v = floats[c][rows]
            nulls = np.isnan(v)
            cols.append(CopyColumn("f8", v, nulls if nulls.any() else None))
        cols += [
            CopyColumn("bool", after_gap[rows]),
            CopyColumn("bool", usable[rows]),
            constant_text(version),
            CopyColumn("ts", source[rows]),
            CopyColumn("ts", datetime_to_pg(computed_at)),
        ]
        return cols

    where = sql.SQL("symbol = {} AND timeframe = {}").format(sql.Literal(symbol), sql.Literal(timeframe))
    if start is not None:
        where = sql.SQL("{} AND ts >= {}").format(where, sql.Literal(start))
    copy = sql.SQL("COPY features_m1 ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, _WRITE_COLUMNS))
    )
    with pg_connection(database_url) as conn, conn.cursor() as cur:
        # Derived rows: a crash that loses this commit leaves the bars stale, and the next
        # run recomputes them. Not waiting for the WAL flush takes a disk write off the
        # live path (closed bar -> signal).
        cur.execute("SET LOCAL synchronous_commit TO OFF")
        cur.execute(sql.SQL("DELETE FROM features_m1 WHERE {}").format(where))
        for rows in (np.flatnonzero(has_null), np.flatnonzero(~has_null)):
            if len(rows):
                copy_in(cur, copy, columns(rows), len(rows))


class NewRows(NamedTuple):
    """A series' newest feature rows as arrays (the live worker's new bars: no frame on the hot path)."""

    ts: list[datetime]
    matrix: np.ndarray  # one row per bar, FLOAT_COLUMNS in order; NaN is stored as NULL
    after_gap: np.ndarray
    usable: np.ndarray
    source_ingested_at: list[datetime]


def _writer_key(symbol: str, timeframe: str) -> str:
    return f"features_m1:{symbol}:{timeframe}"


_PG_DELETE_FROM = "DELETE FROM features_m1 WHERE symbol = %s AND timeframe = %s AND ts >= %s"
_PG_INSERT = RowsInsert(features_m1)


def write_new_rows(
    conn: Connection,
    symbol: str,
    timeframe: str,
    rows: NewRows,
    *,
    version: str,
    computed_at: datetime,
    alone: bool = False,
) -> None:
    """Store ``rows`` as the series' features from their first bar on, in ``conn``'s
    transaction (the live worker commits them with the bar's signal: one commit a bar).

    PostgreSQL: the transaction takes the series' writer lock (the advisory lock
    :func:`one_writer` holds per session; the two exclude each other) until it commits,
    then deletes from the first bar on and inserts: a few rows, plain statements, not a
    COPY. SQLite has one writer at a time anyway. ``alone``: the transaction holds only
    these rows, so (as the COPY path) its commit need not wait for the WAL flush: a crash
    that loses it leaves the bar stale, and the next update recomputes it.
    """
    if not rows.ts:
        return
    if conn.dialect.name == "postgresql":
        if alone:
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        statements, params = new_rows_sql(symbol, timeframe, rows, version=version, computed_at=computed_at)
        conn.exec_driver_sql(statements, tuple(params))  # a tuple: one parameter set (a list is many)
        return
    values = _new_row_values(symbol, timeframe, rows, version=version, computed_at=computed_at)
    f = features_m1.c
    conn.execute(delete(features_m1).where(f.symbol == symbol, f.timeframe == timeframe, f.ts >= rows.ts[0]))
    conn.execute(insert(features_m1), [dict(zip(_WRITE_COLUMNS, v, strict=True)) for v in values])


def _new_row_values(
    symbol: str, timeframe: str, rows: NewRows, *, version: str, computed_at: datetime
) -> list[tuple[Any, ...]]:
    return [
        (
            symbol,
            timeframe,
            ts,
            *(None if v != v else v for v in floats),  # NaN (warm-up) -> NULL, as the COPY path stores it
            bool(after_gap),
            bool(usable),
            version,
            source,
            computed_at,
        )
        for ts, floats, after_gap, usable, source in zip(
            rows.ts, rows.matrix.tolist(), rows.after_gap, rows.usable, rows.source_ingested_at, strict=True
        )
    ]


def new_rows_sql(
    symbol: str, timeframe: str, rows: NewRows, *, version: str, computed_at: datetime
) -> tuple[str, list[Any]]:
    """:func:`write_new_rows` on PostgreSQL as one string of statements and its parameters,
    for a caller that sends them in one round trip with what commits with them (the live
    worker's bar write: these rows and the bar's signal, one implicit transaction)."""
    values = _new_row_values(symbol, timeframe, rows, version=version, computed_at=computed_at)
    insert_sql, insert_params = _PG_INSERT.render(_WRITE_COLUMNS, values)
    statements = f"SELECT pg_advisory_xact_lock(hashtext(%s));\n{_PG_DELETE_FROM};\n{insert_sql}"
    return statements, [_writer_key(symbol, timeframe), symbol, timeframe, rows.ts[0], *insert_params]


def _delete_orphans(database_url: str, symbol: str, timeframe: str) -> int:
    """Delete feature rows whose candle is gone (only a whole-series replace looks)."""
    f, c = features_m1.c, candles.c
    with get_engine(database_url).begin() as conn:
        n_features = conn.execute(select(func.count()).where(f.symbol == symbol, f.timeframe == timeframe)).scalar_one()
        n_candles = conn.execute(select(func.count()).where(c.symbol == symbol, c.timeframe == timeframe)).scalar_one()
        # Every candle has its row after a full run, so equal counts mean equal sets.
        if n_features == n_candles:
            return 0
        candle = select(c.ts).where(c.symbol == f.symbol, c.timeframe == f.timeframe, c.ts == f.ts).scalar_subquery()
        return conn.execute(
            delete(features_m1).where(f.symbol == symbol, f.timeframe == timeframe, candle.is_(None))
        ).rowcount


# ---- reading ------------------------------------------------------------------------------


def read_rows(
    database_url: str, symbols: list[str], timeframe: str, *, version: str, usable_only: bool
) -> pd.DataFrame:
    """The symbols' feature rows, sorted by symbol (in the order given), ts: symbol,
    timeframe, ts, the float columns, after_gap, usable, feature_set_version,
    source_ingested_at, computed_at. ``usable_only``: usable rows of ``version`` only.
    NULLs (warm-up) come back as NaN; times as datetime64[ns, UTC]."""
    read = _read_pg if is_postgres(database_url) else _read_sqlite
    parts = [read(database_url, symbol, timeframe, version, usable_only) for symbol in symbols]
    if not parts:
        return _empty_rows()
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _empty_rows() -> pd.DataFrame:
    frame = pd.DataFrame({"symbol": pd.Series(dtype=object), "timeframe": pd.Series(dtype=object)})
    frame["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    for col in FLOAT_COLUMNS:
        frame[col] = pd.Series(dtype="float64")
    frame["after_gap"] = pd.Series(dtype=bool)
    frame["usable"] = pd.Series(dtype=bool)
    frame["feature_set_version"] = pd.Series(dtype=object)
    frame["source_ingested_at"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["computed_at"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame


def _finish(
    symbol: str, timeframe: str, columns: dict[str, np.ndarray | pd.Series], versions: str | np.ndarray | pd.Series
) -> pd.DataFrame:
    n = len(columns["ts"])
    frame = pd.DataFrame({"symbol": [symbol] * n, "timeframe": [timeframe] * n})
    for name in ("ts", *FLOAT_COLUMNS, "after_gap", "usable"):
        frame[name] = columns[name]
    frame["feature_set_version"] = versions
    frame["source_ingested_at"] = columns["source_ingested_at"]
    frame["computed_at"] = columns["computed_at"]
    return frame


def _read_pg(database_url: str, symbol: str, timeframe: str, version: str, usable_only: bool) -> pd.DataFrame:
    """Binary COPY parsed with numpy: every column is made fixed-width and NOT NULL (NULL
    -> NaN, the version -> whether it is ``version``) so one structured dtype reads all rows."""
    select_list = [
        sql.SQL("ts"),
        *(sql.SQL("COALESCE({}, 'NaN'::float8)").format(sql.Identifier(c)) for c in FLOAT_COLUMNS),
        sql.SQL("after_gap"),
        sql.SQL("usable"),
        sql.SQL("feature_set_version = {}").format(sql.Literal(version)),
        sql.SQL("source_ingested_at"),
        sql.SQL("computed_at"),
    ]
    formats = (">i8", *(">f8" for _ in FLOAT_COLUMNS), "u1", "u1", "u1", ">i8", ">i8")
    where = sql.SQL("symbol = {} AND timeframe = {}").format(sql.Literal(symbol), sql.Literal(timeframe))
    if usable_only:
        where = sql.SQL("{} AND usable AND feature_set_version = {}").format(where, sql.Literal(version))
    # COPY takes no parameters; sql.Literal quotes on the client.
    statement = sql.SQL("COPY (SELECT {} FROM features_m1 WHERE {} ORDER BY ts) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(", ").join(select_list), where
    )
    with pg_connection(database_url) as conn, conn.cursor() as cur:
        rows = parse_copy_binary(copy_out(cur, statement), formats)
        if len(rows) == 0:
            return _empty_rows()
        is_current = rows[f"v{len(formats) - 3}"].astype(bool)
        versions: np.ndarray | str = version
        if not is_current.all():
            cur.execute(
                "SELECT feature_set_version FROM features_m1 WHERE symbol = %s AND timeframe = %s ORDER BY ts",
                (symbol, timeframe),
            )
            versions = np.array([v for (v,) in cur.fetchall()], dtype=object)

    def times(values: np.ndarray) -> pd.Series:
        us = values.astype(np.int64) + PG_EPOCH_OFFSET_US
        return pd.Series(us.view("datetime64[us]").astype("datetime64[ns]")).dt.tz_localize("UTC")

    columns: dict[str, np.ndarray | pd.Series] = {"ts": times(rows["v0"])}
    for i, c in enumerate(FLOAT_COLUMNS, start=1):
        columns[c] = rows[f"v{i}"].astype(np.float64)
    k = len(FLOAT_COLUMNS) + 1
    columns["after_gap"] = rows[f"v{k}"].astype(bool)
    columns["usable"] = rows[f"v{k + 1}"].astype(bool)
    columns["source_ingested_at"] = times(rows[f"v{k + 3}"])
    columns["computed_at"] = times(rows[f"v{k + 4}"])
    return _finish(symbol, timeframe, columns, versions)


def _read_sqlite(database_url: str, symbol: str, timeframe: str, version: str, usable_only: bool) -> pd.DataFrame:
    names = ("ts", *FLOAT_COLUMNS, "after_gap", "usable", "feature_set_version", "source_ingested_at", "computed_at")
    query = f"SELECT {', '.join(names)} FROM features_m1 WHERE symbol = ? AND timeframe = ?"
    params: tuple = (symbol, timeframe)
    if usable_only:
        query += " AND usable = 1 AND feature_set_version = ?"
        params += (version,)
    with get_engine(database_url).connect() as conn:
        rows = conn.exec_driver_sql(query + " ORDER BY ts", params).fetchall()
    if not rows:
        return _empty_rows()
    values = dict(zip(names, zip(*rows, strict=True), strict=True))
    columns: dict[str, np.ndarray | pd.Series] = {c: np.array(values[c], dtype=np.float64) for c in FLOAT_COLUMNS}
    for c in _TIME_COLUMNS:
        columns[c] = pd.to_datetime(pd.Series(values[c], dtype=object), format="ISO8601", utc=True).astype(
            "datetime64[ns, UTC]"
        )
    columns["after_gap"] = np.array(values["after_gap"], dtype=bool)
    columns["usable"] = np.array(values["usable"], dtype=bool)
    return _finish(symbol, timeframe, columns, np.array(values["feature_set_version"], dtype=object))
