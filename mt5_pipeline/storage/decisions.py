"""The live_decisions rows: one per decision of the live worker, read back by Dagster's sensor."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, tuple_

from mt5_pipeline.storage.dialect import RowsInsert
from mt5_pipeline.storage.engine import autocommit_cursor, get_engine, is_postgres
from mt5_pipeline.storage.schema import live_decisions, live_workers

_PG_INSERT = RowsInsert(live_decisions)


def record(database_url: str, rows: list[dict]) -> None:
    """Store a worker pass's decisions. On PostgreSQL one multi-row INSERT in one round trip:
    at a bar close the notifications trickle in as the API commits them, so a pass often
    holds one or two series, and a transaction through the engine (BEGIN, INSERT, COMMIT)
    cost a pass more than its decisions' own reads."""
    if not rows:
        return
    if is_postgres(database_url):
        names = list(rows[0])
        statement, params = _PG_INSERT.render(names, [[row[n] for n in names] for row in rows])
        with autocommit_cursor(database_url) as cursor:
            cursor.execute(statement, params)
        return
    with get_engine(database_url).begin() as conn:
        conn.execute(insert(live_decisions), rows)


def newest_decided(
    database_url: str, keys: Iterable[tuple[str, str]], *, now: datetime, within: timedelta
) -> dict[tuple[str, str], datetime]:
    """The newest bar each series had decided (by any worker) in the last ``within``: a
    worker that takes a series over, or starts, need not decide that bar again. "no_model"
    does not count (the worker retries those)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    d = live_decisions.c
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(
            select(d.symbol, d.timeframe, func.max(d.bar))
            .where(
                d.decided_at >= now - within,
                d.status != "no_model",
                d.bar.is_not(None),
                tuple_(d.symbol, d.timeframe).in_(wanted),
            )
            .group_by(d.symbol, d.timeframe)
        ).all()
    return {(r[0], r[1]): r[2] for r in rows if r[2] is not None}


def since(database_url: str, after_id: int, *, limit: int) -> list[dict]:
    """Decisions with id > after_id, oldest first."""
    d = live_decisions.c
    with get_engine(database_url).connect() as conn:
        return [
            dict(r)
            for r in conn.execute(select(live_decisions).where(d.id > after_id).order_by(d.id).limit(limit)).mappings()
        ]


def newest_decided_at(database_url: str) -> datetime | None:
    """When the newest decision was made (through the decided_at index), or None."""
    with get_engine(database_url).connect() as conn:
        return conn.execute(select(func.max(live_decisions.c.decided_at))).scalar()


def newest_id(database_url: str) -> int:
    with get_engine(database_url).connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(live_decisions.c.id), 0))).scalar_one())


def prune(database_url: str, before: datetime) -> int:
    with get_engine(database_url).begin() as conn:
        return conn.execute(delete(live_decisions).where(live_decisions.c.decided_at < before)).rowcount


def workers_alive(database_url: str, now: datetime) -> int:
    with get_engine(database_url).connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(live_workers).where(live_workers.c.expires_at >= now)
            ).scalar_one()
        )
