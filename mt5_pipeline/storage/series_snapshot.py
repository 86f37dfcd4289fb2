"""What the live worker reads of a series for each bar, in one round trip on PostgreSQL.

Deciding a bar needs three small reads: the series' two newest bars (is the newest closed
bar ready?), the bars stamped since the worker's tail last looked (the new bar, and any
correction), and the instrument's digits and point (its pip). Three statements through
the engine were three round trips and most of a decision's CPU. Here they are one
statement, three index lookups in one snapshot -- which also means the ready rule and the
tail see the same bars. SQLite (one process, no network) makes the three reads.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from mt5_pipeline.clock import as_utc
from mt5_pipeline.storage.candles import CANDLE_COLUMNS, candles_stamped_since, newest_two_bars
from mt5_pipeline.storage.engine import autocommit_cursor, is_postgres
from mt5_pipeline.storage.symbols import instrument

Instrument = tuple[int | None, float | None]


class StampDigest(NamedTuple):
    """What stands for a set of (bar open, stamp) pairs in the snapshot: their count and
    three sums of their times in microseconds (modulo a prime under 2**53, so each is an
    exact float8 on the wire). Two sets that differ by a re-stamped bar or a bar added
    differ here; the tail computes the same over the pairs it has seen."""

    bars: int
    opens: int
    stamps: int
    pairs: int


class SeriesSnapshot(NamedTuple):
    newest: list[tuple[datetime, datetime]]  # (open, ingested_at) of the two newest bars, newest first
    recent: list[tuple] | None  # bars stamped at or after `since`, by ts, CANDLE_COLUMNS order; None: not asked
    instrument: Instrument | None  # the symbols row (digits, point), or None: the EA never described it
    # With `known` (PostgreSQL): the stamped bars opening at or before it, as a digest, and
    # not in `recent`. None: no such split (every stamped bar is in `recent`).
    known: StampDigest | None = None


# 2**53 - 111, a prime: the sums below stay exact in float8.
_MODULUS = 9007199254740881
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


def stamp_digest(pairs: Iterable[tuple[datetime, datetime]]) -> StampDigest:
    """The digest of (open, stamp) pairs, as the snapshot's SQL computes it."""
    opens: list[int] = []
    stamps: list[int] = []
    for ts, stamp in pairs:
        opens.append((ts - _EPOCH) // _MICRO % _MODULUS)
        stamps.append((stamp - _EPOCH) // _MICRO % _MODULUS)
    both = sum(map(operator.mul, opens, stamps))
    return StampDigest(len(opens), sum(opens) % _MODULUS, sum(stamps) % _MODULUS, both % _MODULUS)


# One row per bar, or per part; `part` says which read a row answers. The symbols row
# rides in the candle columns of its own part: point in `open`, digits in `tick_volume`;
# the digest in part 3: the count in `tick_volume`, the sums in the float columns.
#
# A stamped bar at or before `known` (the tail's end) is never a new row: it is a bar the
# tail has (stamped within its margin) or a correction. The tail needs only to know
# whether such bars are exactly the ones it has seen, so they come as one digest row.
# After a bulk ingest (the history an EA posts at its start) they were every bar of the
# batch for a minute, and reading them at the next bar close was most of its CPU.
# A time in whole microseconds since the epoch, exactly on any PostgreSQL: before 14,
# extract() returns float8, whose epoch seconds lose the last microsecond digit.
_US = (
    "((extract(epoch FROM date_trunc('second', {0}))::bigint * 1000000"
    " + extract(microseconds FROM {0})::bigint %% 1000000)::numeric %% {1})"
).format
_PG_SNAPSHOT = f"""
(SELECT 0 AS part, ts, NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::bigint, NULL::int,
        NULL::bigint, ingested_at
   FROM candles WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s ORDER BY ts DESC LIMIT 2)
UNION ALL
(SELECT 1, {", ".join(CANDLE_COLUMNS)}
   FROM candles WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ingested_at >= %(since)s
                  AND ts > %(known)s)
UNION ALL
(SELECT 2, NULL, point, NULL, NULL, NULL, digits, NULL, NULL, NULL FROM symbols WHERE symbol = %(symbol)s)
UNION ALL
(SELECT 3, NULL, (sum({_US("ts", _MODULUS)}) %% {_MODULUS})::float8,
        (sum({_US("ingested_at", _MODULUS)}) %% {_MODULUS})::float8,
        (sum(({_US("ts", _MODULUS)}) * ({_US("ingested_at", _MODULUS)})) %% {_MODULUS})::float8,
        NULL, count(*), NULL, NULL, NULL
   FROM candles WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ingested_at >= %(since)s
                  AND ts <= %(known)s AND %(split)s)
"""


def read_snapshot(
    database_url: str, symbol: str, timeframe: str, since: datetime | None, *, known: datetime | None = None
) -> SeriesSnapshot:
    """The series' two newest bars, its bars stamped since ``since`` (skipped with None)
    and its instrument row, as :func:`newest_two_bars`, :func:`candles_stamped_since` and
    :func:`instrument` return them -- except that on PostgreSQL, given ``known``, the
    stamped bars opening at or before it are not in ``recent`` but in the digest ``known``."""
    if not is_postgres(database_url):
        return SeriesSnapshot(
            newest_two_bars(database_url, symbol, timeframe),
            None if since is None else candles_stamped_since(database_url, symbol, timeframe, since),
            instrument(database_url, symbol),
        )
    params = {
        "symbol": symbol,
        "timeframe": timeframe,
        "since": "infinity" if since is None else since,
        "known": "-infinity" if known is None else known,
        "split": known is not None and since is not None,
    }
    with autocommit_cursor(database_url) as cursor:
        cursor.execute(_PG_SNAPSHOT, params)
        rows = cursor.fetchall()
    newest: list[tuple[datetime, datetime]] = []
    recent: list[tuple] = []
    described: Instrument | None = None
    digest: StampDigest | None = None
    for row in rows:
        if row[0] == 0:
            newest.append((as_utc(row[1]), as_utc(row[9])))
        elif row[0] == 1:
            recent.append((as_utc(row[1]), *row[2:9], as_utc(row[9])))
        elif row[0] == 2:
            described = (row[6], row[2])
        elif params["split"]:
            digest = StampDigest(int(row[6]), *(0 if v is None else int(v) for v in row[2:5]))
    newest.sort(reverse=True)
    recent.sort(key=lambda r: r[0])
    return SeriesSnapshot(newest, None if since is None else recent, described, digest)
