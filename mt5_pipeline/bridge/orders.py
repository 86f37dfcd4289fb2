"""Signal -> MT5 market order: prices, stops, filling, and what each retcode means.

Pip size, from the symbol's ``point`` and ``digits`` as the terminal reports them
(``PIP_SIZES`` wins when set, so the bridge and the API's labels agree):

====================  ======  =======  ==========================================
quote                 digits  point    pip
====================  ======  =======  ==========================================
EURUSD 1.08123        5       0.00001  0.0001  (10 points: fractional pips)
USDJPY 151.234        3       0.001    0.01    (10 points)
EURUSD 1.0812         4       0.0001   0.0001  (1 point)
USDJPY 151.23         2       0.01     0.01    (1 point: a 2-digit currency pair)
XAUUSD 2391.45        2       0.01     0.1     (10 points: gold's customary pip,
                                                 the ``PIP_SIZES`` example XAUUSD=0.1)
anything else         any     p        p       (indices, crypto: set PIP_SIZES)
====================  ======  =======  ==========================================

A 2-digit symbol counts as gold-like (pip = 10 points) unless its name contains JPY;
that is the one guess here, and ``PIP_SIZES`` overrides it.

The order comment is the first 31 characters of the ``signal_id``: MT5 keeps at most 31
characters of a comment, and a prefix of the UUID is still searchable in the terminal's
history and unique in practice (27 hex digits). The ack and the bridge's store carry
the whole ``signal_id`` with the ticket.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

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


def _is_jpy_pair(symbol: str) -> bool:
    return "JPY" in symbol.upper()  # the MQL5 EA tests the same way (StringFind)


def pip_for(symbol: str, point: float, digits: int, overrides: Mapping[str, float] | None = None) -> float:
    """One pip of ``symbol`` in price units (see the module's table)."""
    if overrides:
        value = overrides.get(symbol.upper())
        if value is not None:
            return float(value)
    if digits in (3, 5):
        return round(point * 10, digits)
    if digits == 2 and not _is_jpy_pair(symbol):
        return round(point * 10, digits)
    return point


def order_comment(signal_id: str) -> str:
    return signal_id[:COMMENT_MAX]


@dataclass
class Execution:
    """What became of one signal: FILLED with a ticket, or REJECTED with the retcode."""

    status: str  # FILLED | REJECTED
    ticket: int | None = None
    retcode: int | None = None
    description: str = ""
    price: float | None = None
    volume: float | None = None
    sl: float | None = None
    tp: float | None = None
    requests: list[dict] = field(default_factory=list)
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


def _filling(mt5: Any, info: Any) -> int:
    """The order filling type the symbol allows (SYMBOL_FILLING_* flags of ``filling_mode``).

    FOK first (all or nothing: the signal's volume or no trade), then IOC; a symbol with
    neither flag takes RETURN (exchange execution)."""
    flags = int(getattr(info, "filling_mode", 0) or 0)
    if flags & getattr(mt5, "SYMBOL_FILLING_FOK", 1):
        return mt5.ORDER_FILLING_FOK
    if flags & getattr(mt5, "SYMBOL_FILLING_IOC", 2):
        return mt5.ORDER_FILLING_IOC
    return mt5.ORDER_FILLING_RETURN


def risk_lots(balance: float, risk_percent: float, sl_distance: float, info: Any) -> float:
    """Lots that lose ``risk_percent`` of ``balance`` if the stop is hit: the loss of one lot
    is the SL distance in ticks times the tick value (in the account's currency, as the
    terminal reports it for the symbol: trade_tick_value / trade_tick_size)."""
    tick_size = float(getattr(info, "trade_tick_size", 0) or 0)
    tick_value = float(getattr(info, "trade_tick_value", 0) or 0)
    if tick_size <= 0 or tick_value <= 0 or sl_distance <= 0:
        raise ValueError(f"cannot size by risk: the terminal gives no tick value for {info.name}")
    loss_per_lot = sl_distance / tick_size * tick_value
    return balance * risk_percent / 100.0 / loss_per_lot


def _volume(lots: float, info: Any) -> float:
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
        raise ValueError(f"volume {lots:.4g} lots (BRIDGE_LOTS or BRIDGE_RISK_PERCENT) is below the symbol's smallest volume {vmin}")
    return volume


def stops(side: str, price: float, bid: float, ask: float, sl_pips: float, tp_pips: float, *, pip: float, point: float, digits: int, stops_level: int) -> tuple[float, float, list[str]]:
    """SL and TP in price for an order at ``price``, at least ``stops_level`` points from
    the price the position closes at (bid for a BUY, ask for a SELL), widened if closer."""
    sign = 1 if side == "BUY" else -1
    sl = round(price - sign * sl_pips * pip, digits)
    tp = round(price + sign * tp_pips * pip, digits)
    notes: list[str] = []
    if stops_level > 0:
        gap = stops_level * point
        close_side = bid if side == "BUY" else ask
        if side == "BUY":
            limit_sl, limit_tp = round(close_side - gap, digits), round(close_side + gap, digits)
            if sl > limit_sl:
                notes.append(f"sl widened from {sl} to {limit_sl} (stops level {stops_level} points)")
                sl = limit_sl
            if tp < limit_tp:
                notes.append(f"tp widened from {tp} to {limit_tp} (stops level {stops_level} points)")
                tp = limit_tp
        else:
            limit_sl, limit_tp = round(close_side + gap, digits), round(close_side - gap, digits)
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


def build_request(mt5: Any, signal: Mapping[str, Any], info: Any, tick: Any, cfg: OrderSettings, balance: float | None = None) -> tuple[dict, list[str]]:
    """The ``order_send`` request for ``signal`` at the current tick (``balance``: the
    account's, needed when sizing by risk)."""
    side = signal["side"]
    price = float(tick.ask if side == "BUY" else tick.bid)
    digits = int(info.digits)
    point = float(info.point)
    pip = pip_for(signal["symbol"], point, digits, cfg.pip_sizes)
    sl, tp, notes = stops(
        side, price, float(tick.bid), float(tick.ask), float(signal["sl_pips"]), float(signal["tp_pips"]),
        pip=pip, point=point, digits=digits, stops_level=int(getattr(info, "trade_stops_level", 0) or 0),
    )
    request = {
        "action": mt5.TRADE_ACTION_DEAL,
        "symbol": signal["symbol"],
        "volume": _volume(cfg.lots if cfg.risk_percent is None else risk_lots(balance or 0.0, cfg.risk_percent, abs(price - sl), info), info),
        "type": mt5.ORDER_TYPE_BUY if side == "BUY" else mt5.ORDER_TYPE_SELL,
        "price": price,
        "sl": sl,
        "tp": tp,
        "deviation": int(cfg.deviation),
        "magic": int(cfg.magic),
        "comment": order_comment(signal["signal_id"]),
        "type_time": mt5.ORDER_TIME_GTC,
        "type_filling": _filling(mt5, info),
    }
    return request, notes


def place(terminal: Any, signal: Mapping[str, Any], cfg: OrderSettings) -> Execution:
    """Send the market order for ``signal``; one retry at the new price after a requote."""
    symbol = signal["symbol"]
    with terminal.session() as mt5:
        if not terminal.ensure():
            code, text = terminal.last_error()
            return Execution("REJECTED", description=f"the terminal is not reachable ({code} {text})")
        info = terminal.select(symbol)
        if info is None:
            code, text = terminal.last_error()
            return Execution("REJECTED", description=f"symbol {symbol} not available in the terminal ({code} {text})")
        balance = None
        if cfg.risk_percent is not None:
            account = mt5.account_info()
            if account is None:
                code, text = terminal.last_error()
                return Execution("REJECTED", description=f"account_info failed, cannot size by risk: {code} {text}")
            balance = float(account.balance)
        requests: list[dict] = []
        result = None
        for attempt in range(2):
            tick = mt5.symbol_info_tick(symbol)
            if tick is None or not tick.bid or not tick.ask:
                return Execution("REJECTED", retcode=10021, description=describe_retcode(10021), requests=requests)
            try:
                request, notes = build_request(mt5, signal, info, tick, cfg, balance)
            except ValueError as exc:
                return Execution("REJECTED", description=str(exc), requests=requests)
            requests.append(request)
            result = mt5.order_send(request)
            if result is None:
                code, text = terminal.last_error()
                return Execution("REJECTED", description=f"order_send failed: {code} {text}", requests=requests)
            if result.retcode in RETRY_RETCODES and attempt == 0:
                log.info("%s %s: %s, retrying once at the new price", signal["side"], symbol, describe_retcode(result.retcode))
                continue
            break
        assert result is not None
        retcode = int(result.retcode)
        description = describe_retcode(retcode, getattr(result, "comment", "") or "")
        if retcode in FILLED_RETCODES:
            ticket = int(result.order or result.deal)
            return Execution(
                "FILLED", ticket=ticket, retcode=retcode, description=description,
                price=float(result.price or request["price"]), volume=float(result.volume or request["volume"]),
                sl=request["sl"], tp=request["tp"], requests=requests, notes=notes,
            )
        return Execution("REJECTED", retcode=retcode, description=description, requests=requests, notes=notes)


def find_placed(terminal: Any, symbol: str, comment: str, magic: int, since: Any, until: Any) -> int | None:
    """The ticket of an order the bridge already sent for ``comment`` (after a crash
    between ``order_send`` and recording its result), from open positions and history.
    Raises TerminalError when the terminal cannot answer: "not found" must mean not found."""
    from mt5_pipeline.bridge.terminal import TerminalError

    with terminal.session() as mt5:
        if not terminal.ensure():
            raise TerminalError("the terminal is not reachable to look the order up")

        def listed(result: Any, what: str) -> tuple:
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
