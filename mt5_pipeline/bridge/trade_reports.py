"""Trades come back: each position's open and close, read from the terminal's deals
history, to ``POST /ea/trades`` (docs/trades.md).

The deals history is the record: a position is its IN deal and, once closed, its OUT
deal(s) (``position_id``), whoever closed it and whether the bridge was running then.
Each cycle reads the deals since a cursor (kept in the store, in server time, read back
with a margin), builds the report of every position of ``BRIDGE_MAGIC`` it touches and
queues it in the store's outbox; the outbox is sent until the API takes it. A report
equal to one already queued is not queued again, and an open report never replaces a
close, so re-reading costs nothing and the API sees each state once (it is idempotent
by ticket anyway). A trade closed while the bridge was down is in the history when it
comes back, after the cursor: it is reported then.

- exit reason from the OUT deal's reason: ``DEAL_REASON_SL`` -> sl, ``_TP`` -> tp, a
  close by the bridge (``_EXPERT``) -> the reason it wrote before closing (time,
  opposite_signal), anything else (a person, the mobile or web terminal, a stop-out,
  another EA) -> manual;
- profit: the OUT deals' ``profit``; swap and commission: all the position's deals';
- times: the deals' server times in UTC (:func:`mt5_pipeline.bridge.server_clock.server_to_utc`);
- the signal: the whole ``signal_id`` from the bridge's own record of the order (the
  comment keeps only 31 characters); none for a position opened by hand: the API keeps
  it and flags it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any

from mt5_pipeline.bridge.acks import backoff
from mt5_pipeline.bridge.client import ApiClient, ApiRefused, ApiUnavailable
from mt5_pipeline.bridge.mt5_api import TradeDeal
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import Terminal, TerminalError
from mt5_pipeline.clock import utcnow
from mt5_pipeline.execution.execution_policy import EXIT_MANUAL, EXIT_SL, EXIT_TP

log = logging.getLogger(__name__)

CURSOR = "deals"
FIRST_SCAN_DAYS = 30  # history read on the very first start
RESCAN_SECONDS = 300  # read back this far before the cursor: deals of one second, a late history sync
BATCH = 500  # reports per POST /ea/trades (the API takes up to 1,000)


@dataclass(eq=False)
class TradeReporter:
    terminal: Terminal
    api: ApiClient
    store: BridgeStore
    magic: int
    _: KW_ONLY
    to_utc: Callable[[Iterable[int]], list[int] | None]
    clock: Callable[[], datetime] = utcnow
    last_error: str = field(default="", init=False)
    account: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.magic = int(self.magic)

    # ---- reading the history ----------------------------------------------------------
    def _deals(
        self, since: int | None = None, until: int | None = None, *, position: int | None = None
    ) -> list[TradeDeal]:
        """The deals between two server times, or every deal of one position."""
        with self.terminal.session() as mt5:
            got = mt5.history_deals_get(since, until) if position is None else mt5.history_deals_get(position=position)
            if got is None:
                code, text = self.terminal.last_error()
                if code != 1:
                    raise TerminalError(f"history_deals_get failed: {code} {text}")
                return []
            return list(got)

    def scan(self) -> int:
        """Queue a report for every position of the magic whose deals changed since the
        cursor; the number of reports queued. TerminalError when the history cannot be read."""
        if not self.terminal.ensure():
            raise TerminalError("the terminal is not reachable")
        if self.to_utc([0]) is None:  # never move the cursor past deals whose times cannot be converted yet
            raise TerminalError("the server's UTC offset is not known yet")
        now = self.clock().timestamp()
        cursor = self.store.cursor(CURSOR)
        # The window is in server time (epoch seconds, as the function takes them); the
        # server is within a day of UTC, so the UTC-based bounds are a day wider instead.
        since = int(now - (FIRST_SCAN_DAYS + 1) * 86400) if cursor is None else cursor - RESCAN_SECONDS
        deals = self._deals(since, int(now + 86400))
        by_position: dict[int, list[TradeDeal]] = defaultdict(list)
        for d in deals:
            if int(getattr(d, "position_id", 0) or 0):
                by_position[int(d.position_id)].append(d)
        queued = self.report_positions(sorted(by_position), known=by_position)
        if deals:
            self.store.set_cursor(CURSOR, max(int(d.time) for d in deals))
        return queued

    def report_positions(self, tickets: Iterable[int], known: dict[int, list[TradeDeal]] | None = None) -> int:
        """Queue the report of each position ticket from all its deals (reconciliation
        asks this for the trades the terminal no longer holds)."""
        queued = 0
        for ticket in tickets:
            deals = (known or {}).get(ticket, [])
            if not any(int(d.entry) == int(self.terminal.mt5.DEAL_ENTRY_IN) for d in deals):
                deals = self._deals(position=ticket)  # the open is older than the window
            report = self.build(ticket, deals)
            if report is None:
                continue
            state, body = report
            if self.store.queue_report(ticket, state, body):
                queued += 1
        return queued

    def build(self, ticket: int, deals: list[TradeDeal]) -> tuple[str, dict] | None:
        """(open | closed, the report) of one position from its deals; None when it is not
        the magic's, or its times cannot be converted yet."""
        mt5 = self.terminal.mt5
        ins = [d for d in deals if int(d.entry) == int(mt5.DEAL_ENTRY_IN)]
        if not ins or int(ins[0].magic) != self.magic:
            return None
        outs = sorted(
            (d for d in deals if int(d.entry) == int(getattr(mt5, "DEAL_ENTRY_OUT", 1))),
            key=lambda d: (d.time, d.ticket),
        )
        first = min(ins, key=lambda d: (d.time, d.ticket))
        volume = sum(float(d.volume) for d in ins)
        with self.terminal.session() as m:
            still_open = bool(m.positions_get(ticket=ticket))
        record = self.store.positions([ticket]).get(ticket) or {}
        times = self.to_utc([int(first.time), *(int(d.time) for d in outs)])
        if times is None:
            return None
        body: dict[str, Any] = {
            "ticket": int(ticket),
            "signal_id": record.get("signal_id") or self.store.signal_of_ticket(ticket),
            "symbol": str(first.symbol),
            "timeframe": record.get("timeframe"),
            "side": "BUY" if int(first.type) == int(mt5.DEAL_TYPE_BUY) else "SELL",
            "volume": round(volume, 8),
            "open_time": times[0],
            "open_price": float(first.price),
            "sl": record.get("sl"),
            "tp": record.get("tp"),
            "magic": self.magic,
            "account": self.account_login(),
            "swap": round(sum(float(d.swap) for d in deals), 2),
            "commission": round(sum(float(d.commission) for d in deals), 2),
        }
        closed_volume = sum(float(d.volume) for d in outs)
        if still_open or not outs or closed_volume + 1e-9 < volume:
            return "open", {k: v for k, v in body.items() if v is not None}
        last = outs[-1]
        body.update(
            close_time=times[-1],
            close_price=round(sum(float(d.price) * float(d.volume) for d in outs) / closed_volume, 10),
            exit_reason=self._reason(int(last.reason), record),
            profit=round(sum(float(d.profit) for d in outs), 2),
        )
        return "closed", {k: v for k, v in body.items() if v is not None}

    def _reason(self, reason: int, record: dict) -> str:
        mt5 = self.terminal.mt5
        if reason == int(mt5.DEAL_REASON_SL):
            return EXIT_SL
        if reason == int(mt5.DEAL_REASON_TP):
            return EXIT_TP
        if reason == int(mt5.DEAL_REASON_EXPERT) and record.get("close_reason"):
            return str(record["close_reason"])
        return EXIT_MANUAL

    def account_login(self) -> int | None:
        if self.account is None:
            with self.terminal.session() as mt5:
                info = mt5.account_info()
            self.account = int(info.login) if info is not None else None
        return self.account

    # ---- sending ------------------------------------------------------------------------
    def send_due(self, now: float | None = None) -> int:
        """Send the queued reports; the number the API took."""
        now = time.time() if now is None else now
        taken = 0
        while True:
            rows = self.store.due_reports(now, limit=BATCH)
            if not rows:
                return taken
            try:
                self.api.report_trades([r["body"] for r in rows])
            except ApiRefused as exc:
                if exc.status_code == 422 and len(rows) > 1:
                    # One bad report must not hold the others back: send them one by one.
                    for r in rows:
                        taken += self._send_one(r, now)
                    continue
                if exc.status_code in (404, 422):
                    log.error("trade reports dropped (the API will not take them): %s", exc)
                    self.store.reports_sent([(r["ticket"], r["body"]) for r in rows], note=str(exc))
                    continue
                self._retry(rows, str(exc), now)
                return taken
            except ApiUnavailable as exc:
                self._retry(rows, str(exc), now)
                return taken
            self.store.reports_sent([(r["ticket"], r["body"]) for r in rows])
            self.last_error = ""
            taken += len(rows)

    def _send_one(self, row: dict, now: float) -> int:
        try:
            self.api.report_trades([row["body"]])
        except ApiRefused as exc:
            log.error("trade report for ticket %s dropped: %s", row["ticket"], exc)
            self.store.reports_sent([(row["ticket"], row["body"])], note=str(exc))
            return 0
        except ApiUnavailable as exc:
            self._retry([row], str(exc), now)
            return 0
        self.store.reports_sent([(row["ticket"], row["body"])])
        return 1

    def _retry(self, rows: list[dict], error: str, now: float) -> None:
        self.last_error = error
        delay = backoff(max(r["attempts"] for r in rows))
        log.warning("%d trade report(s) not taken (%s); retrying in %.0f s", len(rows), error, delay)
        self.store.reports_retry([r["ticket"] for r in rows], error, now + delay)

    def cycle(self) -> int:
        """Read the history, then send; the number of reports the API took."""
        try:
            self.scan()
        except TerminalError as exc:
            self.last_error = str(exc)
            log.warning("deals history not read: %s", exc)
        return self.send_due()
