"""One signal in, at most one order out: validation, expiry, dedupe, the order, the ack.

Both ways a signal arrives (POST /signals from the pusher, GET /ea/signals in pull mode)
end here, so they behave the same. Signals are handled one at a time (one lock): the
terminal takes one order at a time anyway, and it makes "already executed?" then
"execute" atomic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from mt5_pipeline.apps.ea_sim import validate_signal
from mt5_pipeline.bridge import orders
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import TerminalError
from mt5_pipeline.clock import parse_iso, utcnow

log = logging.getLogger(__name__)


class Executor:
    def __init__(
        self,
        terminal: Any,
        store: BridgeStore,
        cfg: orders.OrderSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_ack: Callable[[], None] | None = None,
    ) -> None:
        self.terminal = terminal
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.on_ack = on_ack or (lambda: None)
        self._lock = threading.Lock()

    def handle(self, signal: Any) -> tuple[int, dict]:
        """(HTTP status, JSON answer) for one signal body, as the seed's EA answers."""
        errors = validate_signal(signal)
        if errors:
            return 422, {"success": False, "message": "; ".join(errors)}
        with self._lock:
            previous = self.store.execution(signal["signal_id"])
            if previous is not None and previous["status"] != "SENDING":
                return 200, {**previous["answer"], "duplicate": True}
            if previous is not None:
                return self._reconcile(signal)
            expires_at = parse_iso(signal["expires_at"])
            if self.clock() >= expires_at:
                message = f"signal expired at {signal['expires_at']}; not traded"
                answer = {"success": False, "message": message, "reason": "expired"}
                self._finish(signal, "EXPIRED", None, None, message, answer)
                return 200, answer
            if not self.terminal.ensure():
                # Nothing was sent and nothing is recorded: 503 makes the pusher try again
                # (and in pull mode the signal stays pending for the next poll).
                code, text = self.terminal.last_error()
                return 503, {"success": False, "message": f"the MT5 terminal is not reachable ({code} {text}); try again"}
            self.store.begin(signal)
            try:
                execution = orders.place(self.terminal, signal, self.cfg)
            except Exception:  # the terminal connection broke mid-call: outcome unknown
                log.exception("order_send for %s raised", signal["signal_id"])
                return self._reconcile(signal)
            return 200, self._record(signal, execution)

    def _record(self, signal: dict, execution: orders.Execution) -> dict:
        if execution.status == "FILLED":
            answer = {"success": True, "ticket": execution.ticket, "retcode": execution.retcode, "message": execution.message}
            log.info("%s %s %s: ticket %s (%s)", signal["signal_id"], signal["side"], signal["symbol"], execution.ticket, execution.message)
        else:
            answer = {
                "success": False,
                "message": f"rejected by the terminal: {execution.message}",
                "retcode": execution.retcode,
                "description": execution.description,
            }
            log.warning("%s %s %s rejected: %s", signal["signal_id"], signal["side"], signal["symbol"], execution.message)
        self._finish(signal, execution.status, execution.ticket, execution.retcode, execution.message, answer)
        return answer

    def _finish(self, signal: dict, status: str, ticket: int | None, retcode: int | None, message: str, answer: dict) -> None:
        ack = {"signal_id": signal["signal_id"], "ticket": ticket, "status": status, "message": message[:2000]}
        self.store.finish(signal, status, ticket=ticket, retcode=retcode, message=message, answer=answer, ack=ack)
        self.on_ack()

    def _reconcile(self, signal: dict) -> tuple[int, dict]:
        """order_send was called but its result never recorded (a crash, a broken
        connection): look the order up in the terminal rather than send it again. While
        the terminal cannot answer, 503 and the signal stays in flight for the next try."""
        now = self.clock()
        try:
            ticket = orders.find_placed(
                self.terminal, signal["symbol"], orders.order_comment(signal["signal_id"]), self.cfg.magic, now - timedelta(days=7), now + timedelta(days=1)
            )
        except TerminalError as exc:
            return 503, {"success": False, "message": f"outcome of an interrupted order_send unknown yet ({exc}); try again"}
        if ticket is not None:
            execution = orders.Execution("FILLED", ticket=ticket, retcode=10009, description="found in the terminal after an interrupted send")
            execution.notes.append("recovered after an interrupted order_send")
            return 200, self._record(signal, execution)
        execution = orders.Execution(
            "REJECTED", description="an earlier order_send for this signal was interrupted and no order with its comment exists; not sent again"
        )
        return 200, self._record(signal, execution)
