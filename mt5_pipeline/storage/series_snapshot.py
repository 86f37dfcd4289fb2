"""What the live worker reads of a series for each bar, in one round trip on PostgreSQL.

Deciding a bar needs three small reads: the series' two newest bars (is the newest closed
bar ready?), the bars stamped since the worker's tail last looked (the new bar, and any
correction), and the instrument's digits and point (its pip). Three statements through
the engine were three round trips and most of a decision's CPU. Here they are one
statement, three index lookups in one snapshot -- which also means the ready rule and the
tail see the same bars. SQLite (one process, no network) makes the three reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from mt5_pipeline.clock import as_utc
from mt5_pipeline.storage.candles import CANDLE_COLUMNS, candles_stamped_since, newest_two_bars
from mt5_pipeline.storage.engine import autocommit_cursor, is_postgres
from mt5_pipeline.storage.symbols import instrument

Instrument = tuple[int | None, float | None]


class SeriesSnapshot(NamedTuple):
    newest: list[tuple[datetime, datetime]]  # (open, ingested_at) of the two newest bars, newest first
    recent: list[tuple] | None  # bars stamped at or after `since`, by ts, CANDLE_COLUMNS order; None: not asked
    instrument: Instrument | None  # the symbols row (digits, point), or None: the EA never described it


# One row per bar; `part` says which read a row answers. The symbols row rides in the
# candle columns of its own part: point in `open`, digits in `tick_volume`. A stamped bar
# at or before `known` (the tail's end) brings only its time and stamp: the tail compares
# those, and such a bar is never a new row (it is a correction, or one the tail has). After
# a bulk ingest (history posted at the EA's start) the read spans every bar of the batch
# for a minute, and converting their prices was most of a decision's CPU.
_PRICES = ", ".join(
    f"CASE WHEN ts > %(known)s THEN {name} END" for name in CANDLE_COLUMNS if name not in ("ts", "ingested_at")
)
_PG_SNAPSHOT = f"""
(SELECT 0 AS part, ts, NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::bigint, NULL::int,
        NULL::bigint, ingested_at
   FROM candles WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s ORDER BY ts DESC LIMIT 2)
UNION ALL
(SELECT 1, ts, {_PRICES}, ingested_at
   FROM candles WHERE symbol = %(symbol)s AND timeframe = %(timeframe)s AND ingested_at >= %(since)s)
UNION ALL
(SELECT 2, NULL, point, NULL, NULL, NULL, digits, NULL, NULL, NULL FROM symbols WHERE symbol = %(symbol)s)
"""


def read_snapshot(
    database_url: str, symbol: str, timeframe: str, since: datetime | None, *, known: datetime | None = None
) -> SeriesSnapshot:
    """The series' two newest bars, its bars stamped since ``since`` (skipped with None)
    and its instrument row, as :func:`newest_two_bars`, :func:`candles_stamped_since` and
    :func:`instrument` return them -- except that on PostgreSQL a stamped bar opening at or
    before ``known`` comes with its time and stamp only (its prices None)."""
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
    }
    with autocommit_cursor(database_url) as cursor:
        cursor.execute(_PG_SNAPSHOT, params)
        rows = cursor.fetchall()
    newest: list[tuple[datetime, datetime]] = []
    recent: list[tuple] = []
    described: Instrument | None = None
    for row in rows:
        if row[0] == 0:
            newest.append((as_utc(row[1]), as_utc(row[9])))
        elif row[0] == 1:
            recent.append((as_utc(row[1]), *row[2:9], as_utc(row[9])))
        else:
            described = (row[6], row[2])
    newest.sort(reverse=True)
    recent.sort(key=lambda r: r[0])
    return SeriesSnapshot(newest, None if since is None else recent, described)
