"""One ingest of one series: the reads the ingest core decides on, then its writes.

On PostgreSQL it is one transaction under the series' advisory lock, in few round trips:
the lock and every read (the closes before the batch for the price-jump check, the
series' offset runs, the stored bars at the batch's times, its bar count and the ingest
stamp) go in one request; the writes (the new and changed bars, the count, the NOTIFY,
the offset runs, the ``symbols`` row) are collected and sent in one more, before the
commit. A live ``POST /ingest`` of a bar or two thus costs four round trips (BEGIN, read,
write, COMMIT) and one commit, where the separate statements took 26 and four. Batches
over ``SMALL_BATCH`` bars store through binary COPY as before
(:mod:`~mt5_pipeline.storage.candle_store_pg`), in the same transaction.

Since the whole ingest holds the series lock, the offset runs it checks are still the
stored ones when it records its own. On SQLite each step is its own statement and
transaction, as the functions it calls describe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from mt5_pipeline.clock import from_epoch, utcnow
from mt5_pipeline.storage.bulk import PG_EPOCH_OFFSET_US, pg_connection
from mt5_pipeline.storage.candle_batch import BAR_VALUES, CANDLES_CHANNEL, CandleBatch, newest_closed_in_batch
from mt5_pipeline.storage.candle_store_pg import (
    PG_LOCK_SERIES,
    PG_NOTIFY,
    STORED_FORMATS,
    classify,
    counts,
    notify_payload,
    series_lock_key,
    store_locked,
)
from mt5_pipeline.storage.candles import closes_before, store_batch
from mt5_pipeline.storage.engine import is_postgres
from mt5_pipeline.storage.offsets import Run, offset_runs, record_runs, runs_change
from mt5_pipeline.storage.symbols import record_instrument

# Up to this many bars the stored ones are read with the other reads and the writes are
# plain statements; above it binary COPY is cheaper.
SMALL_BATCH = 64


@dataclass(frozen=True)
class Before:
    """What the series holds before the batch."""

    closes: np.ndarray  # the closes of the last bars opening before the batch, oldest first
    runs: list[Run]  # the offset runs (candle_offsets), oldest first; empty unless asked for


class SeriesWrite:
    """The steps of one ingest (SQLite: each its own transaction, as before)."""

    def __init__(self, url: str, symbol: str, timeframe: str, stamp_base: datetime | None) -> None:
        self.url, self.symbol, self.timeframe, self.stamp_base = url, symbol, timeframe, stamp_base

    def read(self, batch: CandleBatch, context: int, *, runs: bool) -> Before:
        """The last `context` closes before the batch's first bar, and with `runs` the offset runs."""
        closes = (
            closes_before(self.url, self.symbol, self.timeframe, from_epoch(int(batch.ts[0])), context)
            if context
            else np.zeros(0)
        )
        return Before(closes, offset_runs(self.url, self.symbol, self.timeframe) if runs else [])

    def record_instrument(self, digits: int | None, point: float | None) -> None:
        record_instrument(self.url, self.symbol, digits, point)

    def store(self, batch: CandleBatch, *, clock: datetime) -> tuple[int, int, int | None]:
        """(inserted, updated, first changed ts in epoch µs); see storage.candles.store_batch."""
        return store_batch(self.url, batch, self.stamp_base, clock=clock)

    def record_runs(self, new: list[Run]) -> None:
        record_runs(self.url, self.symbol, self.timeframe, new)


@contextmanager
def series_write(url: str, symbol: str, timeframe: str, *, stamp_base: datetime | None) -> Iterator[SeriesWrite]:
    """The steps of one ingest of (symbol, timeframe); on PostgreSQL committed together at
    the end of the block (nothing of it if the block raises). `stamp_base`: a fixed base
    for ``ingested_at`` (None: the database clock)."""
    if not is_postgres(url):
        yield SeriesWrite(url, symbol, timeframe, stamp_base)
        return
    with pg_connection(url) as conn, conn.cursor() as cur:
        write = _PgSeriesWrite(url, symbol, timeframe, stamp_base, cur)
        yield write
        write.flush()


_SERIES = "symbol = %(symbol)s AND timeframe = %(timeframe)s"
_CLOSES = (
    f"ARRAY(SELECT close FROM (SELECT ts, close FROM candles WHERE {_SERIES} AND ts < %(first)s "
    "ORDER BY ts DESC LIMIT %(context)s) c ORDER BY ts)"
)
_RUNS = (
    f"ARRAY(SELECT ARRAY[first_ts, last_ts, utc_offset_s] FROM candle_offsets WHERE {_SERIES} "
    "AND %(runs)s ORDER BY first_ts)"
)
_BARS = f"(SELECT bars FROM candle_series WHERE {_SERIES})"
# As candle_store_pg._PG_STAMP: the database clock (or the caller's base), after every stamp stored in the series.
_STAMP = (
    "GREATEST(COALESCE(%(stamp_base)s::timestamptz, clock_timestamp()), "
    f"(SELECT max(ingested_at) FROM candles WHERE {_SERIES}) + interval '1 microsecond')"
)
# The stored bars at the batch's times, one array per column; ts in epoch microseconds.
_STORED = (
    "(SELECT array_agg((extract(epoch FROM ts) * 1000000)::bigint ORDER BY ts), "
    + ", ".join(f"array_agg({v} ORDER BY ts)" for v in BAR_VALUES)
    + f" FROM candles WHERE {_SERIES} AND ts = ANY(%(times)s::timestamptz[])) s"
)
# Two statements in one request: the lock, then (a new snapshot, in READ COMMITTED) the reads.
_READ_SMALL = f"{PG_LOCK_SERIES % '%(key)s'}; SELECT {_CLOSES}, {_RUNS}, {_BARS}, {_STAMP}, s.* FROM {_STORED}"
_READ = f"{PG_LOCK_SERIES % '%(key)s'}; SELECT {_CLOSES}, {_RUNS}, {_BARS}, {_STAMP}"

_INSERT = (
    "INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, tick_volume, spread, real_volume, "
    "ingested_at) VALUES "
)
_ROW_INSERT = (
    "(%s, %s, %s::timestamptz, %s::float8, %s::float8, %s::float8, %s::float8, %s::int8, %s::int4, %s::int8, %s)"
)
_UPDATE_HEAD = (
    "UPDATE candles c SET " + ", ".join(f"{v} = t.{v}" for v in BAR_VALUES) + ", ingested_at = %s FROM (VALUES "
)
_UPDATE_TAIL = ") AS t (ts, " + ", ".join(BAR_VALUES) + ") WHERE c.symbol = %s AND c.timeframe = %s AND c.ts = t.ts"
_ROW_UPDATE = "(%s::timestamptz, %s::float8, %s::float8, %s::float8, %s::float8, %s::int8, %s::int4, %s::int8)"
_COUNT_UPDATE = "UPDATE candle_series SET bars = bars + %s WHERE symbol = %s AND timeframe = %s"
_COUNT_FIRST = (
    "INSERT INTO candle_series (symbol, timeframe, bars) SELECT %s, %s, count(*) FROM candles WHERE symbol = %s "
    "AND timeframe = %s"
)
# As storage.symbols.record_instrument: fields not sent keep their value.
_INSTRUMENT = (
    "INSERT INTO symbols (symbol, digits, point, updated_at) VALUES (%s, %s, %s, %s) ON CONFLICT (symbol) DO UPDATE "
    "SET digits = COALESCE(excluded.digits, symbols.digits), point = COALESCE(excluded.point, symbols.point), "
    "updated_at = excluded.updated_at"
)
_RUNS_DELETE = "DELETE FROM candle_offsets WHERE symbol = %s AND timeframe = %s AND first_ts = ANY(%s)"
_RUNS_INSERT = "INSERT INTO candle_offsets (symbol, timeframe, first_ts, last_ts, utc_offset_s) VALUES "


class _PgSeriesWrite(SeriesWrite):
    def __init__(self, url: str, symbol: str, timeframe: str, stamp_base: datetime | None, cur: Any) -> None:
        super().__init__(url, symbol, timeframe, stamp_base)
        self._cur = cur
        self._locked = False
        self._runs: list[Run] | None = None
        self._bars: int | None = None  # candle_series' count, None: no row yet
        self._stamp: datetime | None = None
        self._stored: np.ndarray | None = None  # the stored bars at a small batch's times, as the COPY parses them
        self._pending: list[bytes] = []  # writes, sent together by flush()
        self._update: tuple[bytes, int] | None = None  # the update of changed bars, and the rows it must touch

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"symbol": self.symbol, "timeframe": self.timeframe, **extra}

    def _read(self, batch: CandleBatch, context: int, runs: bool) -> np.ndarray:
        small = len(batch) <= SMALL_BATCH
        params = self._params(
            key=series_lock_key(self.symbol, self.timeframe),
            first=from_epoch(int(batch.ts[0])),
            context=context,
            runs=runs,
            stamp_base=self.stamp_base,
            times=[from_epoch(t) for t in batch.ts.tolist()],
        )
        self._cur.execute(_READ_SMALL if small else _READ, params)
        row = self._cur.fetchone()
        self._locked = True
        self._runs = [(int(a), int(b), int(c)) for a, b, c in row[1]] if runs else None
        self._bars, self._stamp = row[2], row[3]
        if small:
            self._stored = _stored_rows(row[4:])
        return np.asarray(row[0], dtype=np.float64)

    def read(self, batch: CandleBatch, context: int, *, runs: bool) -> Before:
        closes = self._read(batch, context, runs)
        return Before(closes, self._runs or [])

    def record_instrument(self, digits: int | None, point: float | None) -> None:
        if digits is None and point is None:
            return
        self._later(_INSTRUMENT, (self.symbol, digits, point, utcnow()))

    def store(self, batch: CandleBatch, *, clock: datetime) -> tuple[int, int, int | None]:
        if len(batch) > SMALL_BATCH or (self._locked and self._stored is None):
            if not self._locked:
                self._cur.execute(PG_LOCK_SERIES, (series_lock_key(self.symbol, self.timeframe),))
                self._locked = True
            return store_locked(self._cur, batch, self.stamp_base, clock=clock)
        if self._stored is None:
            self._read(batch, 0, False)
        assert self._stored is not None
        new, changed = classify(batch, self._stored)
        if new.any():
            rows = np.flatnonzero(new)
            self._later_rows(
                _INSERT, _ROW_INSERT, [(self.symbol, self.timeframe, *r, self._stamp) for r in _bar_rows(batch, rows)]
            )
            if self._bars is None:  # the series' first ingest: count what is there (once)
                self._later(_COUNT_FIRST, (self.symbol, self.timeframe, self.symbol, self.timeframe))
            else:
                self._later(_COUNT_UPDATE, (len(rows), self.symbol, self.timeframe))
        if changed.any():
            rows = np.flatnonzero(changed)
            statement = (
                self._cur.mogrify(_UPDATE_HEAD, (self._stamp,))
                + b", ".join(self._cur.mogrify(_ROW_UPDATE, r) for r in _bar_rows(batch, rows))
                + self._cur.mogrify(_UPDATE_TAIL, (self.symbol, self.timeframe))
            )
            self._update = (statement, len(rows))
        closed = newest_closed_in_batch(batch, clock)
        if closed is not None:
            # Even when nothing changed: a final version identical to the forming one is
            # still the news that the bar closed. Delivered at commit, never before.
            self._later(PG_NOTIFY, (CANDLES_CHANNEL, notify_payload(batch, closed)))
        return counts(batch, new, changed)

    def record_runs(self, new: list[Run]) -> None:
        if not new:
            return
        old = self._runs if self._runs is not None else offset_runs(self.url, self.symbol, self.timeframe)
        gone, added = runs_change(old, new)
        if gone:
            self._later(_RUNS_DELETE, (self.symbol, self.timeframe, [r[0] for r in gone]))
        if added:
            self._later_rows(
                _RUNS_INSERT, "(%s, %s, %s, %s, %s)", [(self.symbol, self.timeframe, a, b, c) for a, b, c in added]
            )

    def _later(self, statement: str, params: tuple[Any, ...]) -> None:
        self._pending.append(self._cur.mogrify(statement, params))

    def _later_rows(self, head: str, row: str, rows: list[tuple[Any, ...]]) -> None:
        self._pending.append(head.encode() + b", ".join(self._cur.mogrify(row, r) for r in rows))

    def flush(self) -> None:
        """Send the collected writes in one request (the update last: its row count is checked)."""
        statements = self._pending + ([self._update[0]] if self._update else [])
        if not statements:
            return
        self._cur.execute(b";\n".join(statements))
        if self._update and self._cur.rowcount != self._update[1]:  # cannot happen under the lock
            raise RuntimeError(f"updated {self._cur.rowcount} bars, expected {self._update[1]}")


def _stored_rows(columns: tuple[Any, ...]) -> np.ndarray:
    """The stored bars read as arrays, in the structured shape candle_store_pg.classify takes."""
    n = len(columns[0]) if columns[0] is not None else 0
    dtype = np.dtype([(f"v{i}", fmt) for i, fmt in enumerate(STORED_FORMATS)])
    out = np.zeros(n, dtype=dtype)
    if n:
        out["v0"] = np.asarray(columns[0], dtype=np.int64) - PG_EPOCH_OFFSET_US
        for i in range(1, len(STORED_FORMATS)):
            out[f"v{i}"] = columns[i]
    return out


def _bar_rows(batch: CandleBatch, rows: np.ndarray) -> list[tuple[Any, ...]]:
    """(open time, open, ..., real_volume) of `rows` as Python values (psycopg2 adapts no numpy scalars)."""
    times = [from_epoch(t) for t in batch.ts[rows].tolist()]
    columns = [getattr(batch, v)[rows].tolist() for v in BAR_VALUES]
    return [(t, *values) for t, *values in zip(times, *columns, strict=True)]
