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
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from mt5_pipeline.clock import as_utc, iso_z, resolve_now
from mt5_pipeline.execution.contract import ACK_STATUSES, ack_outcome, queue_status_after_ack
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.storage.dialect import RowsParameter, insert_on_conflict, materialized, skip_commit_flush
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.notifications import notify
from mt5_pipeline.storage.schema import SIGNAL_STATUSES, UtcDateTime, signals_ack, signals_queue

q = signals_queue

# LISTEN/NOTIFY channel: enqueue notifies it in the inserting transaction, the worker listens.
NOTIFY_CHANNEL = "signals_queue"


class UnknownSignalError(LookupError):
    """An ack (or lookup) named a signal_id that is not in signals_queue."""


# ---- rows and payloads ------------------------------------------------------------------


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


_PAYLOAD_COLUMNS = (
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


def _row_values(signal: Signal | Mapping[str, Any], now: datetime) -> dict:
    """A new PENDING row for a signal (a Signal, or an EA payload that must parse as one)."""
    value = signal if isinstance(signal, Signal) else Signal.from_payload(signal)
    return {**value.to_row(), "status": "PENDING", "attempts": 0, "next_attempt_at": now, "created_at": now}


def _insert_ignoring_duplicates(conn: Connection):
    # No conflict target: a second signal for the same bar, whatever the model version
    # (the partial unique index uq_signals_queue_bar), and a re-sent signal_id are both
    # "already queued".
    return insert_on_conflict(conn, q).on_conflict_do_nothing().returning(q.c.id)


def _notify(conn: Connection, count: int) -> None:
    # Inside the inserting transaction, so the pusher is woken by the commit, not before.
    if count:
        notify(conn, NOTIFY_CHANNEL, str(count))


# ---- writing ------------------------------------------------------------------------------


def enqueue(database_url: str, signal: Signal | Mapping[str, Any], *, now: datetime | None = None) -> bool:
    """Queue one signal (a Signal, or an EA payload). False when its bar (symbol, timeframe, ts) or
    its signal_id already has a row: the database's unique index decides, not Python, so
    two processes racing on one bar queue one signal."""
    values = _row_values(signal, resolve_now(now))
    with get_engine(database_url).begin() as conn:
        inserted = conn.execute(_insert_ignoring_duplicates(conn), values).first() is not None
        _notify(conn, int(inserted))
    return inserted


def enqueue_many(
    database_url: str, signals: Iterable[Signal | Mapping[str, Any]], *, now: datetime | None = None
) -> int:
    """Queue many signals in one transaction (one NOTIFY); returns how many were new."""
    at = resolve_now(now)
    rows = [_row_values(s, at) for s in signals]
    if not rows:
        return 0
    with get_engine(database_url).begin() as conn:
        inserted = len(conn.execute(_insert_ignoring_duplicates(conn), rows).all())
        _notify(conn, inserted)
    return inserted


def _claim_statement(probe: bool = False):
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
        .returning(*_PAYLOAD_COLUMNS)
    )


_CLAIM = _claim_statement()
_CLAIM_PROBE = _claim_statement(probe=True)


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
    engine = get_engine(database_url)
    params = {
        "now": at,
        "limit": int(limit),
        "token": token,
        "lease_until": lease_until,
        "exclude_id": -1 if exclude_id is None else int(exclude_id),
    }
    with engine.begin() as conn:
        # A claim need not survive a database crash (the row would just be claimed again,
        # same signal_id), and this statement sits between a fresh signal and the EA.
        skip_commit_flush(conn)
        rows = conn.execute(_CLAIM_PROBE if probe else _CLAIM, params).all()
    rows.sort(key=lambda r: r.id)
    return [
        Claimed(id=r.id, signal=Signal.from_row(r), attempts=r.attempts, claim_token=token, lease_until=lease_until)
        for r in rows
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


@dataclass(frozen=True)
class Mark:
    """The end of one attempt, applied with :func:`apply_marks`.

    kind: SENT | RETRY | REJECTED | FAILED | EXPIRED.
    """

    id: int
    claim_token: str
    kind: str
    at: datetime
    ticket: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


# A flush of attempt results, one row each; the statement applies them all at once.
_MARKS = RowsParameter(
    "mark",
    id=BigInteger(),
    token=String(),
    kind=String(),
    ticket=BigInteger(),
    error=Text(),
    next_at=UtcDateTime(),
    at=UtcDateTime(),
)


def _apply_marks_statement(m):
    """Each mark's row, if its claim token still matches: SENT keeps ACKED (the EA's
    background ack may land before it), RETRY stays PENDING with its next attempt time,
    REJECTED / FAILED / EXPIRED end it; every mark releases the lease."""
    sent, retry = m.c.kind == "SENT", m.c.kind == "RETRY"
    return (
        update(q)
        # The EA's own ack may have ended the row already with this very outcome.
        .where(
            q.c.id == m.c.id,
            q.c.claim_token == m.c.token,
            or_(q.c.status == "PENDING", and_(sent, q.c.status == "ACKED"), q.c.status == m.c.kind),
        )
        .values(
            status=case(
                (sent, case((q.c.status == "ACKED", literal("ACKED")), else_=literal("SENT"))),
                (retry, literal("PENDING")),
                else_=m.c.kind,
            ),
            sent_at=case((sent, m.c.at), else_=q.c.sent_at),
            ticket=case((sent, func.coalesce(q.c.ticket, m.c.ticket)), else_=q.c.ticket),
            next_attempt_at=case((retry, m.c.next_at), else_=q.c.next_attempt_at),
            last_error=case((sent, q.c.last_error), else_=m.c.error),
            claim_token=None,
            lease_until=None,
        )
        .returning(q.c.id)
    )


def apply_marks(database_url: str, marks: Iterable[Mark]) -> set[int]:
    """Apply attempt results in one transaction; returns the ids whose token still matched
    (a row missing from the result was taken over by another pusher after our lease ran out)."""
    marks = list(marks)
    if not marks:
        return set()
    for mark in marks:
        if mark.kind not in ("SENT", "RETRY", "REJECTED", "FAILED", "EXPIRED"):
            raise ValueError(f"unknown mark kind {mark.kind!r}")
        if mark.kind == "RETRY" and mark.next_attempt_at is None:
            raise ValueError("a RETRY mark needs next_attempt_at")
    rows = [
        (
            m.id,
            m.claim_token,
            m.kind,
            m.ticket,
            m.error,
            as_utc(m.next_attempt_at) if m.next_attempt_at else None,
            as_utc(m.at),
        )
        for m in marks
    ]
    with get_engine(database_url).begin() as conn:
        return {r[0] for r in _MARKS.execute(conn, _apply_marks_statement, rows)}


def mark_sent(
    database_url: str, row_id: int, claim_token: str, ticket: int | None, *, now: datetime | None = None
) -> bool:
    return row_id in apply_marks(database_url, [Mark(row_id, claim_token, "SENT", resolve_now(now), ticket=ticket)])


def mark_retry(
    database_url: str,
    row_id: int,
    claim_token: str,
    error: str,
    next_attempt_at: datetime,
    *,
    now: datetime | None = None,
) -> bool:
    return row_id in apply_marks(
        database_url,
        [Mark(row_id, claim_token, "RETRY", resolve_now(now), error=error, next_attempt_at=next_attempt_at)],
    )


def mark_rejected(database_url: str, row_id: int, claim_token: str, error: str, *, now: datetime | None = None) -> bool:
    return row_id in apply_marks(database_url, [Mark(row_id, claim_token, "REJECTED", resolve_now(now), error=error)])


def mark_failed(database_url: str, row_id: int, claim_token: str, error: str, *, now: datetime | None = None) -> bool:
    return row_id in apply_marks(database_url, [Mark(row_id, claim_token, "FAILED", resolve_now(now), error=error)])


def mark_expired(database_url: str, row_id: int, claim_token: str, *, now: datetime | None = None) -> bool:
    return row_id in apply_marks(
        database_url, [Mark(row_id, claim_token, "EXPIRED", resolve_now(now), error="expired before delivery")]
    )


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


def _expire_statement():
    at = bindparam("now", type_=q.c.expires_at.type)
    return (
        update(q)
        .where(
            q.c.status == "PENDING",
            q.c.expires_at <= at,
            or_(q.c.lease_until.is_(None), q.c.lease_until < at),
        )
        .values(
            status="EXPIRED",
            # A claim left behind means its pusher died holding the row: it may have
            # reached the EA before that (an ack from the EA would then make it ACKED).
            last_error=case(
                (
                    q.c.claim_token.is_not(None),
                    literal(
                        "expired before delivery; its pusher stopped while holding it, so it may have reached the EA"
                    ),
                ),
                else_=literal("expired before delivery"),
            ),
            claim_token=None,
            lease_until=None,
        )
    )


_EXPIRE = _expire_statement()


def expire_stale(database_url: str, *, now: datetime | None = None) -> int:
    """PENDING rows past ``expires_at`` become EXPIRED (never sent). Leased rows are left to
    their holder, which checks expiry itself before sending."""
    with get_engine(database_url).begin() as conn:
        return conn.execute(_EXPIRE, {"now": resolve_now(now)}).rowcount


def record_ack(
    database_url: str,
    signal_id: str,
    ticket: int | None,
    status: str,
    message: str = "",
    *,
    retcode: int | None = None,
    now: datetime | None = None,
) -> dict:
    """Store the EA's acknowledgement and move the signal as the contract says
    (:data:`mt5_pipeline.execution.contract.ACK_OUTCOMES`): a success to ACKED with the ticket, a
    refusal to REJECTED with the retcode and description in ``last_error``, an expiry to
    EXPIRED; never backwards (:func:`~mt5_pipeline.execution.contract.queue_status_after_ack`).

    Repeating an ack is harmless; the stored ack keeps the strongest outcome received
    (``acked_at`` the first time). Raises UnknownSignalError for a signal_id that was never
    queued, ValueError naming the field for a bad status, ticket or retcode.
    """
    if not isinstance(status, str) or not status.strip():
        raise ValueError(f"status: expected one of {', '.join(ACK_STATUSES)}")
    status = status.strip().upper()
    ack_outcome(status)  # raises for an unknown status
    if ticket is not None and (isinstance(ticket, bool) or not isinstance(ticket, int) or ticket < 0):
        raise ValueError("ticket: expected a non-negative whole number or null")
    if retcode is not None and (isinstance(retcode, bool) or not isinstance(retcode, int) or retcode < 0):
        raise ValueError("retcode: expected a non-negative whole number or null")
    if ticket == 0:
        ticket = None  # MQL's "no ticket"
    message = message or ""
    if retcode is not None and f"retcode {retcode}" not in message:
        message = f"retcode {retcode}: {message}" if message else f"retcode {retcode}"
    at = resolve_now(now)
    engine = get_engine(database_url)
    with engine.begin() as conn:
        # Locked until commit (SQLite's compiler drops the clause: one writer at a time there).
        row = conn.execute(select(q.c.id, q.c.status).where(q.c.signal_id == signal_id).with_for_update()).first()
        if row is None:
            raise UnknownSignalError(f"unknown signal_id {signal_id!r}: no such signal in signals_queue")
        previous = conn.execute(select(signals_ack.c.status).where(signals_ack.c.signal_id == signal_id)).first()
        repeated = previous is not None
        outcome = ack_outcome(status)
        if previous is None:
            conn.execute(
                signals_ack.insert().values(
                    signal_id=signal_id, ticket=ticket, status=status, message=message, acked_at=at
                )
            )
        elif (
            previous.status not in ACK_STATUSES
            or queue_status_after_ack(ack_outcome(previous.status), status) == outcome
        ):
            # A stronger or equal outcome replaces the stored ack; a weaker one never does.
            conn.execute(
                update(signals_ack)
                .where(signals_ack.c.signal_id == signal_id)
                .values(
                    ticket=func.coalesce(literal(ticket, signals_ack.c.ticket.type), signals_ack.c.ticket),
                    status=status,
                    message=message,
                )
            )
        queue_status = queue_status_after_ack(row.status, status)
        # An ack that agrees with a refusal or expiry already recorded still brings its retcode and words.
        if queue_status != row.status or (queue_status == outcome and outcome != "ACKED"):
            values: dict[str, Any] = {"status": queue_status}
            if queue_status == "ACKED":
                values.update(
                    acked_at=func.coalesce(q.c.acked_at, at),
                    ticket=func.coalesce(literal(ticket, q.c.ticket.type), q.c.ticket),
                )
            else:
                values["last_error"] = (
                    f"{status.lower()} by the EA: {message}" if message else f"{status.lower()} by the EA"
                )
            conn.execute(update(q).where(q.c.id == row.id).values(**values))
        elif queue_status == "ACKED" and ticket is not None:
            conn.execute(update(q).where(q.c.id == row.id, q.c.ticket.is_(None)).values(ticket=ticket))
    return {
        "signal_id": signal_id,
        "status": queue_status,
        "ticket": ticket,
        "ack_status": status,
        "repeated": repeated,
    }


# ---- reading ------------------------------------------------------------------------------


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
        select(*_PAYLOAD_COLUMNS)
        .where(q.c.status == "PENDING", q.c.expires_at > at)
        .order_by(q.c.id)
        .limit(max(0, int(limit)))
    )
    with get_engine(database_url).connect() as conn:
        return [Signal.from_row(r) for r in conn.execute(stmt)]


def _deliverable(at: datetime):
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


def _heads_statement():
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
    stmt = select(*_PAYLOAD_COLUMNS).where(
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
