"""The EA's acknowledgements: what it did with a signal, stored in `signals_ack`, and the
signal moved in `signals_queue` as the execution contract says (never backwards).

An ack needs no claim: the EA answers after delivery, whoever delivered, and the same ack
may come again (a retry of its HTTP call, a pull-mode EA acking twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.engine import Connection

from mt5_pipeline.clock import resolve_now
from mt5_pipeline.execution.contract import ACK_STATUSES, ack_outcome, queue_status_after_ack
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_ack, signals_queue

q = signals_queue


class UnknownSignalError(LookupError):
    """An ack (or lookup) named a signal_id that is not in signals_queue."""


@dataclass(frozen=True)
class _Ack:
    """An ack as stored: status upper-cased, no zero ticket, the retcode in the message."""

    signal_id: str
    ticket: int | None
    status: str
    message: str


def _validated(signal_id: str, ticket: int | None, status: str, message: str, retcode: int | None) -> _Ack:
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
    return _Ack(signal_id, ticket, status, message)


def _store_ack(conn: Connection, ack: _Ack, at: datetime) -> bool:
    """Insert the ack, or replace the stored one if this outcome is at least as strong;
    True when one was stored before (a repeated ack)."""
    previous = conn.execute(select(signals_ack.c.status).where(signals_ack.c.signal_id == ack.signal_id)).first()
    if previous is None:
        conn.execute(
            signals_ack.insert().values(
                signal_id=ack.signal_id, ticket=ack.ticket, status=ack.status, message=ack.message, acked_at=at
            )
        )
        return False
    outcome = ack_outcome(ack.status)
    if (
        previous.status not in ACK_STATUSES
        or queue_status_after_ack(ack_outcome(previous.status), ack.status) == outcome
    ):
        # A stronger or equal outcome replaces the stored ack; a weaker one never does.
        conn.execute(
            update(signals_ack)
            .where(signals_ack.c.signal_id == ack.signal_id)
            .values(
                ticket=func.coalesce(literal(ack.ticket, signals_ack.c.ticket.type), signals_ack.c.ticket),
                status=ack.status,
                message=ack.message,
            )
        )
    return True


def _move_signal(conn: Connection, row_id: int, row_status: str, ack: _Ack, at: datetime) -> str:
    """Move the queue row as the ack says (never backwards); its status afterwards."""
    outcome = ack_outcome(ack.status)
    queue_status = queue_status_after_ack(row_status, ack.status)
    # An ack that agrees with a refusal or expiry already recorded still brings its retcode and words.
    if queue_status != row_status or (queue_status == outcome and outcome != "ACKED"):
        values: dict[str, Any] = {"status": queue_status}
        if queue_status == "ACKED":
            values.update(
                acked_at=func.coalesce(q.c.acked_at, at),
                ticket=func.coalesce(literal(ack.ticket, q.c.ticket.type), q.c.ticket),
            )
        else:
            said = ack.status.lower()
            values["last_error"] = f"{said} by the EA: {ack.message}" if ack.message else f"{said} by the EA"
        conn.execute(update(q).where(q.c.id == row_id).values(**values))
    elif queue_status == "ACKED" and ack.ticket is not None:
        conn.execute(update(q).where(q.c.id == row_id, q.c.ticket.is_(None)).values(ticket=ack.ticket))
    return queue_status


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
    ack = _validated(signal_id, ticket, status, message, retcode)
    at = resolve_now(now)
    with get_engine(database_url).begin() as conn:
        # Locked until commit (SQLite's compiler drops the clause: one writer at a time there).
        row = conn.execute(select(q.c.id, q.c.status).where(q.c.signal_id == signal_id).with_for_update()).first()
        if row is None:
            raise UnknownSignalError(f"unknown signal_id {signal_id!r}: no such signal in signals_queue")
        repeated = _store_ack(conn, ack, at)
        queue_status = _move_signal(conn, row.id, row.status, ack, at)
    return {
        "signal_id": signal_id,
        "status": queue_status,
        "ticket": ack.ticket,
        "ack_status": ack.status,
        "repeated": repeated,
    }
