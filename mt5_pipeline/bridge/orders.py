"""Signal -> MT5 market order: prices, stops, filling, and what each retcode means.

The pip is the signal's own ``meta.pip_size`` (the core's rule, the one labels, the
backtest and promotion used; see docs/execution.md). Only a signal without one gets
the same core rule applied to the terminal's digits and point, and that is logged
(:func:`mt5_pipeline.execution.contract.pip_for_signal`). Stops go ``sl_pips x pip`` from the fill
price, widened only to the broker's stops level, and every price is rounded to the
symbol's tick size (``trade_tick_size``: an index quoted in 0.25 steps takes no 0.1).

The order comment is the first 31 characters of the ``signal_id``: MT5 keeps at most 31
characters of a comment, and a prefix of the UUID is still searchable in the terminal's
history and unique in practice (27 hex digits). The ack and the bridge's store carry
the whole ``signal_id`` with the ticket.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from mt5_pipeline.bridge.mt5_api import MT5, OrderRequest, OrderSendResult, SymbolInfo, Tick
from mt5_pipeline.bridge.terminal import Terminal, TerminalError
from mt5_pipeline.execution.contract import TRANSIENT_RETCODES, pip_for_signal
from mt5_pipeline.execution.trade_signal import Signal

log = logging.getLogger(__name__)

T = TypeVar("T")

COMMENT_MAX = 31

# MqlTradeResult retcodes (TRADE_RETCODE_*) and the terminal's descriptions of them.
RETCODE_TEXT: dict[int, str] = {
    10004: "Requote",
    10006: "Request rejected",
    10007: "Request canceled by trader",
    10008: "Order placed",
    10009: "Request completed",
    10010: "Only part of the request was completed",
    10011: "Request processing error",
    10012: "Request canceled by timeout",
    10013: "Invalid request",
    10014: "Invalid volume in the request",
    10015: "Invalid price in the request",
    10016: "Invalid stops in the request",
    10017: "Trade is disabled",
    10018: "Market is closed",
    10019: "There is not enough money to complete the request",
    10020: "Prices changed",
    10021: "There are no quotes to process the request",
    10022: "Invalid order expiration date in the request",
    10023: "Order state changed",
    10024: "Too frequent requests",
    10025: "No changes in request",
    10026: "Autotrading disabled by server",
    10027: "Autotrading disabled by client terminal",
    10028: "Request locked for processing",
    10029: "Order or position frozen",
    10030: "Invalid order filling type",
    10031: "No connection with the trade server",
    10032: "Operation is allowed only for live accounts",
    10033: "The number of pending orders has reached the limit",
    10034: "The volume of orders and positions for the symbol has reached the limit",
    10035: "Incorrect or prohibited order type",
    10036: "Position with the specified POSITION_IDENTIFIER has already been closed",
    10038: "A close volume exceeds the current position volume",
    10039: "A close order already exists for a specified position",
    10040: "The number of open positions simultaneously present on an account can be limited by the server settings",
    10041: "The pending order activation request is rejected, the order is canceled",
    10042: "Only long positions are allowed",
    10043: "Only short positions are allowed",
    10044: "Only position closing is allowed",
    10045: "Position closing is allowed only by FIFO rule",
}
# Filled (a ticket exists): DONE, DONE_PARTIAL, and PLACED (exchange execution queues the order).
FILLED_RETCODES = frozenset({10008, 10009, 10010})
# The price moved between our tick and the server: one retry at the new price.
RETRY_RETCODES = frozenset({10004, 10020, 10021})


def describe_retcode(retcode: int | None, server_comment: str = "") -> str:
    text = RETCODE_TEXT.get(retcode or 0, "")
    if server_comment and server_comment.lower() != text.lower():
        text = f"{text} ({server_comment})" if text else server_comment
    return text or "unknown retcode"


def order_comment(signal_id: str) -> str:
    return signal_id[:COMMENT_MAX]


@dataclass
class Execution:
    """What became of one signal: FILLED with a ticket, REJECTED with the retcode, or
    TRANSIENT (nothing final: the terminal said "not now", or its answer was lost and no
    order with the signal's comment exists)."""

    status: str  # FILLED | REJECTED | TRANSIENT (EXPIRED: the executor refused it unsent)
    ticket: int | None = None
    retcode: int | None = None
    description: str = ""
    price: float | None = None
    volume: float | None = None
    sl: float | None = None
    tp: float | None = None
    requests: list[OrderRequest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.status == "FILLED" and self.price is None:
            base = f"filled, ticket {self.ticket}"
        elif self.status == "FILLED":
            base = f"filled {self.volume} at {self.price} sl {self.sl} tp {self.tp}"
        else:
            base = f"retcode {self.retcode}: {self.description}" if self.retcode is not None else self.description
        return "; ".join([base, *self.notes])


def _filling(mt5: MT5, info: SymbolInfo) -> int:
    """The order filling type the symbol allows (SYMBOL_FILLING_* flags of ``filling_mode``).

    FOK first (all or nothing: the signal's volume or no trade), then IOC; a symbol with
    neither flag takes RETURN (exchange execution)."""
    flags = int(getattr(info, "filling_mode", 0) or 0)
    if flags & getattr(mt5, "SYMBOL_FILLING_FOK", 1):
        return mt5.ORDER_FILLING_FOK
    if flags & getattr(mt5, "SYMBOL_FILLING_IOC", 2):
        return mt5.ORDER_FILLING_IOC
    return mt5.ORDER_FILLING_RETURN


def risk_lots(balance: float, risk_percent: float, sl_distance: float, info: SymbolInfo) -> float:
    """Lots that lose ``risk_percent`` of ``balance`` if the stop is hit: the loss of one lot
    is the SL distance in ticks times the tick value (in the account's currency, as the
    terminal reports it for the symbol: trade_tick_value / trade_tick_size)."""
    tick_size = float(getattr(info, "trade_tick_size", 0) or 0)
    tick_value = float(getattr(info, "trade_tick_value", 0) or 0)
    if tick_size <= 0 or tick_value <= 0 or sl_distance <= 0:
        raise ValueError(f"cannot size by risk: the terminal gives no tick value for {info.name}")
    loss_per_lot = sl_distance / tick_size * tick_value
    return balance * risk_percent / 100.0 / loss_per_lot


def _volume(lots: float, info: SymbolInfo) -> float:
    step = float(getattr(info, "volume_step", 0) or 0)
    vmin = float(getattr(info, "volume_min", 0) or 0)
    vmax = float(getattr(info, "volume_max", 0) or 0)
    volume = lots
    if step > 0:
        # Round down to the step (never trade more than configured); the epsilon absorbs 0.1/0.01 float noise.
        volume = math.floor(lots / step + 1e-9) * step
        volume = round(volume, max(0, -int(math.floor(math.log10(step)))) + 2)
    if vmax > 0:
        volume = min(volume, vmax)
    if volume < vmin or volume <= 0:
        raise ValueError(
            f"volume {lots:.4g} lots (BRIDGE_LOTS or BRIDGE_RISK_PERCENT) is below the symbol's smallest volume {vmin}"
        )
    return volume


def to_tick(value: float, tick: float, digits: int, how: Callable[[float], float] = round) -> float:
    """``value`` on the symbol's price grid: a whole number of ticks, written with ``digits``
    decimals (``how``: round to the nearest, or math.floor / math.ceil to widen a stop)."""
    if tick <= 0:
        return round(value, digits)
    return round(how(round(value / tick, 9)) * tick, digits)


def stops(
    side: str,
    price: float,
    bid: float,
    ask: float,
    sl_pips: float,
    tp_pips: float,
    *,
    pip: float,
    point: float,
    digits: int,
    stops_level: int,
    tick: float = 0.0,
) -> tuple[float, float, list[str]]:
    """SL and TP in price for an order at ``price``, on the tick grid, at least
    ``stops_level`` points from the price the position closes at (bid for a BUY, ask for
    a SELL), widened if closer."""
    sign = 1 if side == "BUY" else -1
    sl = to_tick(price - sign * sl_pips * pip, tick, digits)
    tp = to_tick(price + sign * tp_pips * pip, tick, digits)
    notes: list[str] = []
    if stops_level > 0:
        gap = stops_level * point
        close_side = bid if side == "BUY" else ask
        if side == "BUY":
            limit_sl, limit_tp = (
                to_tick(close_side - gap, tick, digits, math.floor),
                to_tick(close_side + gap, tick, digits, math.ceil),
            )
            if sl > limit_sl:
                notes.append(f"sl widened from {sl} to {limit_sl} (stops level {stops_level} points)")
                sl = limit_sl
            if tp < limit_tp:
                notes.append(f"tp widened from {tp} to {limit_tp} (stops level {stops_level} points)")
                tp = limit_tp
        else:
            limit_sl, limit_tp = (
                to_tick(close_side + gap, tick, digits, math.ceil),
                to_tick(close_side - gap, tick, digits, math.floor),
            )
            if sl < limit_sl:
                notes.append(f"sl widened from {sl} to {limit_sl} (stops level {stops_level} points)")
                sl = limit_sl
            if tp > limit_tp:
                notes.append(f"tp widened from {tp} to {limit_tp} (stops level {stops_level} points)")
                tp = limit_tp
    return sl, tp, notes


@dataclass(frozen=True)
class OrderSettings:
    lots: float
    magic: int
    deviation: int
    pip_sizes: Mapping[str, float] = field(default_factory=dict)
    risk_percent: float | None = None  # set: size each order to lose this share of the balance at the SL


def build_request(
    mt5: MT5, signal: Signal, info: SymbolInfo, tick: Tick, cfg: OrderSettings, balance: float | None = None
) -> tuple[OrderRequest, list[str]]:
    """The ``order_send`` request for ``signal`` at the current tick (``balance``: the
    account's, needed when sizing by risk). Raises ValueError (PipSizeUnknown among them)
    when no valid order can be built."""
    side = signal.side
    digits = int(info.digits)
    point = float(info.point)
    tick_size = float(getattr(info, "trade_tick_size", 0) or 0)
    price = to_tick(float(tick.ask if side == "BUY" else tick.bid), tick_size, digits)
    pip, source = pip_for_signal(signal, digits, point, cfg.pip_sizes)
    notes: list[str] = []
    if source != "meta.pip_size":
        log.warning("%s %s: pip %g from the %s", signal.signal_id, signal.symbol, pip, source)
        notes.append(f"pip {pip:g} from the {source}")
    sl, tp, stop_notes = stops(
        side,
        price,
        float(tick.bid),
        float(tick.ask),
        float(signal.sl_pips),
        float(signal.tp_pips),
        pip=pip,
        point=point,
        digits=digits,
        stops_level=int(getattr(info, "trade_stops_level", 0) or 0),
        tick=tick_size,
    )
    request: OrderRequest = {
        "action": mt5.TRADE_ACTION_DEAL,
        "symbol": signal.symbol,
        "volume": _volume(
            cfg.lots
            if cfg.risk_percent is None
            else risk_lots(balance or 0.0, cfg.risk_percent, abs(price - sl), info),
            info,
        ),
        "type": mt5.ORDER_TYPE_BUY if side == "BUY" else mt5.ORDER_TYPE_SELL,
        "price": price,
        "sl": sl,
        "tp": tp,
        "deviation": int(cfg.deviation),
        "magic": int(cfg.magic),
        "comment": order_comment(signal.signal_id),
        "type_time": mt5.ORDER_TIME_GTC,
        "type_filling": _filling(mt5, info),
    }
    return request, notes + stop_notes


def place(
    terminal: Terminal,
    signal: Signal,
    cfg: OrderSettings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Execution:
    """Send the market order for ``signal``; one retry at the new price after a requote.

    A transient retcode (:data:`mt5_pipeline.execution.contract.TRANSIENT_RETCODES`) is TRANSIENT,
    never REJECTED. ``order_send`` answering None (the IPC answer was lost) is looked up by
    the order's comment between ``since`` and ``until``: FILLED with the found ticket, else
    TRANSIENT (the caller may send again later, after looking again)."""
    symbol = signal.symbol
    with terminal.session() as mt5:
        if not terminal.ensure():
            code, text = terminal.last_error()
            return Execution("TRANSIENT", description=f"the terminal is not reachable ({code} {text})")
        info = terminal.select(symbol)
        if info is None:
            code, text = terminal.last_error()
            return Execution("REJECTED", description=f"symbol {symbol} not available in the terminal ({code} {text})")
        balance = None
        if cfg.risk_percent is not None:
            account = mt5.account_info()
            if account is None:
                code, text = terminal.last_error()
                return Execution("TRANSIENT", description=f"account_info failed, cannot size by risk: {code} {text}")
            balance = float(account.balance)
        requests: list[OrderRequest] = []
        result: OrderSendResult | None = None
        notes: list[str] = []
        for attempt in range(2):
            tick = mt5.symbol_info_tick(symbol)
            if tick is None or not tick.bid or not tick.ask:
                return Execution("TRANSIENT", retcode=10021, description=describe_retcode(10021), requests=requests)
            try:
                request, notes = build_request(mt5, signal, info, tick, cfg, balance)
            except ValueError as exc:  # PipSizeUnknown among them: no stop is placed at a guessed distance
                return Execution("REJECTED", description=str(exc), requests=requests)
            requests.append(request)
            result = mt5.order_send(request)
            if result is None:
                code, text = terminal.last_error()
                lost = f"order_send answered nothing ({code} {text})"
                try:
                    ticket = find_placed(terminal, symbol, request["comment"], cfg.magic, since, until)
                except Exception as exc:  # the terminal cannot answer: outcome unknown, try again later
                    return Execution(
                        "TRANSIENT", description=f"{lost}; the order could not be looked up ({exc})", requests=requests
                    )
                if ticket is not None:
                    return Execution(
                        "FILLED",
                        ticket=ticket,
                        retcode=10009,
                        description="found in the terminal after a lost answer",
                        sl=request["sl"],
                        tp=request["tp"],
                        requests=requests,
                        notes=[*notes, f"{lost}; found by its comment"],
                    )
                return Execution(
                    "TRANSIENT", description=f"{lost}; no order with its comment exists", requests=requests
                )
            if result.retcode in RETRY_RETCODES and attempt == 0:
                log.info(
                    "%s %s: %s, retrying once at the new price", signal.side, symbol, describe_retcode(result.retcode)
                )
                continue
            break
        assert result is not None
        retcode = int(result.retcode)
        description = describe_retcode(retcode, getattr(result, "comment", "") or "")
        if retcode in FILLED_RETCODES:
            ticket = int(result.order or result.deal)
            return Execution(
                "FILLED",
                ticket=ticket,
                retcode=retcode,
                description=description,
                price=float(result.price or request["price"]),
                volume=float(result.volume or request["volume"]),
                sl=request["sl"],
                tp=request["tp"],
                requests=requests,
                notes=notes,
            )
        status = "TRANSIENT" if retcode in TRANSIENT_RETCODES else "REJECTED"
        return Execution(status, retcode=retcode, description=description, requests=requests, notes=notes)


def find_placed(
    terminal: Terminal, symbol: str, comment: str, magic: int, since: datetime | None, until: datetime | None
) -> int | None:
    """The ticket of an order the bridge already sent for ``comment`` (after a crash
    between ``order_send`` and recording its result), from open positions and history.
    Raises TerminalError when the terminal cannot answer: "not found" must mean not found."""
    with terminal.session() as mt5:
        if not terminal.ensure():
            raise TerminalError("the terminal is not reachable to look the order up")

        def listed(result: tuple[T, ...] | None, what: str) -> tuple[T, ...]:
            if result is None:
                code, text = terminal.last_error()
                if code != 1:  # RES_S_OK: nothing found, not an error
                    raise TerminalError(f"{what} failed: {code} {text}")
                return ()
            return tuple(result)

        for position in listed(mt5.positions_get(symbol=symbol), "positions_get"):
            if position.comment == comment and position.magic == magic:
                return int(position.ticket)
        for order in listed(mt5.history_orders_get(since, until), "history_orders_get"):
            if order.comment == comment and order.magic == magic and order.symbol == symbol:
                return int(order.ticket)
    return None
