"""The signals outbox (`signals_queue`): every SQL statement of the queue, named after what it does.

Life of a signal: ``PENDING -> SENT -> ACKED``; ``FAILED`` after ``EA_MAX_ATTEMPTS``;
``EXPIRED`` when ``expires_at`` passes before delivery (never sent); ``REJECTED`` when
the EA answers but says no.

There is no in-flight status. A pusher *claims* PENDING rows by giving them a claim token
and a lease (``lease_until``) in one statement; every later update of the row must match
that token, so a pusher whose lease ran out (it stalled, or died and another pusher took
the row) cannot overwrite what the new holder did. A pusher that dies leaves leases that
simply run out; the row is claimed again and re-sent with the same ``signal_id``, which
the EA dedupes. No queue can promise exactly-once delivery; this one promises
at-least-once with a stable ``signal_id``.

Order per symbol: a row is only claimable when no earlier (lower id) PENDING, unexpired
row of the same symbol is outside the claimer's own candidate set -- i.e. none is leased
by another pusher, being claimed right now, or waiting for its retry. So a symbol's later
signal never overtakes an earlier one that is still in play. (Inside a batch the pusher
sends in id order and ends the cycle at the first row that must be retried, releasing
the rest untried.)

PostgreSQL: the claim is one ``UPDATE ... WHERE id IN (... FOR UPDATE SKIP LOCKED)``
statement, safe with several pushers. SQLite: the same statement without the lock
clause; SQLite runs each write statement under its single database write lock, so the
claim is atomic there too (one pusher is the intended set-up). Where the two databases
spell a statement differently, :mod:`mt5_pipeline.storage.dialect` decides.

Times: aware UTC datetimes in and out. SQLite stores them as naive text in UTC, so every
value is normalised before binding and given back its zone after reading.

This module holds the claim, the lease and their release; the rest of a signal's life
sits beside it, and every name is importable from here (``queue.<name>``):
:mod:`~mt5_pipeline.signals.queue_enqueue` (new rows), :mod:`~mt5_pipeline.signals.queue_marks`
(the end of an attempt, expiry), :mod:`~mt5_pipeline.signals.queue_acks` (the EA's acks) and
:mod:`~mt5_pipeline.signals.queue_inspection` (reads).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, case, exists, func, or_, select, update
from sqlalchemy.sql.dml import ReturningUpdate

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.signals.queue_acks import UnknownSignalError, record_ack
from mt5_pipeline.signals.queue_enqueue import (
    NOTIFY_CHANNEL,
    PAYLOAD_COLUMNS,
    enqueue,
    enqueue_in,
    enqueue_many,
)
from mt5_pipeline.signals.queue_inspection import (
    count_deliverable,
    count_pending,
    delivery_figures,
    find_bar_signal,
    get_signal,
    next_due_at,
    pending_for_pull,
    queue_status,
    status_counts,
)
from mt5_pipeline.signals.queue_marks import (
    Mark,
    apply_marks,
    expire_stale,
    mark_expired,
    mark_failed,
    mark_rejected,
    mark_retry,
    mark_sent,
)
from mt5_pipeline.storage.dialect import DriverStatement, materialized
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_queue

q = signals_queue

# The queue's whole interface, wherever each part is written.
__all__ = [
    "NOTIFY_CHANNEL",
    "Claimed",
    "Mark",
    "UnknownSignalError",
    "enqueue_in",
    "apply_marks",
    "claim_batch",
    "count_deliverable",
    "count_pending",
    "delivery_figures",
    "enqueue",
    "enqueue_many",
    "expire_stale",
    "extend_lease",
    "find_bar_signal",
    "get_signal",
    "mark_expired",
    "mark_failed",
    "mark_rejected",
    "mark_retry",
    "mark_sent",
    "next_due_at",
    "pending_for_pull",
    "queue_status",
    "record_ack",
    "release_claims",
    "status_counts",
]


# ---- claiming -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A row this pusher holds: send ``signal``, then finish it with ``claim_token``."""

    id: int
    signal: Signal
    attempts: int  # including the attempt this claim is for
    claim_token: str
    lease_until: datetime

    @property
    def signal_id(self) -> str:
        return self.signal.signal_id

    @property
    def symbol(self) -> str:
        return self.signal.symbol

    @property
    def side(self) -> str:
        return self.signal.side

    @property
    def confidence(self) -> float:
        return self.signal.confidence

    @property
    def expires_at(self) -> datetime:
        return self.signal.expires_at

    @property
    def payload(self) -> dict:
        """The body the EA receives."""
        return self.signal.to_payload()


def _claim_statement(probe: bool = False) -> ReturningUpdate[Any]:
    """The claim, built once (bound parameters: now, limit, token, lease_until, exclude_id).

    ``probe``: the circuit breaker's probe. Only the first unexpired PENDING row of its
    symbol qualifies (a probe never overtakes a signal of its own symbol), and one that
    never failed is preferred: a row that failed before may be a poison signal, and a
    probe that hits one would pass for an outage."""
    at = bindparam("now", type_=q.c.expires_at.type)
    excluded = q.alias("excluded")
    waiting = q.alias("waiting")
    # Per symbol, the first row that cannot go now (waiting for its retry, or leased by
    # another pusher): the rows after it wait for it. Filtered before the LIMIT, so a
    # backlog behind a few such rows never hides the rows of other symbols from the claim.
    # One grouped pass over the pending rows (not a probe per row): its cost does not hang
    # on the planner's statistics of a table that fills fast.
    # Computed once (at most one row per symbol), never re-run per candidate row.
    first_waiting = materialized(
        select(waiting.c.symbol, func.min(waiting.c.id).label("first_id"))
        .where(
            waiting.c.status == "PENDING",
            waiting.c.expires_at > at,
            or_(waiting.c.next_attempt_at > at, waiting.c.lease_until >= at),
        )
        .group_by(waiting.c.symbol)
        .cte("first_waiting")
    )
    behind_a_waiting_row = exists().where(first_waiting.c.symbol == q.c.symbol, first_waiting.c.first_id < q.c.id)
    # The probe: the first unexpired PENDING row of each symbol.
    ahead = q.alias("ahead")
    heads = materialized(
        select(func.min(ahead.c.id))
        .where(ahead.c.status == "PENDING", ahead.c.expires_at > at)
        .group_by(ahead.c.symbol)
        .cte("heads")
    )
    candidates = (
        select(q.c.id, q.c.symbol)
        .where(
            q.c.status == "PENDING",
            q.c.next_attempt_at <= at,
            q.c.expires_at > at,
            or_(q.c.lease_until.is_(None), q.c.lease_until < at),
            # Not the symbol of this row (the breaker's suspect): a probe must be another signal.
            q.c.symbol.not_in(
                select(excluded.c.symbol).where(excluded.c.id == bindparam("exclude_id", type_=q.c.id.type))
            ),
            ~behind_a_waiting_row,
            *([q.c.id.in_(select(heads))] if probe else []),
        )
        .order_by(*((q.c.last_error.is_not(None), q.c.attempts) if probe else ()), q.c.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)  # SQLite's compiler drops it (one writer at a time there)
        .cte("candidates")
    )
    earlier = q.alias("earlier")
    # Then the same rule against the candidates themselves: an earlier row still in play
    # and not ours to send first (locked by a concurrent claim, SKIP LOCKED skipped it).
    blocked = exists().where(
        earlier.c.status == "PENDING",
        earlier.c.symbol == candidates.c.symbol,
        earlier.c.id < candidates.c.id,
        earlier.c.expires_at > at,
        earlier.c.id.not_in(select(candidates.c.id)),
    )
    claimable = select(candidates.c.id).where(~blocked)
    return (
        update(q)
        .where(q.c.id.in_(claimable))
        .values(
            claim_token=bindparam("token", type_=q.c.claim_token.type),
            lease_until=bindparam("lease_until", type_=q.c.lease_until.type),
            attempts=q.c.attempts + 1,
        )
        .returning(*PAYLOAD_COLUMNS)
    )


# The claim: one round trip on PostgreSQL. Its commit need not wait for the WAL flush (a
# claim lost to a database crash is claimed again, same signal_id), and it sits between a
# fresh signal and the EA.
_CLAIM = {probe: DriverStatement(_claim_statement(probe), no_commit_flush=True) for probe in (False, True)}
_PAYLOAD_NAMES = [c.name for c in PAYLOAD_COLUMNS]


def claim_batch(
    database_url: str,
    limit: int,
    *,
    lease_seconds: float,
    now: datetime | None = None,
    exclude_id: int | None = None,
    probe: bool = False,
) -> list[Claimed]:
    """Claim up to ``limit`` deliverable rows, oldest first, keeping order per symbol.

    Deliverable: PENDING, due (``next_attempt_at <= now``), not expired, not leased.
    Claiming counts the attempt (``attempts + 1``); :func:`release_claims` undoes it for
    rows that were not tried. ``exclude_id``: no row of that row's symbol (the circuit
    breaker's suspect, when probing with another signal; the later rows of its symbol
    would wait for it anyway). ``probe``: see :func:`_claim_statement`.
    """
    if limit <= 0:
        return []
    at = resolve_now(now)
    token = str(uuid.uuid4())
    lease_until = at + timedelta(seconds=lease_seconds)
    params = {
        "now": at,
        "limit": int(limit),
        "token": token,
        "lease_until": lease_until,
        "exclude_id": -1 if exclude_id is None else int(exclude_id),
    }
    with get_engine(database_url).connect() as conn:
        raw = _CLAIM[probe].run(conn, params)
    rows = [dict(zip(_PAYLOAD_NAMES, r, strict=True)) for r in raw]
    for m in rows:  # what the table's UtcDateTime gives back through SQLAlchemy
        m["ts"], m["expires_at"] = as_utc(m["ts"]), as_utc(m["expires_at"])
    return [
        Claimed(
            id=m["id"], signal=Signal.from_row(m), attempts=m["attempts"], claim_token=token, lease_until=lease_until
        )
        for m in sorted(rows, key=lambda m: m["id"])
    ]


def extend_lease(database_url: str, claim_token: str, *, lease_seconds: float, now: datetime | None = None) -> set[int]:
    """Push the lease of every row still held under ``claim_token``; returns their ids."""
    until = resolve_now(now) + timedelta(seconds=lease_seconds)
    stmt = (
        update(q)
        .where(q.c.claim_token == claim_token, q.c.status == "PENDING")
        .values(lease_until=until)
        .returning(q.c.id)
    )
    with get_engine(database_url).begin() as conn:
        return {r.id for r in conn.execute(stmt)}


def release_claims(
    database_url: str,
    claim_token: str,
    *,
    ids: Iterable[int] | None = None,
    not_before: datetime | None = None,
    error: str | None = None,
) -> int:
    """Give back rows held under ``claim_token`` that were not tried, or whose attempt is
    not the signal's fault (an EA outage, a configuration error): the lease goes, and the
    attempt the claim counted is undone. ``not_before`` postpones them; ``error`` is kept
    as their ``last_error``. Returns the rows released."""
    where = [q.c.claim_token == claim_token]
    if ids is not None:
        where.append(q.c.id.in_(list(ids)))
    values: dict[str, Any] = {
        "claim_token": None,
        "lease_until": None,
        "attempts": case((q.c.attempts > 0, q.c.attempts - 1), else_=0),
    }
    if error is not None:
        values["last_error"] = error
    if not_before is not None:
        nb = as_utc(not_before)
        values["next_attempt_at"] = case((q.c.next_attempt_at < nb, nb), else_=q.c.next_attempt_at)
    with get_engine(database_url).begin() as conn:
        released = conn.execute(update(q).where(*where, q.c.status == "PENDING").values(**values)).rowcount
        # A row the EA acked while we held it keeps no stale lease either.
        conn.execute(update(q).where(*where, q.c.status != "PENDING").values(claim_token=None, lease_until=None))
    return released
