"""The execution policy at the terminal: which signals open a position, and the time exit.

The rule is the core's (:mod:`mt5_pipeline.execution.execution_policy`, the one the backtest
simulates); the bridge only feeds it what the terminal says:

- before an order: :meth:`PositionKeeper.entry` runs the time exits due (a position
  whose last bar has closed is gone before the next bar's signal is judged, as in the
  backtest), then asks ``decide_entry`` with the open
  positions carrying ``BRIDGE_MAGIC`` (each one's timeframe and entry bar from the
  bridge's store: the terminal does not know them). ``skip`` is answered and acked
  ``REJECTED`` with a message starting "skipped by the execution policy" (the EA said no,
  on purpose; docs/trades.md); ``close`` (``reverse``, an opposite signal) closes that
  position at market first, and the order is placed only once it is closed;
- at each bar close: :meth:`PositionKeeper.time_exits` asks ``due_exits`` with the
  terminal's own closed bars of that symbol and timeframe (counted, as the backtest
  counts rows, across weekends and missing bars) and closes the positions due.

The policy is the one the signal carried (``meta.entry_policy``, ``meta.max_hold_bars``,
see :func:`mt5_pipeline.execution.contract.policy_for_signal`), kept with each position, so a
change of the settings never changes how an open position is closed. A position the
bridge did not open (no record: opened by hand with the magic, or before this version)
takes part in neither decision: its timeframe is unknown. Why the bridge closed a
position is written before the close is sent, so the trade report says ``time`` or
``opposite_signal`` even after a crash.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime

from mt5_pipeline.bridge import orders
from mt5_pipeline.bridge.mt5_api import OrderRequest, OrderSendResult, TradePosition
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import Terminal, TerminalError, mt5_timeframe
from mt5_pipeline.clock import from_epoch, utcnow
from mt5_pipeline.execution.contract import POLICY_SKIP, TRANSIENT_RETCODES, policy_for_signal
from mt5_pipeline.execution.execution_policy import (
    ExecutionPolicy,
    OpenPosition,
    Side,
    as_side,
    decide_entry,
    due_exits,
    entry_bar,
)
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.settings import TIMEFRAME_SECONDS

log = logging.getLogger(__name__)

MAX_FETCH = 100_000  # bars read back at once for the time exit (terminals keep "Max bars in chart")
POSITION_CLOSED = 10036  # TRADE_RETCODE_POSITION_CLOSED: someone (the stop, a person) was first


@dataclass(eq=False)
class PositionKeeper:
    terminal: Terminal
    store: BridgeStore
    cfg: orders.OrderSettings
    default_policy: ExecutionPolicy
    _: KW_ONLY
    to_utc: Callable[[Iterable[int]], list[int] | None]
    clock: Callable[[], datetime] = utcnow
    time_exits_done: int = field(default=0, init=False)
    opposite_closes_done: int = field(default=0, init=False)
    last_error: str = field(default="", init=False)
    # The executor (before an entry) and the positions loop (each minute) both run the
    # time exits: one at a time, so a position is closed once.
    _exits_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # ---- the terminal's positions -------------------------------------------------------
    def terminal_positions(self) -> list[TradePosition]:
        """Every open position carrying the magic; TerminalError when the terminal cannot say
        (an empty list must mean none)."""
        with self.terminal.session() as mt5:
            listed = mt5.positions_get()
            if listed is None:
                code, text = self.terminal.last_error()
                if code != 1:  # RES_S_OK: none open
                    raise TerminalError(f"positions_get failed: {code} {text}")
                return []
        return [p for p in listed if int(p.magic) == int(self.cfg.magic)]

    def open_positions(self) -> list[tuple[OpenPosition, dict]]:
        """The magic's positions the bridge opened, as the policy knows them, with their record."""
        held = self.terminal_positions()
        records = self.store.positions([int(p.ticket) for p in held]) if held else {}
        out = []
        for p in held:
            rec = records.get(int(p.ticket))
            if rec is None:
                continue  # not opened by this bridge: its timeframe is unknown, the policy leaves it alone
            side: Side = "BUY" if int(p.type) == int(self.terminal.mt5.POSITION_TYPE_BUY) else "SELL"
            out.append(
                (OpenPosition(int(p.ticket), rec["symbol"], rec["timeframe"], side, from_epoch(rec["entry_bar"])), rec)
            )
        return out

    # ---- entry ----------------------------------------------------------------------------
    def entry(self, signal: Signal) -> tuple[str, str]:
        """("open", "") to place the order, ("skip", the ack message) or ("retry", why not now)."""
        policy, source = policy_for_signal(signal, self.default_policy)
        # Exits due at the bar's close come before an entry at the next open (the backtest's
        # order), even when the signal arrives before the positions loop has woken.
        self.time_exits()
        if source != "meta":
            log.info(
                "%s: execution policy from the %s (%s, %d bars)",
                signal.signal_id,
                source,
                policy.entry,
                policy.max_hold_bars,
            )
        try:
            positions = [op for op, _ in self.open_positions()]
        except TerminalError as exc:
            return "retry", f"the open positions cannot be read ({exc})"
        for action in decide_entry(policy, signal.symbol, signal.timeframe, as_side(signal.side), positions):
            if action.kind == "skip":
                return "skip", f"{POLICY_SKIP} ({policy.entry}): {action.reason}"
            if action.kind == "close":
                assert action.ticket is not None
                done = self.close(action.ticket, action.reason)
                if done.status != "FILLED":
                    return "retry", f"ticket {action.ticket} not closed on the opposite signal ({done.message})"
                self.opposite_closes_done += 1
        return "open", ""

    def record(self, signal: Signal, execution: orders.Execution) -> dict | None:
        """What the store keeps of a position the bridge opened (written with its ack)."""
        if execution.status != "FILLED" or execution.ticket is None:
            return None
        policy, _ = policy_for_signal(signal, self.default_policy)
        return {
            "ticket": int(execution.ticket), "signal_id": signal.signal_id, "symbol": signal.symbol,
            "timeframe": signal.timeframe, "side": signal.side,
            "entry_bar": int(entry_bar(signal.bar, signal.timeframe).timestamp()), "entry_policy": policy.entry,
            "max_hold_bars": policy.max_hold_bars, "sl": execution.sl, "tp": execution.tp,
        }  # fmt: skip

    # ---- exits ----------------------------------------------------------------------------
    def close(self, ticket: int, reason: str) -> orders.Execution:
        """Close the whole position at market (one retry after a requote). A position
        already gone counts as closed: its own deals say how it closed."""
        self.store.set_close_reason(ticket, reason)
        with self.terminal.session() as mt5:
            if not self.terminal.ensure():
                code, text = self.terminal.last_error()
                return orders.Execution("TRANSIENT", description=f"the terminal is not reachable ({code} {text})")
            found = mt5.positions_get(ticket=ticket)
            if not found:
                return orders.Execution("FILLED", ticket=ticket, description="already closed")
            pos = found[0]
            info = self.terminal.select(pos.symbol)
            if info is None:
                code, text = self.terminal.last_error()
                return orders.Execution("TRANSIENT", description=f"symbol {pos.symbol} not available ({code} {text})")
            long_ = int(pos.type) == int(mt5.POSITION_TYPE_BUY)
            result: OrderSendResult | None = None
            for attempt in range(2):
                tick = mt5.symbol_info_tick(pos.symbol)
                if tick is None or not tick.bid or not tick.ask:
                    return orders.Execution("TRANSIENT", retcode=10021, description=orders.describe_retcode(10021))
                price = orders.to_tick(
                    float(tick.bid if long_ else tick.ask),
                    float(getattr(info, "trade_tick_size", 0) or 0),
                    int(info.digits),
                )
                request: OrderRequest = {
                    "action": mt5.TRADE_ACTION_DEAL, "symbol": pos.symbol, "volume": float(pos.volume),
                    "type": mt5.ORDER_TYPE_SELL if long_ else mt5.ORDER_TYPE_BUY, "position": int(ticket),
                    "price": price, "deviation": int(self.cfg.deviation), "magic": int(self.cfg.magic),
                    "comment": f"{reason} exit"[: orders.COMMENT_MAX],
                    "type_time": mt5.ORDER_TIME_GTC, "type_filling": orders._filling(mt5, info),
                }  # fmt: skip
                result = mt5.order_send(request)
                if result is None:
                    code, text = self.terminal.last_error()
                    return orders.Execution("TRANSIENT", description=f"order_send answered nothing ({code} {text})")
                if int(result.retcode) in orders.RETRY_RETCODES and attempt == 0:
                    continue
                break
        assert result is not None
        retcode = int(result.retcode)
        if retcode in orders.FILLED_RETCODES or retcode == POSITION_CLOSED:
            log.info("ticket %s closed (%s) at %s", ticket, reason, result.price or "its stop")
            return orders.Execution(
                "FILLED",
                ticket=ticket,
                retcode=retcode,
                description=orders.describe_retcode(retcode),
                price=float(result.price or 0) or None,
            )
        status = "TRANSIENT" if retcode in TRANSIENT_RETCODES else "REJECTED"
        log.warning(
            "ticket %s not closed (%s): %s",
            ticket,
            reason,
            orders.describe_retcode(retcode, getattr(result, "comment", "") or ""),
        )
        return orders.Execution(
            status, retcode=retcode, description=orders.describe_retcode(retcode, getattr(result, "comment", "") or "")
        )

    def time_exits(self) -> list[int]:
        """Close the positions whose last bar (``max_hold_bars`` counted from the entry bar)
        has closed; the tickets closed. Bars are the terminal's closed bars, in UTC."""
        with self._exits_lock:
            return self._time_exits()

    def _time_exits(self) -> list[int]:
        if not self.terminal.ensure():
            self.last_error = "the terminal is not reachable"
            return []
        try:
            held = self.open_positions()
        except TerminalError as exc:
            self.last_error = str(exc)
            return []
        groups: dict[tuple[str, str], list[tuple[OpenPosition, dict]]] = defaultdict(list)
        for op, rec in held:
            groups[(op.symbol, op.timeframe)].append((op, rec))
        now = self.clock().timestamp()
        closed_tickets: list[int] = []
        errors: list[str] = []
        for (symbol, timeframe), members in groups.items():
            seconds = TIMEFRAME_SECONDS[timeframe]
            oldest = min(op.entry_bar.timestamp() for op, _ in members)
            count = int(min(MAX_FETCH, max(2, (now - oldest) // seconds + 3)))
            with self.terminal.session() as mt5:
                rates = mt5.copy_rates_from_pos(symbol, mt5_timeframe(mt5, timeframe), 0, count)
            if rates is None or len(rates) == 0:
                code, text = self.terminal.last_error()
                errors.append(f"copy_rates_from_pos({symbol}, {timeframe}) for the time exit failed: {code} {text}")
                log.warning(errors[-1])
                continue
            utc = self.to_utc(int(t) for t in rates["time"])
            if utc is None:
                self.last_error = "the server's UTC offset is not known yet: time exits wait"
                return closed_tickets
            bars = sorted(from_epoch(t) for t in utc if t + seconds <= now)  # closed bars only
            if not bars:
                continue
            for op, rec in members:
                policy = ExecutionPolicy(rec["entry_policy"], int(rec["max_hold_bars"]))
                for action in due_exits(policy, [op], bars[-1], timeframe=timeframe, bar_times=bars):
                    assert action.ticket is not None
                    done = self.close(action.ticket, action.reason)
                    if done.status == "FILLED":
                        self.time_exits_done += 1
                        closed_tickets.append(action.ticket)
                    else:
                        errors.append(f"time exit of ticket {action.ticket}: {done.message}")
        self.last_error = "; ".join(errors)
        return closed_tickets
