"""A live bar's feature rows and its signal, committed together.

The live worker stores the rows its tail computed for a bar with the bar's signal and the
NOTIFY that wakes the pusher, in one transaction (see :mod:`mt5_pipeline.signals.bar_write`).
On PostgreSQL the statements go in one execute on an autocommit cursor: one implicit
transaction, one round trip (through the engine it was seven). SQLite runs them in one
transaction through the engine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, literal, select
from sqlalchemy.dialects import postgresql

from mt5_pipeline.storage.dialect import RowsInsert, insert_on_conflict
from mt5_pipeline.storage.engine import autocommit_cursor, get_engine, is_postgres
from mt5_pipeline.storage.features import NewRows, new_rows_sql, write_new_rows
from mt5_pipeline.storage.notifications import notify
from mt5_pipeline.storage.schema import signals_queue


def _queued_and_notified(insert: postgresql.Insert) -> Select[Any]:
    # No conflict target: a second signal for the bar and a re-sent signal_id are both
    # "already queued"; the NOTIFY only for a row queued, delivered at the commit.
    queued = insert.on_conflict_do_nothing().returning(signals_queue.c.id).cte("queued")
    return select(queued.c.id, func.pg_notify(bindparam("channel"), literal("1")))


_PG_QUEUED = RowsInsert(signals_queue, _queued_and_notified)


def commit_bar(
    database_url: str,
    symbol: str,
    timeframe: str,
    rows: NewRows,
    *,
    version: str,
    computed_at: datetime,
    signal_row: dict[str, Any],
    channel: str,
) -> bool:
    """Store ``rows`` (as :func:`write_new_rows`) and queue ``signal_row`` (a new
    ``signals_queue`` row), notifying ``channel`` when it was queued; False when the bar
    or the signal_id already had a row (the rows are stored all the same)."""
    if is_postgres(database_url):
        rows_sql, rows_params = new_rows_sql(symbol, timeframe, rows, version=version, computed_at=computed_at)
        signal_sql, signal_params = _PG_QUEUED.render(list(signal_row), [list(signal_row.values())], channel=channel)
        with autocommit_cursor(database_url) as cursor:
            cursor.execute(f"{rows_sql};\n{signal_sql}", [*rows_params, *signal_params])
            return cursor.fetchone() is not None
    with get_engine(database_url).begin() as conn:
        write_new_rows(conn, symbol, timeframe, rows, version=version, computed_at=computed_at)
        # No conflict target: a second signal for the bar and a re-sent signal_id are both "already queued".
        statement = insert_on_conflict(conn, signals_queue).on_conflict_do_nothing().returning(signals_queue.c.id)
        inserted = conn.execute(statement, signal_row).first() is not None
        if inserted:
            notify(conn, channel, "1")
        return inserted
