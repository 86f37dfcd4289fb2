"""Reading the outbox: counts per status, what an EA may pull, when the pusher next has
work, one signal or one bar's signal, and the delivery figures /metrics shows. Nothing
here changes a row."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select
from sqlalchemy.sql import ColumnElement, Select

from mt5_pipeline.clock import as_utc, iso_z, resolve_now
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.signals.queue_enqueue import PAYLOAD_COLUMNS
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import SIGNAL_STATUSES, signals_queue

q = signals_queue


def queue_status(database_url: str, *, since: datetime) -> dict:
    """``{"PENDING": {"count": n, "latest": iso}, ...}`` for signals created since ``since``
    (the seed's /ea/queue-status). Only statuses with signals appear."""
    stmt = (
        select(q.c.status, func.count().label("n"), func.max(q.c.created_at).label("latest"))
        .where(q.c.created_at >= as_utc(since))
        .group_by(q.c.status)
    )
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(stmt).all()
    order = {s: i for i, s in enumerate(SIGNAL_STATUSES)}
    return {
        r.status: {"count": int(r.n), "latest": iso_z(r.latest) if r.latest is not None else None}
        for r in sorted(rows, key=lambda r: order.get(r.status, 99))
    }


def status_counts(database_url: str) -> dict[str, int]:
    """Signals per status, all time (for /metrics); every status present, zero if none."""
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(select(q.c.status, func.count()).group_by(q.c.status)).all()
    counts = {s: 0 for s in SIGNAL_STATUSES}
    counts.update({status: int(n) for status, n in rows})
    return counts


def pending_for_pull(database_url: str, limit: int = 100, *, now: datetime | None = None) -> list[Signal]:
    """Unexpired PENDING signals, oldest first, for EAs that poll (changes nothing)."""
    at = resolve_now(now)
    stmt = (
        select(*PAYLOAD_COLUMNS)
        .where(q.c.status == "PENDING", q.c.expires_at > at)
        .order_by(q.c.id)
        .limit(max(0, int(limit)))
    )
    with get_engine(database_url).connect() as conn:
        return [Signal.from_row(r) for r in conn.execute(stmt)]


def _deliverable(at: datetime) -> ColumnElement[bool]:
    return and_(
        q.c.status == "PENDING",
        q.c.next_attempt_at <= at,
        q.c.expires_at > at,
        or_(q.c.lease_until.is_(None), q.c.lease_until < at),
    )


def count_deliverable(database_url: str, *, now: datetime | None = None) -> int:
    """PENDING signals a push cycle could send now (due, unexpired, not leased)."""
    with get_engine(database_url).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(q).where(_deliverable(resolve_now(now)))).scalar_one())


def count_pending(database_url: str, *, now: datetime | None = None) -> int:
    """Unexpired PENDING signals, whether due, waiting for a retry or leased."""
    with get_engine(database_url).connect() as conn:
        stmt = select(func.count()).select_from(q).where(q.c.status == "PENDING", q.c.expires_at > resolve_now(now))
        return int(conn.execute(stmt).scalar_one())


def _heads_statement() -> Select[Any]:
    at = bindparam("now", type_=q.c.expires_at.type)
    earlier = q.alias("earlier")
    return select(q.c.next_attempt_at, q.c.lease_until).where(
        q.c.status == "PENDING",
        q.c.expires_at > at,
        ~exists().where(
            earlier.c.status == "PENDING",
            earlier.c.symbol == q.c.symbol,
            earlier.c.id < q.c.id,
            earlier.c.expires_at > at,
        ),
    )


_HEADS = _heads_statement()


def next_due_at(database_url: str, *, now: datetime | None = None) -> datetime | None:
    """When a push cycle will next find something to send: the earliest time a symbol's
    first unexpired PENDING row becomes due (its retry time, or its lease running out).
    None when nothing is pending. Rows behind an earlier row of their symbol are ignored:
    they wait for it, so counting them would wake the pusher for nothing."""
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(_HEADS, {"now": resolve_now(now)}).all()
    due = [
        max(
            as_utc(r.next_attempt_at), as_utc(r.lease_until) if r.lease_until is not None else as_utc(r.next_attempt_at)
        )
        for r in rows
    ]
    return min(due) if due else None


def get_signal(database_url: str, signal_id: str) -> dict | None:
    """The whole signals_queue row (aware datetimes, ``meta`` decoded), or None."""
    with get_engine(database_url).connect() as conn:
        row = conn.execute(select(q).where(q.c.signal_id == signal_id)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = as_utc(value)
    out["meta"] = json.loads(out["meta"] or "{}")
    return out


def find_bar_signal(database_url: str, symbol: str, timeframe: str, ts: datetime) -> Signal | None:
    """The signal this bar already has (whatever its model version), or None."""
    stmt = select(*PAYLOAD_COLUMNS).where(
        q.c.symbol == symbol, q.c.timeframe == timeframe, q.c.ts == as_utc(ts), q.c.superseded.is_(False)
    )
    with get_engine(database_url).connect() as conn:
        row = conn.execute(stmt).first()
    return Signal.from_row(row) if row is not None else None


def delivery_figures(database_url: str, *, now: datetime | None = None, window_seconds: float = 3600) -> dict[str, Any]:
    """For /metrics: when the oldest unexpired PENDING signal was queued (a stuck delivery
    shows as its growing age), and queue-to-EA seconds (``sent_at - created_at``) of the
    signals delivered in the last ``window_seconds``."""
    at = resolve_now(now)
    with get_engine(database_url).connect() as conn:
        oldest = conn.execute(
            select(func.min(q.c.created_at)).where(q.c.status == "PENDING", q.c.expires_at > at)
        ).scalar()
        rows = conn.execute(
            select(q.c.created_at, q.c.sent_at).where(
                q.c.sent_at.is_not(None), q.c.sent_at >= at - timedelta(seconds=window_seconds)
            )
        ).all()
    latencies = sorted(max(0.0, (as_utc(r.sent_at) - as_utc(r.created_at)).total_seconds()) for r in rows)
    return {"oldest_pending_created_at": as_utc(oldest) if oldest is not None else None, "latencies": latencies}
