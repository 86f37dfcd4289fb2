"""features_m1: the features of every closed bar, stored, and kept up to date incrementally.

The formulas live in :mod:`mt5_pipeline.indicators`; this module decides which bars to
(re)compute and stores them. Rules, each tested:

- **Closed bars only.** The forming bar gets no row (:mod:`mt5_pipeline.bars`): a feature
  row is never computed from a partial bar; it is computed once the bar has closed.
- **Incremental.** :func:`update_features` recomputes from the earliest new or changed
  bar onward, reading ``LOOKBACK_BARS`` bars before it. (13/14)^500 is below 1e-16, so
  the result equals a full recomputation to far better than 1e-9. ``usable`` agrees too:
  if the look-back is full the bars written have at least ``LOOKBACK_BARS`` >=
  ``WARMUP_BARS`` predecessors; if it is short it holds the whole history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select, text

from mt5_pipeline.bars import closed_cutoff
from mt5_pipeline.clock import parse_iso, resolve_now
from mt5_pipeline.indicators import (
    FEATURE_SET_VERSION,
    FLOAT_COLUMNS,
    WARMUP_BARS,
    compute_features,
)
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import candles, features_m1

log = logging.getLogger(__name__)

# 500, not more: every live bar reads and recomputes this many, and beyond it the
# recursions' seeds weigh less than 1e-16.
LOOKBACK_BARS = 500
# Candles committed out of order (a slow transaction whose ingested_at is older than a
# faster one's) are still found if they are this much older than the watermark.
WATERMARK_MARGIN = timedelta(seconds=60)

assert WARMUP_BARS <= LOOKBACK_BARS


# ---- storage: features_m1 ------------------------------------------------------------------


@dataclass
class FeatureUpdate:
    symbol: str
    timeframe: str
    rows_written: int
    newest_ts: datetime | None
    lookback_bars: int  # bars read before the first recomputed one
    recomputed_from: datetime | None  # first bar written; None when nothing was stale
    full: bool


def _as_utc(value: datetime | str | None) -> datetime | None:
    return None if value is None else parse_iso(value)


def newest_candle_ts(database_url: str, symbol: str, timeframe: str) -> datetime | None:
    """The series' newest stored bar, forming or not (one primary-key lookup)."""
    c = candles.c
    with get_engine(database_url).connect() as conn:
        value = conn.execute(select(c.ts).where(c.symbol == symbol, c.timeframe == timeframe).order_by(c.ts.desc()).limit(1)).scalar()
    return _as_utc(value)


def first_stale_bar(
    database_url: str, symbol: str, timeframe: str = "M1", *, closed_until: datetime | None = None
) -> tuple[datetime | None, bool]:
    """(open time of the earliest bar whose features are missing or stale, whether to recompute everything).

    Only closed bars count (``ts <= closed_until``, see :mod:`mt5_pipeline.bars`): the
    forming bar gets no feature row, so a feature row is never computed from a partial bar.

    Stale: the candle's ``ingested_at`` differs from the ``source_ingested_at`` its
    features were computed from (ingest re-stamps a bar it replaced). Only candles stamped
    after the watermark are compared, through the (symbol, timeframe, ingested_at) index:
    the watermark is the newest feature row's ``source_ingested_at`` minus
    ``WATERMARK_MARGIN``, since every run computes up to the newest bar it saw, and a bar
    changed after that run was stamped after that bar was (less a slow commit's lag).
    """
    f, c = features_m1.c, candles.c
    with get_engine(database_url).connect() as conn:
        newest = conn.execute(
            select(f.ts, f.source_ingested_at, f.feature_set_version)
            .where(f.symbol == symbol, f.timeframe == timeframe)
            .order_by(f.ts.desc())
            .limit(1)
        ).first()
        if newest is None or str(newest.feature_set_version) != FEATURE_SET_VERSION:
            return None, True
        newest_ts = _as_utc(newest.ts)
        closed = [] if closed_until is None else [c.ts <= closed_until]
        watermark = _as_utc(newest.source_ingested_at) - WATERMARK_MARGIN
        # A correlated scalar probe per candidate: the planner must look each one up by
        # the primary key, whatever its statistics say (fresh tables have none, and a
        # join planned on guesses walked 20,000 x 20,000 rows). OFFSET 0 keeps PostgreSQL
        # from turning min() into a walk of the whole primary key.
        computed_from = (
            select(f.source_ingested_at)
            .where(f.symbol == c.symbol, f.timeframe == c.timeframe, f.ts == c.ts, f.feature_set_version == FEATURE_SET_VERSION)
            .scalar_subquery()
        )
        stale = (
            select(c.ts.label("ts"))
            .where(
                c.symbol == symbol,
                c.timeframe == timeframe,
                c.ingested_at >= watermark,
                computed_from.is_distinct_from(c.ingested_at),
                *closed,
            )
            .offset(0)
            .subquery()
        )
        changed = conn.execute(select(func.min(stale.c.ts))).scalar()
        # Bars newer than every feature row, whatever their stamp (a clock that went back).
        beyond = conn.execute(
            select(c.ts).where(c.symbol == symbol, c.timeframe == timeframe, c.ts > newest_ts, *closed).order_by(c.ts).limit(1)
        ).scalar()
    found = [t for t in (_as_utc(changed), _as_utc(beyond)) if t is not None]
    return (min(found) if found else None), False


@contextmanager
def _one_writer_per_symbol(database_url: str, symbol: str, timeframe: str) -> Iterator[None]:
    """Serialize feature updates of one symbol across processes (PostgreSQL).

    Two runs for consecutive bars can overlap (the sensor launches one per new bar); on
    PostgreSQL the second would delete and re-insert the tail under the first's feet and
    fail on the primary key. A session advisory lock makes it wait, then find little or
    nothing stale. SQLite has one writer at a time anyway, and its upsert is idempotent.
    """
    from mt5_pipeline.storage.engine import is_postgres

    if not is_postgres(database_url):
        yield
        return
    key = {"key": f"features_m1:{symbol}:{timeframe}"}
    with get_engine(database_url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), key)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), key)
            conn.commit()


def update_features(
    database_url: str,
    symbol: str,
    timeframe: str = "M1",
    *,
    full: bool = False,
    now: datetime | None = None,
) -> FeatureUpdate:
    """Compute and store the features of new or changed bars (all bars when ``full``).

    Incremental: recompute from the earliest stale bar onward (see :func:`first_stale_bar`)
    with ``LOOKBACK_BARS`` bars before it; a full run also deletes feature rows whose
    candle is gone. Only closed bars get features (``now`` decides which bar is still
    forming). Safe to call from several processes at once.
    """
    with _one_writer_per_symbol(database_url, symbol, timeframe):
        return _update_features(database_url, symbol, timeframe, full=full, now=now)


def _update_features(database_url: str, symbol: str, timeframe: str, *, full: bool, now: datetime | None) -> FeatureUpdate:
    from mt5_pipeline.storage.bulk import write_frame
    from mt5_pipeline.storage.candles import read_candles
    from mt5_pipeline.storage.engine import is_postgres

    computed_at = resolve_now(now)
    closed_until = closed_cutoff(timeframe, now=computed_at, newest_open=newest_candle_ts(database_url, symbol, timeframe))
    start: datetime | None = None
    if not full:
        start, full = first_stale_bar(database_url, symbol, timeframe, closed_until=closed_until)
        if start is None and not full:
            return FeatureUpdate(symbol, timeframe, 0, _newest_feature_ts(database_url, symbol, timeframe), 0, None, False)

    if full:
        bars = read_candles(database_url, symbol, timeframe, end=closed_until)
        lookback = 0
    else:
        assert start is not None
        # Bounds are inclusive and bar times are whole seconds: a microsecond before `start`
        # is the bar before it.
        before = read_candles(database_url, symbol, timeframe, end=start - timedelta(microseconds=1), last_n=LOOKBACK_BARS)
        rest = read_candles(database_url, symbol, timeframe, start=start, end=closed_until)
        lookback = len(before)
        bars = pd.concat([before, rest], ignore_index=True) if lookback else rest

    feats = compute_features(bars, timeframe=timeframe)
    out = feats.iloc[lookback:].reset_index(drop=True) if lookback else feats
    if is_postgres(database_url):
        _replace_tail_pg(database_url, symbol, timeframe, out, None if full else start, computed_at)
    else:
        if len(out):
            out.insert(0, "symbol", symbol)
            out.insert(1, "timeframe", timeframe)
            out["feature_set_version"] = FEATURE_SET_VERSION
            out["computed_at"] = pd.Timestamp(computed_at)
            write_frame(database_url, features_m1, out, ["symbol", "timeframe", "ts"])
        if full:
            _delete_orphans(database_url, symbol, timeframe)
    newest = out["ts"].iloc[-1].to_pydatetime() if len(out) else _newest_feature_ts(database_url, symbol, timeframe)
    first = out["ts"].iloc[0].to_pydatetime() if len(out) else None
    log.info("features %s %s: %d rows from %s (look-back %d bars, full=%s)", symbol, timeframe, len(out), first, lookback, full)
    return FeatureUpdate(symbol, timeframe, int(len(out)), newest, int(lookback), first, bool(full))


_WRITE_COLUMNS = ("symbol", "timeframe", "ts", *FLOAT_COLUMNS, "after_gap", "usable", "feature_set_version", "source_ingested_at", "computed_at")


def _replace_tail_pg(database_url: str, symbol: str, timeframe: str, out: pd.DataFrame, start: datetime | None, computed_at: datetime) -> None:
    """Replace the symbol's rows from ``start`` on (all rows when None) with ``out``, in one
    transaction: readers see the old rows until the new ones are committed.

    A DELETE and a binary COPY straight into the table: an upsert through a temporary
    table and ON CONFLICT cost twice as long for a million rows, and the rows from
    ``start`` on are all recomputed anyway. Rows holding NULLs (the warm-up) go in their
    own COPY so the million others share one fixed layout.
    """
    from psycopg2 import sql

    from mt5_pipeline.storage.bulk import PG_EPOCH_OFFSET_US, CopyColumn, constant_text, copy_in, datetime_to_pg, pg_connection

    def times(values) -> np.ndarray:
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
            constant_text(FEATURE_SET_VERSION),
            CopyColumn("ts", source[rows]),
            CopyColumn("ts", datetime_to_pg(computed_at)),
        ]
        return cols

    where = sql.SQL("symbol = {} AND timeframe = {}").format(sql.Literal(symbol), sql.Literal(timeframe))
    if start is not None:
        where = sql.SQL("{} AND ts >= {}").format(where, sql.Literal(start))
    copy = sql.SQL("COPY features_m1 ({}) FROM STDIN (FORMAT BINARY)").format(sql.SQL(", ").join(map(sql.Identifier, _WRITE_COLUMNS)))
    with pg_connection(database_url) as conn, conn.cursor() as cur:
        # Derived rows: a crash that loses this commit leaves the bars stale, and the next
        # run recomputes them. Not waiting for the WAL flush takes a disk write off the
        # live path (closed bar -> signal).
        cur.execute("SET LOCAL synchronous_commit TO OFF")
        cur.execute(sql.SQL("DELETE FROM features_m1 WHERE {}").format(where))
        for rows in (np.flatnonzero(has_null), np.flatnonzero(~has_null)):
            if len(rows):
                copy_in(cur, copy, columns(rows), len(rows))


def _newest_feature_ts(database_url: str, symbol: str, timeframe: str) -> datetime | None:
    f = features_m1.c
    with get_engine(database_url).connect() as conn:
        value = conn.execute(select(func.max(f.ts)).where(f.symbol == symbol, f.timeframe == timeframe)).scalar()
    return _as_utc(value)


def _delete_orphans(database_url: str, symbol: str, timeframe: str) -> int:
    """Delete feature rows whose candle is gone (only a full run looks)."""
    f, c = features_m1.c, candles.c
    with get_engine(database_url).begin() as conn:
        n_features = conn.execute(select(func.count()).where(f.symbol == symbol, f.timeframe == timeframe)).scalar_one()
        n_candles = conn.execute(select(func.count()).where(c.symbol == symbol, c.timeframe == timeframe)).scalar_one()
        # Every candle has its row after a full run, so equal counts mean equal sets.
        if n_features == n_candles:
            return 0
        candle = select(c.ts).where(c.symbol == f.symbol, c.timeframe == f.timeframe, c.ts == f.ts).scalar_subquery()
        return conn.execute(delete(features_m1).where(f.symbol == symbol, f.timeframe == timeframe, candle.is_(None))).rowcount


def update_all_features(database_url: str, timeframe: str = "M1") -> list[FeatureUpdate]:
    """`update_features` for every symbol with candles in the timeframe (the seed's prepare_dataset)."""
    from mt5_pipeline.storage.candles import list_symbols

    return [update_features(database_url, symbol, tf) for symbol, tf in list_symbols(database_url, timeframe)]


def feature_symbols(database_url: str, timeframe: str = "M1") -> list[str]:
    """Symbols that have feature rows for the timeframe."""
    f = features_m1.c
    with get_engine(database_url).connect() as conn:
        return sorted(conn.execute(select(f.symbol).where(f.timeframe == timeframe).distinct()).scalars())


_TIME_COLUMNS = ("ts", "source_ingested_at", "computed_at")


def load_feature_rows(
    database_url: str,
    symbols: list[str] | None = None,
    timeframe: str = "M1",
    usable_only: bool = True,
) -> pd.DataFrame:
    """Feature rows sorted by symbol, ts: symbol, timeframe, ts, raw levels, features,
    after_gap, usable, feature_set_version, source_ingested_at, computed_at.

    ``usable_only`` keeps the rows a model may learn from: usable and of this code's
    feature-set version. NULLs (warm-up) come back as NaN.
    """
    from mt5_pipeline.storage.engine import is_postgres

    wanted = symbols if symbols is not None else feature_symbols(database_url, timeframe)
    parts = []
    for symbol in wanted:
        if is_postgres(database_url):
            part = _load_pg(database_url, symbol, timeframe, usable_only)
        else:
            part = _load_sqlite(database_url, symbol, timeframe, usable_only)
        parts.append(part)
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


def _finish(symbol: str, timeframe: str, columns: dict[str, np.ndarray | pd.Series], versions) -> pd.DataFrame:
    n = len(columns["ts"])
    frame = pd.DataFrame({"symbol": [symbol] * n, "timeframe": [timeframe] * n})
    for name in ("ts", *FLOAT_COLUMNS, "after_gap", "usable"):
        frame[name] = columns[name]
    frame["feature_set_version"] = versions
    frame["source_ingested_at"] = columns["source_ingested_at"]
    frame["computed_at"] = columns["computed_at"]
    return frame


def _load_pg(database_url: str, symbol: str, timeframe: str, usable_only: bool) -> pd.DataFrame:
    """Binary COPY parsed with numpy: every column is made fixed-width and NOT NULL (NULL
    -> NaN, the version -> whether it is this code's) so one structured dtype reads all rows."""
    from psycopg2 import sql

    from mt5_pipeline.storage.bulk import PG_EPOCH_OFFSET_US, copy_out, parse_copy_binary, pg_connection

    select_list = [
        sql.SQL("ts"),
        *(sql.SQL("COALESCE({}, 'NaN'::float8)").format(sql.Identifier(c)) for c in FLOAT_COLUMNS),
        sql.SQL("after_gap"),
        sql.SQL("usable"),
        sql.SQL("feature_set_version = {}").format(sql.Literal(FEATURE_SET_VERSION)),
        sql.SQL("source_ingested_at"),
        sql.SQL("computed_at"),
    ]
    formats = (">i8", *(">f8" for _ in FLOAT_COLUMNS), "u1", "u1", "u1", ">i8", ">i8")
    where = sql.SQL("symbol = {} AND timeframe = {}").format(sql.Literal(symbol), sql.Literal(timeframe))
    if usable_only:
        where = sql.SQL("{} AND usable AND feature_set_version = {}").format(where, sql.Literal(FEATURE_SET_VERSION))
    # COPY takes no parameters; sql.Literal quotes on the client.
    statement = sql.SQL("COPY (SELECT {} FROM features_m1 WHERE {} ORDER BY ts) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(", ").join(select_list), where
    )
    with pg_connection(database_url) as conn, conn.cursor() as cur:
        rows = parse_copy_binary(copy_out(cur, statement), formats)
        if len(rows) == 0:
            return _empty_rows()
        is_current = rows[f"v{len(formats) - 3}"].astype(bool)
        versions: np.ndarray | str = FEATURE_SET_VERSION
        if not is_current.all():
            cur.execute(
                "SELECT feature_set_version FROM features_m1 WHERE symbol = %s AND timeframe = %s ORDER BY ts", (symbol, timeframe)
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


def _load_sqlite(database_url: str, symbol: str, timeframe: str, usable_only: bool) -> pd.DataFrame:
    names = ("ts", *FLOAT_COLUMNS, "after_gap", "usable", "feature_set_version", "source_ingested_at", "computed_at")
    query = f"SELECT {', '.join(names)} FROM features_m1 WHERE symbol = ? AND timeframe = ?"
    params: tuple = (symbol, timeframe)
    if usable_only:
        query += " AND usable = 1 AND feature_set_version = ?"
        params += (FEATURE_SET_VERSION,)
    with get_engine(database_url).connect() as conn:
        rows = conn.exec_driver_sql(query + " ORDER BY ts", params).fetchall()
    if not rows:
        return _empty_rows()
    values = dict(zip(names, zip(*rows, strict=True), strict=True))
    columns: dict[str, np.ndarray | pd.Series] = {c: np.array(values[c], dtype=np.float64) for c in FLOAT_COLUMNS}
    for c in _TIME_COLUMNS:
        columns[c] = pd.to_datetime(pd.Series(values[c], dtype=object), format="ISO8601", utc=True).astype("datetime64[ns, UTC]")
    columns["after_gap"] = np.array(values["after_gap"], dtype=bool)
    columns["usable"] = np.array(values["usable"], dtype=bool)
    return _finish(symbol, timeframe, columns, np.array(values["feature_set_version"], dtype=object))
