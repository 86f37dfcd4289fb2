"""The live_workers and live_leases rows (see :mod:`mt5_pipeline.signals.series_leases`).

Times are the workers' clocks (UTC): hosts sharing a database keep NTP time, and a lease
lasts seconds, far above any skew NTP leaves. Every change of owner is one conditional
UPDATE (the row lock settles two workers reaching for the same series at once).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, delete, func, or_, select, update

from mt5_pipeline.storage.dialect import insert_on_conflict
from mt5_pipeline.storage.engine import autocommit_cursor, get_engine
from mt5_pipeline.storage.schema import live_leases, live_workers

Series = tuple[str, str]
_FREE_SINCE = datetime(1970, 1, 1, tzinfo=timezone.utc)  # expires_at of a series nobody has held yet


def heartbeat(database_url: str, worker: str, *, now: datetime, ttl: float) -> int:
    """Keep the worker's row alive; returns how many workers are alive (this one included)."""
    expires = now + timedelta(seconds=ttl)
    with get_engine(database_url).begin() as conn:
        stmt = insert_on_conflict(conn, live_workers).values(worker=worker, started_at=now, expires_at=expires)
        conn.execute(stmt.on_conflict_do_update(index_elements=["worker"], set_={"expires_at": expires}))
        # Rows of workers long gone (killed, host lost) are only clutter once expired.
        conn.execute(delete(live_workers).where(live_workers.c.expires_at < now - timedelta(seconds=60 * ttl)))
        return int(
            conn.execute(
                select(func.count()).select_from(live_workers).where(live_workers.c.expires_at >= now)
            ).scalar_one()
        )


# One statement: a lease tick runs every second in every worker, idle or not, and five
# statements through SQLAlchemy cost it more CPU than the work. Each part of a statement
# sees the snapshot taken before it, so the count of live workers adds this one itself.
_PG_KEEP_ALIVE = """
WITH me AS (
    INSERT INTO live_workers (worker, started_at, expires_at) VALUES (%(worker)s, %(now)s, %(expires)s)
    ON CONFLICT (worker) DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING worker
), held AS (
    UPDATE live_leases SET expires_at = %(expires)s WHERE worker = %(worker)s RETURNING symbol, timeframe
), counts AS (
    SELECT
        (SELECT count(*) FROM live_workers WHERE expires_at >= %(now)s AND worker <> %(worker)s)
            + (SELECT count(*) FROM me) AS alive,
        (SELECT count(*) FROM live_leases) AS total
)
SELECT counts.alive, counts.total, held.symbol, held.timeframe FROM counts LEFT JOIN held ON true
"""


def keep_alive(database_url: str, worker: str, *, now: datetime, ttl: float) -> tuple[int, set[Series], int]:
    """The heartbeat, the renewal and the counts in one transaction (one round of a lease
    tick, every second per worker): (workers alive, series still held, series in all)."""
    expires = now + timedelta(seconds=ttl)
    c = live_leases.c
    engine = get_engine(database_url)
    if engine.dialect.name == "postgresql":
        # In autocommit: one round trip, where a transaction through the engine was three.
        with autocommit_cursor(database_url) as cursor:
            cursor.execute(_PG_KEEP_ALIVE, {"worker": worker, "now": now, "expires": expires})
            rows = cursor.fetchall()
        return int(rows[0][0]), {(r[2], r[3]) for r in rows if r[2] is not None}, int(rows[0][1])
    with engine.begin() as conn:
        stmt = insert_on_conflict(conn, live_workers).values(worker=worker, started_at=now, expires_at=expires)
        conn.execute(stmt.on_conflict_do_update(index_elements=["worker"], set_={"expires_at": expires}))
        alive = int(
            conn.execute(
                select(func.count()).select_from(live_workers).where(live_workers.c.expires_at >= now)
            ).scalar_one()
        )
        held = conn.execute(
            update(live_leases).where(c.worker == worker).values(expires_at=expires).returning(c.symbol, c.timeframe)
        ).all()
        total = int(conn.execute(select(func.count()).select_from(live_leases)).scalar_one())
    return alive, {(r[0], r[1]) for r in held}, total


def add_series(database_url: str, keys: Iterable[Series]) -> None:
    """A free lease row for each series that has none yet."""
    # In key order: two workers starting together insert the same rows, and in a set's
    # order each could wait on a row the other inserted first -- a deadlock PostgreSQL
    # breaks by failing one of them (seen when two workers start at once).
    rows = [{"symbol": s, "timeframe": t, "worker": None, "expires_at": _FREE_SINCE} for s, t in sorted(keys)]
    if not rows:
        return
    with get_engine(database_url).begin() as conn:
        conn.execute(
            insert_on_conflict(conn, live_leases).on_conflict_do_nothing(index_elements=["symbol", "timeframe"]), rows
        )


def series_count(database_url: str) -> int:
    with get_engine(database_url).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(live_leases)).scalar_one())


def renew(database_url: str, worker: str, *, now: datetime, ttl: float) -> set[Series]:
    """Extend every lease the worker still holds; returns them (a lease it lost is not among them)."""
    c = live_leases.c
    with get_engine(database_url).begin() as conn:
        rows = conn.execute(
            update(live_leases)
            .where(c.worker == worker)
            .values(expires_at=now + timedelta(seconds=ttl))
            .returning(c.symbol, c.timeframe)
        ).all()
    return {(r[0], r[1]) for r in rows}


def claim(database_url: str, worker: str, want: int, *, now: datetime, ttl: float) -> set[Series]:
    """Take up to ``want`` free or expired series; returns those taken."""
    if want <= 0:
        return set()
    c = live_leases.c
    free = or_(c.worker.is_(None), c.expires_at < now)
    taken: set[Series] = set()
    with get_engine(database_url).connect() as conn:
        candidates = conn.execute(
            select(c.symbol, c.timeframe).where(free).order_by(c.expires_at, c.symbol, c.timeframe).limit(want)
        ).all()
        for symbol, timeframe in candidates:
            # Conditional: of two workers reaching for the same series, the second finds it held.
            won = conn.execute(
                update(live_leases)
                .where(c.symbol == symbol, c.timeframe == timeframe, free)
                .values(worker=worker, expires_at=now + timedelta(seconds=ttl), acquired_at=now)
            ).rowcount
            conn.commit()
            if won:
                taken.add((symbol, timeframe))
    return taken


def release(database_url: str, worker: str, keys: Iterable[Series] | None = None, *, now: datetime) -> None:
    """Give series back (all the worker holds with None), free for another worker at once."""
    c = live_leases.c
    where = c.worker == worker
    if keys is not None:
        keys = list(keys)
        if not keys:
            return
        where = and_(where, or_(*(and_(c.symbol == s, c.timeframe == t) for s, t in keys)))
    with get_engine(database_url).begin() as conn:
        conn.execute(update(live_leases).where(where).values(worker=None, expires_at=now))


def forget_worker(database_url: str, worker: str) -> None:
    with get_engine(database_url).begin() as conn:
        conn.execute(delete(live_workers).where(live_workers.c.worker == worker))


def holders(database_url: str) -> dict[Series, str | None]:
    """Who holds each series (for tests, /health and benchmarks)."""
    c = live_leases.c
    with get_engine(database_url).connect() as conn:
        return {(r[0], r[1]): r[2] for r in conn.execute(select(c.symbol, c.timeframe, c.worker)).all()}
