"""One signal in, at most one order out: validation, expiry, dedupe, the order, the ack.

A body is checked and parsed into the typed Signal by the contract
(:func:`mt5_pipeline.execution.contract.parse_signal`). What the terminal says decides the answer:
a fill or a refusal is final (stored, acked, answered 200); a transient answer (a
retcode of :data:`~mt5_pipeline.execution.contract.TRANSIENT_RETCODES`, or a lost ``order_send``
answer with no order found by its comment) is not: nothing final is stored or acked,
the answer is 503, so the pusher tries again within the TTL and in pull mode the signal
stays pending. The next try looks the order up by its comment before sending.

Before an order, the execution policy (:mod:`.positions`, the core's rule with the
terminal's open positions) may skip the signal (acked REJECTED, "skipped by the
execution policy ...") or close an opposite position first; every fill is recorded with
what the policy needs later (timeframe, entry bar, max hold) in the same transaction as
its ack.

Both ways a signal arrives (POST /signals from the pusher, GET /ea/signals in pull mode)
end here, so they behave the same. Signals are handled one at a time (one lock): the
terminal takes one order at a time anyway, and it makes "already executed?" then
"execute" atomic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mt5_pipeline.bridge import orders
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import Terminal, TerminalError
from mt5_pipeline.clock import iso_z, utcnow
from mt5_pipeline.execution.contract import parse_signal
from mt5_pipeline.execution.trade_signal import Signal

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Executor:
    terminal: Terminal
    store: BridgeStore
    cfg: orders.OrderSettings
    _: KW_ONLY
    clock: Callable[[], datetime] = utcnow
    on_ack: Callable[[], None] | None = None  # called after an outcome and its ack are stored
    positions: PositionKeeper | None = None  # the execution policy (None: every signal opens, as before it)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def handle(self, body: object) -> tuple[int, dict]:
        """(HTTP status, JSON answer) for one signal body, as the seed's EA answers."""
        signal, errors = parse_signal(body)
        if signal is None:
            return 422, {"success": False, "message": "; ".join(errors)}
        with self._lock:
            previous = self.store.execution(signal.signal_id)
            if previous is not None and previous["status"] not in ("SENDING", "RETRY"):
                return 200, {**previous["answer"], "duplicate": True}
            if previous is not None and previous["status"] == "SENDING":
                return self._reconcile(signal)
            if self.clock() >= signal.expires_at:
                message = f"signal expired at {iso_z(signal.expires_at)}; not traded"
                answer = {"success": False, "message": message, "reason": "expired"}
                self._finish(signal, orders.Execution("EXPIRED", description=message), answer)
                return 200, answer
            if not self.terminal.ensure():
                # Nothing was sent and nothing is recorded: 503 makes the pusher try again
                # (and in pull mode the signal stays pending for the next poll).
                code, text = self.terminal.last_error()
                return 503, {
                    "success": False,
                    "message": f"the MT5 terminal is not reachable ({code} {text}); try again",
                }
            if previous is not None:
                # An earlier try ended "not now" or with a lost answer: the order may exist after all.
                found = self._lookup(signal)
                if isinstance(found, tuple):
                    return found
                if found is not None:
                    return 200, self._record(signal, self._recovered(found, "found in the terminal on a retry"))
            if self.positions is not None:
                verdict, why = self.positions.entry(signal)
                if verdict == "skip":
                    answer = {"success": False, "message": why, "reason": "execution_policy"}
                    log.info("%s %s %s %s: %s", signal.signal_id, signal.side, signal.symbol, signal.timeframe, why)
                    self._finish(signal, orders.Execution("REJECTED", description=why), answer)
                    return 200, answer
                if verdict == "retry":
                    log.warning("%s %s %s not placed yet: %s", signal.signal_id, signal.side, signal.symbol, why)
                    return 503, {"success": False, "message": f"not placed, try again: {why}", "transient": True}
            self.store.begin(signal)
            now = self.clock()
            try:
                execution = orders.place(
                    self.terminal, signal, self.cfg, since=now - timedelta(days=7), until=now + timedelta(days=1)
                )
            except Exception:  # the terminal connection broke mid-call: outcome unknown
                log.exception("order_send for %s raised", signal.signal_id)
                return self._reconcile(signal)
            if execution.status == "TRANSIENT":
                return self._transient(signal, execution)
            return 200, self._record(signal, execution)

    def _transient(self, signal: Signal, execution: orders.Execution) -> tuple[int, dict]:
        self.store.retry_later(signal.signal_id, execution.retcode, execution.message)
        log.warning(
            "%s %s %s not placed yet (%s); answering 503 so it is tried again",
            signal.signal_id,
            signal.side,
            signal.symbol,
            execution.message,
        )
        answer = {"success": False, "message": f"not placed, try again: {execution.message}", "transient": True}
        if execution.retcode is not None:
            answer.update(retcode=execution.retcode, description=execution.description)
        return 503, answer

    def _record(self, signal: Signal, execution: orders.Execution) -> dict:
        if execution.status == "FILLED":
            answer = {
                "success": True,
                "ticket": execution.ticket,
                "retcode": execution.retcode,
                "message": execution.message,
            }
            log.info(
                "%s %s %s: ticket %s (%s)",
                signal.signal_id,
                signal.side,
                signal.symbol,
                execution.ticket,
                execution.message,
            )
        else:
            answer = {
                "success": False,
                "message": f"rejected by the terminal: {execution.message}",
                "retcode": execution.retcode,
                "description": execution.description,
            }
            log.warning("%s %s %s rejected: %s", signal.signal_id, signal.side, signal.symbol, execution.message)
        position = self.positions.record(signal, execution) if self.positions is not None else None
        self._finish(signal, execution, answer, position)
        return answer

    def _finish(self, signal: Signal, execution: orders.Execution, answer: dict, position: dict | None = None) -> None:
        status, ticket, retcode, message = execution.status, execution.ticket, execution.retcode, execution.message
        ack: dict[str, Any] = {
            "signal_id": signal.signal_id,
            "ticket": ticket,
            "status": status,
            "message": message[:2000],
        }
        if retcode is not None and status == "REJECTED":
            ack["retcode"] = retcode
        self.store.finish(
            signal, status, ticket=ticket, retcode=retcode, message=message, answer=answer, ack=ack, position=position
        )
        if self.on_ack is not None:
            self.on_ack()

    def _lookup(self, signal: Signal) -> int | None | tuple[int, dict]:
        """The ticket of this signal's order in the terminal, None, or a 503 answer while
        the terminal cannot say."""
        now = self.clock()
        try:
            return orders.find_placed(
                self.terminal,
                signal.symbol,
                orders.order_comment(signal.signal_id),
                self.cfg.magic,
                now - timedelta(days=7),
                now + timedelta(days=1),
            )
        except TerminalError as exc:
            return 503, {
                "success": False,
                "message": f"outcome of an earlier order_send unknown yet ({exc}); try again",
            }

    @staticmethod
    def _recovered(ticket: int, how: str) -> orders.Execution:
        execution = orders.Execution("FILLED", ticket=ticket, retcode=10009, description=how)
        execution.notes.append(how)
        return execution

    def _reconcile(self, signal: Signal) -> tuple[int, dict]:
        """order_send was called but its result never recorded (a crash, a broken
        connection): look the order up in the terminal rather than send it again. While
        the terminal cannot answer, 503 and the signal stays in flight for the next try."""
        found = self._lookup(signal)
        if isinstance(found, tuple):
            return found
        if found is not None:
            return 200, self._record(signal, self._recovered(found, "recovered after an interrupted order_send"))
        execution = orders.Execution(
            "REJECTED",
            description=(
                "an earlier order_send for this signal was interrupted and no order with its comment exists; "
                "not sent again"
            ),
        )
        return 200, self._record(signal, execution)
