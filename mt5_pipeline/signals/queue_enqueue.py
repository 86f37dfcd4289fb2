"""Putting signals into the outbox (`signals_queue`): a new PENDING row per signal, one
per bar, and a NOTIFY in the same transaction so a listening pusher wakes at the commit.

Also the columns a queued signal is read back from (claims and reads use them), kept
beside the row they describe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from mt5_pipeline.clock import resolve_now
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.storage.dialect import insert_on_conflict
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.notifications import notify
from mt5_pipeline.storage.schema import signals_queue

q = signals_queue

# LISTEN/NOTIFY channel: enqueue notifies it in the inserting transaction, the worker listens.
NOTIFY_CHANNEL = "signals_queue"

# What Signal.from_row reads back, with the delivery state a claim reports (attempts, lease).
PAYLOAD_COLUMNS = (
    q.c.id,
    q.c.signal_id,
    q.c.ts,
    q.c.symbol,
    q.c.timeframe,
    q.c.side,
    q.c.confidence,
    q.c.sl_pips,
    q.c.tp_pips,
    q.c.price,
    q.c.meta,
    q.c.expires_at,
    q.c.attempts,
    q.c.lease_until,
)


def row_values(signal: Signal | Mapping[str, Any], now: datetime) -> dict:
    """A new PENDING row for a signal (a Signal, or an EA payload that must parse as one)."""
    value = signal if isinstance(signal, Signal) else Signal.from_payload(signal)
    return {**value.to_row(), "status": "PENDING", "attempts": 0, "next_attempt_at": now, "created_at": now}


def _insert_ignoring_duplicates(conn: Connection) -> ReturningInsert[tuple[int]]:
    # No conflict target: a second signal for the same bar, whatever the model version
    # (the partial unique index uq_signals_queue_bar), and a re-sent signal_id are both
    # "already queued".
    return insert_on_conflict(conn, q).on_conflict_do_nothing().returning(q.c.id)


def _notify(conn: Connection, count: int) -> None:
    # Inside the inserting transaction, so the pusher is woken by the commit, not before.
    if count:
        notify(conn, NOTIFY_CHANNEL, str(count))


def enqueue(database_url: str, signal: Signal | Mapping[str, Any], *, now: datetime | None = None) -> bool:
    """Queue one signal (a Signal, or an EA payload). False when its bar (symbol, timeframe, ts) or
    its signal_id already has a row: the database's unique index decides, not Python, so
    two processes racing on one bar queue one signal."""
    with get_engine(database_url).begin() as conn:
        return enqueue_in(conn, signal, now=now)


def enqueue_in(conn: Connection, signal: Signal | Mapping[str, Any], *, now: datetime | None = None) -> bool:
    """:func:`enqueue` inside the caller's transaction, so what the caller writes with it (the
    live worker's feature rows) commits with the signal, and the pusher wakes on that commit."""
    inserted = conn.execute(_insert_ignoring_duplicates(conn), row_values(signal, resolve_now(now))).first() is not None
    _notify(conn, int(inserted))
    return inserted


def enqueue_many(
    database_url: str, signals: Iterable[Signal | Mapping[str, Any]], *, now: datetime | None = None
) -> int:
    """Queue many signals in one transaction (one NOTIFY); returns how many were new."""
    at = resolve_now(now)
    rows = [row_values(s, at) for s in signals]
    if not rows:
        return 0
    with get_engine(database_url).begin() as conn:
        inserted = len(conn.execute(_insert_ignoring_duplicates(conn), rows).all())
        _notify(conn, inserted)
    return inserted
