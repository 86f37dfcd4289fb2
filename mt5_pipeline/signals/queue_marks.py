"""Ending an attempt: the marks a pusher applies to the rows it claimed (SENT, RETRY,
REJECTED, FAILED, EXPIRED), fenced by the claim token (see :mod:`mt5_pipeline.signals.queue`),
and the sweep that expires PENDING rows nobody holds once their time has passed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, String, Text, and_, bindparam, case, func, literal, or_, update
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.dml import Update

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.storage.dialect import DriverStatement, RowsParameter
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import UtcDateTime, signals_queue

q = signals_queue
MARK_KINDS = ("SENT", "RETRY", "REJECTED", "FAILED", "EXPIRED")


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


def _apply_marks_statement(m: FromClause) -> Update:
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
        if mark.kind not in MARK_KINDS:
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
    # A flush is one round trip on PostgreSQL: it runs beside the sends.
    with get_engine(database_url).connect() as conn:
        return {r[0] for r in _MARKS.run_in_one_round_trip(conn, _apply_marks_statement, rows)}


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


def _expire_statement() -> Update:
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


_EXPIRE = DriverStatement(_expire_statement())  # every push cycle runs it: one round trip on PostgreSQL


def expire_stale(database_url: str, *, now: datetime | None = None) -> int:
    """PENDING rows past ``expires_at`` become EXPIRED (never sent). Leased rows are left to
    their holder, which checks expiry itself before sending."""
    with get_engine(database_url).connect() as conn:
        return _EXPIRE.rowcount(conn, {"now": resolve_now(now)})
