"""Reconciliation: the terminal's positions carrying ``BRIDGE_MAGIC`` against the open
trades the API holds, at start and every minute (docs/trades.md).

The terminal is the truth about what is open; the API's record is fixed to match it,
and nothing in the terminal is touched (a position closes only under the execution
policy). ``POST /ea/reconcile`` answers the differences and records the state for the
API's /health and /metrics:

- **unknown**: open in the terminal, not open in the API (opened by hand with the magic,
  or a report that never arrived). The API records it from what is sent here; the
  bridge also queues its open report from the deals history.
- **missing**: open in the API, gone from the terminal (closed while nobody reported
  it). The bridge reads its close from the deals history and reports it.

The last result is in the bridge's /health (``reconciliation``) and /metrics
(``mt5_bridge_reconciliation_differences{kind}``), and differences are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from threading import Event
from typing import Any

from mt5_pipeline.bridge.client import ApiRefused, ApiUnavailable
from mt5_pipeline.bridge.cycles import run_cycles
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.bridge.terminal import TerminalError
from mt5_pipeline.bridge.trade_reports import TradeReporter
from mt5_pipeline.clock import iso_z, utcnow

log = logging.getLogger(__name__)


@dataclass
class ReconcileStatus:
    checked_at: datetime | None = None
    in_sync: bool | None = None  # None: never compared
    terminal_positions: int = 0
    unknown: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        state = "never" if self.in_sync is None else ("in_sync" if self.in_sync else "differences")
        return {
            "state": state, "checked_at": iso_z(self.checked_at) if self.checked_at else None,
            "terminal_positions": self.terminal_positions, "unknown": self.unknown, "missing": self.missing,
            "error": self.error or None,
        }  # fmt: skip


@dataclass(eq=False)
class Reconciler:
    """Compares through the API, store, server-time conversion and clock of the reporter it
    drives: one wiring, so the comparison and the reports it triggers cannot disagree."""

    keeper: PositionKeeper
    reporter: TradeReporter
    status: ReconcileStatus = field(default_factory=ReconcileStatus, init=False)

    def _positions(self) -> list[dict] | None:
        mt5 = self.keeper.terminal.mt5
        held = self.keeper.terminal_positions()
        records = self.reporter.store.positions([int(p.ticket) for p in held]) if held else {}
        times = self.reporter.to_utc([int(p.time) for p in held])
        if times is None:
            return None
        out = []
        for p, opened in zip(held, times, strict=True):
            rec = records.get(int(p.ticket)) or {}
            body = {
                "ticket": int(p.ticket),
                "signal_id": rec.get("signal_id") or self.reporter.store.signal_of_ticket(int(p.ticket)),
                "symbol": p.symbol, "timeframe": rec.get("timeframe"),
                "side": "BUY" if int(p.type) == int(mt5.POSITION_TYPE_BUY) else "SELL",
                "volume": float(p.volume), "open_time": opened, "open_price": float(p.price_open),
                "sl": float(p.sl or 0), "tp": float(p.tp or 0),
            }  # fmt: skip
            out.append({k: v for k, v in body.items() if v is not None})
        return out

    def cycle(self) -> ReconcileStatus:
        """Report what the history says first (so a fresh close is not a difference), then compare."""
        self.reporter.cycle()
        status = ReconcileStatus(checked_at=self.reporter.clock())
        try:
            if not self.keeper.terminal.ensure():
                raise TerminalError("the terminal is not reachable")
            positions = self._positions()
            if positions is None:
                raise TerminalError("the server's UTC offset is not known yet")
            answer = self.reporter.api.reconcile(self.keeper.cfg.magic, self.reporter.account_login(), positions)
        except (TerminalError, ApiUnavailable, ApiRefused) as exc:
            status.error = str(exc)
            status.in_sync, status.unknown, status.missing = (
                self.status.in_sync,
                self.status.unknown,
                self.status.missing,
            )
            log.warning("reconciliation not done: %s", exc)
            self.status = status
            return status
        status.terminal_positions = int(answer.get("terminal_positions") or len(positions))
        status.unknown = [int(t) for t in answer.get("unknown") or []]
        status.missing = [int(t) for t in answer.get("missing") or []]
        status.in_sync = not status.unknown and not status.missing
        if status.unknown:
            log.warning(
                "reconciliation: position(s) %s in the terminal were not open in the API: recorded now, left open",
                status.unknown,
            )
            self.reporter.report_positions(status.unknown)
        if status.missing:
            log.warning(
                "reconciliation: trade(s) %s open in the API are gone from the terminal: reporting their close from "
                "the deals history",
                status.missing,
            )
            try:
                self.reporter.report_positions(status.missing)
            except TerminalError as exc:
                status.error = f"closes of the missing trades not read: {exc}"
            gone = [t for t in status.missing if self.reporter.store.report_state(t) != "closed"]
            if gone:
                log.warning(
                    "reconciliation: no close in this terminal's deals history for %s (another terminal or account?)",
                    gone,
                )
        self.reporter.send_due()
        self.status = status
        return status


def seconds_to_next_minute(now: datetime, grace: float = 1.0) -> float:
    """Bars up to D1 close on whole minutes of the server's clock (its offset is whole
    half hours), so one wake a minute, just after it turns, sees every bar close."""
    return 60.0 - (now.timestamp() % 60.0) + grace


def run_positions(
    stop: Event, keeper: PositionKeeper, reconciler: Reconciler, *, clock: Callable[[], datetime] = utcnow
) -> None:
    """The positions loop: at start and after every minute turns, the time exits due,
    then the trade reports and the reconciliation."""
    steps = {"time exits": keeper.time_exits, "trade reports / reconciliation": reconciler.cycle}
    run_cycles(stop, steps, lambda: stop.wait(seconds_to_next_minute(clock())), log)
