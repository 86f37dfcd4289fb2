"""A stand-in for the ``MetaTrader5`` package: same function names, named-tuple results,
constants and retcodes as its documentation, over a simulated market.

Tests hand an instance to the bridge where the real module would go, and
``mt5-pipeline bridge --fake`` runs on it. It is a strict peer, not a recorder: orders
are checked as a trade server would (price within the deviation, stops on the right side
and beyond the stops level, an allowed filling mode, the volume step) and every
``order_send`` request is kept in ``requests``.

The market: deterministic M1 prices per symbol up to ``clock()`` (tests drive the clock),
bar times in the trade server's time (UTC + ``server_offset_hours``), like the real
terminal. Knobs for tests: ``script(symbol, retcodes)`` makes the next ``order_send``
calls answer those retcodes (a requote also moves the price, as one does);
``market_closed`` is a set of symbols whose orders get MARKET_CLOSED.

Positions close as on a trade server: ``order_send`` with ``position`` set (the
opposite type) closes it at market; ``feed_bars(symbol, rates)`` plays bars (server
time, bid prices, spread in points) and closes every position whose stop-loss or
take-profit a bar touches, at that level (a long at the bid, a short at the ask = bid +
the bar's spread; the stop-loss first when one bar touches both, as the backtest
assumes), and the last fed close becomes the market's bid; ``copy_rates_from_pos`` of a
fed symbol and timeframe then gives the fed bars (those opened by ``clock()``), and
``quote(symbol, bid)`` moves the market between bars (a bar's open). Every open and close leaves
deals (``history_deals_get``: DEAL_ENTRY_IN / DEAL_ENTRY_OUT, position_id, reason,
profit in the USD account, swap, commission) that outlive the position, as the
terminal's history does. ``commission_per_lot`` (per deal) and ``swap_per_lot_night``
(charged at the close, per server midnight held) are 0 unless a test sets them.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from mt5_pipeline.clock import utcnow

# ---- constants (values as in the MetaTrader5 package) ------------------------------------
TIMEFRAME_M1, TIMEFRAME_M5, TIMEFRAME_M15, TIMEFRAME_M30 = 1, 5, 15, 30
TIMEFRAME_H1, TIMEFRAME_H4, TIMEFRAME_D1 = 16385, 16388, 16408
TIMEFRAME_W1, TIMEFRAME_MN1 = 32769, 49153
ORDER_TYPE_BUY, ORDER_TYPE_SELL = 0, 1
TRADE_ACTION_DEAL = 1
ORDER_FILLING_FOK, ORDER_FILLING_IOC, ORDER_FILLING_RETURN = 0, 1, 2
SYMBOL_FILLING_FOK, SYMBOL_FILLING_IOC = 1, 2
ORDER_TIME_GTC = 0
TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_TRADE_DISABLED = 10017
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_PRICE_CHANGED = 10020
TRADE_RETCODE_PRICE_OFF = 10021
TRADE_RETCODE_INVALID_FILL = 10030
DEAL_TYPE_BUY, DEAL_TYPE_SELL = 0, 1
DEAL_ENTRY_IN, DEAL_ENTRY_OUT = 0, 1
DEAL_REASON_CLIENT, DEAL_REASON_MOBILE, DEAL_REASON_WEB, DEAL_REASON_EXPERT = 0, 1, 2, 3
DEAL_REASON_SL, DEAL_REASON_TP, DEAL_REASON_SO = 4, 5, 6
POSITION_TYPE_BUY, POSITION_TYPE_SELL = 0, 1
RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NOT_FOUND = -4

_MINUTES = {
    TIMEFRAME_M1: 1,
    TIMEFRAME_M5: 5,
    TIMEFRAME_M15: 15,
    TIMEFRAME_M30: 30,
    TIMEFRAME_H1: 60,
    TIMEFRAME_H4: 240,
    TIMEFRAME_D1: 1440,
}

RATES_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("tick_volume", "<u8"),
        ("spread", "<i4"),
        ("real_volume", "<u8"),
    ]
)


class SymbolInfo(NamedTuple):
    name: str
    visible: bool
    digits: int
    point: float
    spread: int
    trade_stops_level: int
    filling_mode: int
    trade_mode: int
    volume_min: float
    volume_max: float
    volume_step: float
    trade_tick_size: float
    trade_tick_value: float
    trade_contract_size: float
    bid: float
    ask: float
    path: str


class Tick(NamedTuple):
    time: int
    bid: float
    ask: float
    last: float
    volume: int
    time_msc: int
    flags: int
    volume_real: float


class TradeRequest(NamedTuple):
    action: int
    magic: int
    order: int
    symbol: str
    volume: float
    price: float
    stoplimit: float
    sl: float
    tp: float
    deviation: int
    type: int
    type_filling: int
    type_time: int
    expiration: int
    comment: str
    position: int
    position_by: int


class OrderSendResult(NamedTuple):
    retcode: int
    deal: int
    order: int
    volume: float
    price: float
    bid: float
    ask: float
    comment: str
    request_id: int
    retcode_external: int
    request: TradeRequest


class TradePosition(NamedTuple):
    ticket: int
    time: int
    type: int
    magic: int
    identifier: int
    volume: float
    price_open: float
    sl: float
    tp: float
    symbol: str
    comment: str


class TradeDeal(NamedTuple):
    ticket: int
    order: int
    time: int  # server time, epoch seconds, as the terminal gives it
    time_msc: int
    type: int  # DEAL_TYPE_BUY / DEAL_TYPE_SELL
    entry: int  # DEAL_ENTRY_IN / DEAL_ENTRY_OUT
    magic: int
    position_id: int
    reason: int  # DEAL_REASON_*
    volume: float
    price: float
    commission: float
    swap: float
    profit: float
    fee: float
    symbol: str
    comment: str
    external_id: str


class TradeOrder(NamedTuple):
    ticket: int
    time_setup: int
    type: int
    magic: int
    volume_initial: float
    price_open: float
    sl: float
    tp: float
    symbol: str
    comment: str


class AccountInfo(NamedTuple):
    login: int
    balance: float
    equity: float
    currency: str
    margin_free: float
    trade_allowed: bool


class TerminalInfo(NamedTuple):
    connected: bool
    trade_allowed: bool
    name: str
    path: str


# name: (digits, base price, stops level in points, filling flags, spread in points)
DEFAULT_SYMBOLS: dict[str, tuple[int, float, int, int, int]] = {
    "EURUSD": (5, 1.08, 10, SYMBOL_FILLING_FOK | SYMBOL_FILLING_IOC, 12),
    "GBPUSD": (5, 1.27, 10, SYMBOL_FILLING_FOK | SYMBOL_FILLING_IOC, 15),
    "USDJPY": (3, 151.2, 10, SYMBOL_FILLING_IOC, 14),
    "XAUUSD": (2, 2390.0, 50, 0, 30),
}
# Instrument classes beyond the defaults (docs/execution.md), for tests and --fake:
# name: (digits, base price, stops level in points, filling flags, spread in points).
INSTRUMENT_CLASSES: dict[str, tuple[int, float, int, int, int]] = {
    "EURUSD.4": (4, 1.08, 2, SYMBOL_FILLING_FOK, 2),  # a 4-digit FX quote
    "USDJPY.2": (2, 151.2, 2, SYMBOL_FILLING_FOK, 2),  # a 2-digit yen quote
    "USDHUF": (3, 365.0, 10, SYMBOL_FILLING_FOK, 300),  # exotics quoted in big units
    "USDCZK": (3, 23.1, 10, SYMBOL_FILLING_FOK, 60),
    "USDKRW": (2, 1380.0, 10, SYMBOL_FILLING_FOK, 100),
    "XAUUSD.3": (3, 2390.0, 50, SYMBOL_FILLING_FOK, 300),  # gold at 3 digits
    "XAGUSD": (3, 28.5, 20, SYMBOL_FILLING_FOK, 30),  # silver at 3 digits
    "XAGUSD.2": (2, 28.5, 2, SYMBOL_FILLING_FOK, 3),  # silver at 2 digits
    "US30": (0, 39000.0, 5, SYMBOL_FILLING_IOC, 3),  # indices at 0, 1 and 2 digits
    "DE40": (1, 18000.0, 10, SYMBOL_FILLING_IOC, 15),
    "US500": (2, 5200.0, 100, 0, 50),  # 2 digits, quoted in 0.25 steps (TICK_SIZES); exchange execution
    "BTCUSD": (2, 67000.0, 50, SYMBOL_FILLING_IOC, 50),  # crypto
}
# Symbols whose price moves in steps larger than a point (trade_tick_size).
TICK_SIZES: dict[str, float] = {"US500": 0.25}
_COMMENTS = {
    10004: "Requote",
    10009: "Request executed",
    10016: "Invalid stops",
    10018: "Market closed",
    10030: "Unsupported filling mode",
    10014: "Invalid volume",
    10019: "No money",
}


class FakeMT5:
    """One simulated terminal; use an instance where ``import MetaTrader5 as mt5`` would be."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = utcnow,
        server_offset_hours: float = 2.0,
        symbols: Iterable[str] | None = None,
        history_minutes: int = 20_000,
    ) -> None:
        self.clock = clock
        self.server_offset_s = int(server_offset_hours * 3600)
        self.history_minutes = history_minutes
        self.specs = dict(DEFAULT_SYMBOLS)
        self.specs.update(INSTRUMENT_CLASSES)
        for name in symbols or ():
            self.specs.setdefault(name.upper(), (5, 1.0, 10, SYMBOL_FILLING_FOK, 10))
        self.visible: set[str] = set()
        self.initialized = False
        self.calls: list[tuple] = []
        self.requests: list[dict] = []
        self.positions: dict[int, TradePosition] = {}
        self.orders: list[TradeOrder] = []
        self.market_closed: set[str] = set()
        self.lose_answers = 0  # the next n order_send calls execute, then answer None (a dropped IPC answer)
        self.trade_allowed = True
        self.available = True  # False: the terminal is not running (initialize fails)
        self.balance = 10_000.0
        self._scripts: dict[str, deque[int]] = defaultdict(deque)
        self._shift: dict[str, float] = defaultdict(float)  # price moves from requotes, in price units
        self._error: tuple[int, str] = (RES_S_OK, "Success")
        self._ticket = 50_000_000
        self._deal_ticket = 80_000_000
        self._lock = threading.Lock()
        self.deals: list[TradeDeal] = []
        self.commission_per_lot = 0.0
        self.swap_per_lot_night = 0.0
        self._fed_bid: dict[str, float] = {}  # the last fed bar's close: the market's bid
        self._fed_spread: dict[str, int] = {}  # points, from quote()
        self._fed_rates: dict[tuple[str, int], list[tuple]] = defaultdict(
            list
        )  # (symbol, timeframe seconds): fed bars, oldest first

    # ---- connection -----------------------------------------------------------------
    def initialize(self, path: str | None = None, **kwargs: Any) -> bool:
        self.calls.append(("initialize", path, {k: ("***" if k == "password" else v) for k, v in kwargs.items()}))
        if not self.available:
            self._error = (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")
            return False
        self.initialized = True
        self._error = (RES_S_OK, "Success")
        return True

    def login(self, login: int, password: str = "", server: str = "", timeout: int = 60000) -> bool:
        self.calls.append(("login", login, server))
        return self.initialized

    def shutdown(self) -> None:
        self.initialized = False

    def last_error(self) -> tuple[int, str]:
        return self._error

    def version(self) -> tuple[int, int, str]:
        return (500, 4000, "fake")

    def terminal_info(self) -> TerminalInfo | None:
        if not self.initialized:
            self._error = (-10004, "No IPC connection")
            return None
        return TerminalInfo(True, self.trade_allowed, "FakeMT5", "fake")

    # ---- market ---------------------------------------------------------------------
    def _now_server(self) -> float:
        return self.clock().timestamp() + self.server_offset_s

    def _point(self, symbol: str) -> float:
        return 10.0 ** -self.specs[symbol][0]

    def _tick(self, symbol: str) -> float:
        return TICK_SIZES.get(symbol, self._point(symbol))

    def _on_grid(self, symbol: str, price: float) -> float:
        tick = self._tick(symbol)
        return round(round(price / tick) * tick, self.specs[symbol][0])

    def _price(self, symbol: str, minute: int, frac: float = 1.0) -> float:
        """A deterministic wander around the symbol's base price, at ``minute`` + ``frac``."""
        digits, base, *_ = self.specs[symbol]
        x = minute + frac
        wave = 0.002 * math.sin(x / 37.0) + 0.001 * math.sin(x / 5.3 + len(symbol))
        return self._on_grid(symbol, base * (1 + wave))

    def _minute_bar(self, symbol: str, minute: int, upto: float = 1.0) -> tuple[float, float, float, float]:
        o = self._price(symbol, minute, 0.0)
        c = self._price(symbol, minute, upto)
        mid = self._price(symbol, minute, upto / 2)
        return o, max(o, c, mid), min(o, c, mid), c

    def _check(self, symbol: str) -> bool:
        if not self.initialized:
            self._error = (-10004, "No IPC connection")
            return False
        if symbol not in self.specs:
            self._error = (RES_E_NOT_FOUND, f"Terminal: Symbol {symbol} not found")
            return False
        return True

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        if not self._check(symbol):
            return None
        digits, _, stops_level, filling, spread = self.specs[symbol]
        tick = self.symbol_info_tick(symbol)
        point = self._point(symbol)
        # A USD account: the value of one tick of one lot in USD.
        contract = 100.0 if symbol.startswith("XAU") else 100_000.0
        tick_value = contract * point / tick.bid if symbol.startswith("USD") else contract * point
        return SymbolInfo(
            symbol,
            symbol in self.visible,
            digits,
            point,
            spread,
            stops_level,
            filling,
            4,
            0.01,
            100.0,
            0.01,
            self._tick(symbol),
            tick_value * self._tick(symbol) / point,
            contract,
            tick.bid,
            tick.ask,
            f"Fake\\{symbol}",
        )

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        if not self._check(symbol):
            return False
        (self.visible.add if enable else self.visible.discard)(symbol)
        return True

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        if not self._check(symbol):
            return None
        now = self._now_server()
        minute = int(now // 60)
        digits, _, _, _, spread = self.specs[symbol]
        spread = self._fed_spread.get(symbol, spread)
        synthetic = self._fed_bid[symbol] if symbol in self._fed_bid else self._price(symbol, minute, (now % 60) / 60)
        bid = self._on_grid(symbol, synthetic + self._shift[symbol])
        ask = self._on_grid(symbol, bid + spread * self._point(symbol))
        return Tick(int(now), bid, ask, 0.0, 0, int(now * 1000), 6, 0.0)

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> np.ndarray | None:
        """Bars newest-last, position 0 being the forming bar, as the real function."""
        if not self._check(symbol):
            return None
        if timeframe not in _MINUTES or count <= 0 or start_pos < 0:
            self._error = (RES_E_INVALID_PARAMS, "Invalid params")
            return None
        width = _MINUTES[timeframe]
        now = self._now_server()
        fed = self._fed_rates.get((symbol, width * 60))
        if fed:
            # Fed bars are the market: what has opened by now, newest last, position 0 the newest.
            known = [r for r in fed if r[0] <= now]
            end = len(known) - start_pos
            return np.array(known[max(0, end - count) : max(0, end)], dtype=RATES_DTYPE)
        now_min = now / 60
        current = int(now_min // width) * width  # open minute of the forming bar
        first_available = int(now_min) - self.history_minutes
        spread = self.specs[symbol][4]
        rows = []
        for pos in range(start_pos + count - 1, start_pos - 1, -1):
            open_min = current - pos * width
            if open_min < first_available:
                continue
            minutes = [m for m in range(open_min, open_min + width) if m <= now_min]
            parts = [self._minute_bar(symbol, m, min(1.0, now_min - m)) for m in minutes]
            o, c = parts[0][0], parts[-1][3]
            h, lo = max(p[1] for p in parts), min(p[2] for p in parts)
            rows.append((open_min * 60, o, h, lo, c, 40 + (open_min % 17) * len(parts), spread, 0))
        return np.array(rows, dtype=RATES_DTYPE)

    # ---- trading --------------------------------------------------------------------
    def script(self, symbol: str, retcodes: Iterable[int]) -> None:
        self._scripts[symbol].extend(retcodes)

    def order_send(self, request: dict) -> OrderSendResult | None:
        with self._lock:
            self.requests.append(dict(request))
            required = ("action", "symbol", "volume", "type", "price")
            if not isinstance(request, dict) or any(k not in request for k in required):
                self._error = (RES_E_INVALID_PARAMS, "Invalid arguments")
                return None
            symbol = request["symbol"]
            if not self._check(symbol):
                return None
            tick = self.symbol_info_tick(symbol)
            if request.get("position"):
                return self._close_request(request, tick)
            retcode = self._judge(request, tick)
            if retcode == TRADE_RETCODE_REQUOTE:
                self._shift[symbol] += 3 * self._tick(symbol)  # the price moved: that is what a requote says
                tick = self.symbol_info_tick(symbol)
            ticket = 0
            if retcode == TRADE_RETCODE_DONE:
                self._ticket += 1
                ticket = self._ticket
                pos = TradePosition(
                    ticket,
                    int(self._now_server()),
                    request["type"],
                    int(request.get("magic", 0)),
                    ticket,
                    float(request["volume"]),
                    float(request["price"]),
                    float(request.get("sl", 0.0)),
                    float(request.get("tp", 0.0)),
                    symbol,
                    str(request.get("comment", ""))[:31],
                )
                self.positions[ticket] = pos
                self.orders.append(
                    TradeOrder(
                        ticket,
                        pos.time,
                        pos.type,
                        pos.magic,
                        pos.volume,
                        pos.price_open,
                        pos.sl,
                        pos.tp,
                        symbol,
                        pos.comment,
                    )
                )
                self._deal(
                    pos,
                    DEAL_ENTRY_IN,
                    pos.price_open,
                    pos.time,
                    DEAL_REASON_EXPERT if pos.magic else DEAL_REASON_CLIENT,
                    pos.volume,
                    order=ticket,
                )
            if ticket and self.lose_answers > 0:
                self.lose_answers -= 1
                self._error = (-10005, "IPC timeout")
                return None
            fields = {f: request.get(f, 0) for f in TradeRequest._fields}
            fields["comment"] = str(request.get("comment", ""))
            fields["symbol"] = symbol
            self._error = (RES_S_OK, "Success")
            return OrderSendResult(
                retcode,
                ticket,
                ticket,
                float(request["volume"]) if ticket else 0.0,
                float(request["price"]) if ticket else 0.0,
                tick.bid,
                tick.ask,
                _COMMENTS.get(retcode, ""),
                len(self.requests),
                0,
                TradeRequest(**fields),
            )

    def _judge(self, request: dict, tick: Tick) -> int:
        symbol = request["symbol"]
        if self._scripts[symbol]:
            return self._scripts[symbol].popleft()
        if not self.trade_allowed:
            return 10027
        if symbol in self.market_closed:
            return TRADE_RETCODE_MARKET_CLOSED
        if request["action"] != TRADE_ACTION_DEAL or request["type"] not in (ORDER_TYPE_BUY, ORDER_TYPE_SELL):
            return TRADE_RETCODE_INVALID
        digits, _, stops_level, filling, _ = self.specs[symbol]
        point = self._point(symbol)
        allowed = {
            ORDER_FILLING_FOK: filling & SYMBOL_FILLING_FOK,
            ORDER_FILLING_IOC: filling & SYMBOL_FILLING_IOC,
            ORDER_FILLING_RETURN: filling == 0,
        }
        if not allowed.get(request.get("type_filling", ORDER_FILLING_FOK)):
            return TRADE_RETCODE_INVALID_FILL
        volume = float(request["volume"])
        if volume < 0.01 or abs(round(volume / 0.01) - volume / 0.01) > 1e-6:
            return TRADE_RETCODE_INVALID_VOLUME
        buy = request["type"] == ORDER_TYPE_BUY
        market = tick.ask if buy else tick.bid
        if abs(float(request["price"]) - market) > int(request.get("deviation", 0)) * point + 1e-9:
            return TRADE_RETCODE_REQUOTE
        sl, tp = float(request.get("sl", 0) or 0), float(request.get("tp", 0) or 0)
        close = tick.bid if buy else tick.ask
        gap = stops_level * point - 1e-9
        if self._on_grid(symbol, float(request["price"])) != float(request["price"]):
            return TRADE_RETCODE_INVALID_PRICE
        for level, below in ((sl, buy), (tp, not buy)):
            if not level:
                continue
            if round(level, digits) != level or self._on_grid(symbol, level) != level:
                return TRADE_RETCODE_INVALID_STOPS
            if below and not (level <= close - gap):
                return TRADE_RETCODE_INVALID_STOPS
            if not below and not (level >= close + gap):
                return TRADE_RETCODE_INVALID_STOPS
        return TRADE_RETCODE_DONE

    # ---- closing, stops and the deals history ---------------------------------------------
    def _profit(self, pos: TradePosition, price: float, volume: float) -> float:
        """USD profit of closing ``volume`` of ``pos`` at ``price`` (the account is in USD)."""
        contract = 100.0 if pos.symbol.startswith("XAU") else 100_000.0
        sign = 1.0 if pos.type == ORDER_TYPE_BUY else -1.0
        raw = sign * (price - pos.price_open) * volume * contract
        return round(raw / price if pos.symbol.startswith("USD") else raw, 2)

    def _deal(
        self,
        pos: TradePosition,
        entry: int,
        price: float,
        at: int,
        reason: int,
        volume: float,
        *,
        order: int = 0,
        profit: float = 0.0,
        swap: float = 0.0,
    ) -> TradeDeal:
        self._deal_ticket += 1
        # An IN deal trades the position's way; the OUT deal the other.
        buy = (pos.type == ORDER_TYPE_BUY) == (entry == DEAL_ENTRY_IN)
        deal = TradeDeal(
            self._deal_ticket, order, int(at), int(at) * 1000, DEAL_TYPE_BUY if buy else DEAL_TYPE_SELL, entry, pos.magic, pos.ticket, reason,
            volume, price, round(-self.commission_per_lot * volume, 2), swap, profit, 0.0, pos.symbol, pos.comment, "",
        )  # fmt: skip
        self.deals.append(deal)
        return deal

    def _close(
        self, pos: TradePosition, price: float, at: int, reason: int, volume: float | None = None, order: int = 0
    ) -> TradeDeal:
        volume = pos.volume if volume is None else volume
        nights = max(0, int(at // 86400) - int(pos.time // 86400))
        swap = round(-self.swap_per_lot_night * volume * nights, 2)
        deal = self._deal(
            pos,
            DEAL_ENTRY_OUT,
            price,
            at,
            reason,
            volume,
            order=order,
            profit=self._profit(pos, price, volume),
            swap=swap,
        )
        left = round(pos.volume - volume, 8)
        if left > 0:
            self.positions[pos.ticket] = pos._replace(volume=left)
        else:
            del self.positions[pos.ticket]
        self.balance += deal.profit + deal.swap + deal.commission
        return deal

    def _close_request(self, request: dict, tick: Tick) -> OrderSendResult:
        """TRADE_ACTION_DEAL with ``position``: close (all or part of) it at market."""
        pos = self.positions.get(int(request["position"]))
        fields = {f: request.get(f, 0) for f in TradeRequest._fields}
        fields["comment"] = str(request.get("comment", ""))
        retcode = TRADE_RETCODE_DONE
        if pos is None or pos.symbol != request["symbol"]:
            retcode = 10036  # TRADE_RETCODE_POSITION_CLOSED
        elif request["type"] == pos.type or float(request["volume"]) > pos.volume + 1e-9:
            retcode = TRADE_RETCODE_INVALID
        elif self._scripts[pos.symbol]:
            retcode = self._scripts[pos.symbol].popleft()
        elif pos.symbol in self.market_closed:
            retcode = TRADE_RETCODE_MARKET_CLOSED
        price = 0.0
        order = 0
        if retcode == TRADE_RETCODE_DONE:
            price = tick.bid if pos.type == ORDER_TYPE_BUY else tick.ask
            if abs(float(request["price"]) - price) > int(request.get("deviation", 0)) * self._point(pos.symbol) + 1e-9:
                retcode = TRADE_RETCODE_REQUOTE
        if retcode == TRADE_RETCODE_DONE:
            self._ticket += 1
            order = self._ticket
            self.orders.append(
                TradeOrder(
                    order,
                    int(self._now_server()),
                    request["type"],
                    int(request.get("magic", 0)),
                    float(request["volume"]),
                    price,
                    0.0,
                    0.0,
                    pos.symbol,
                    fields["comment"][:31],
                )
            )
            reason = DEAL_REASON_EXPERT if request.get("magic") else DEAL_REASON_CLIENT
            self._close(pos, price, int(self._now_server()), reason, float(request["volume"]), order=order)
        self._error = (RES_S_OK, "Success")
        return OrderSendResult(
            retcode, self._deal_ticket if order else 0, order, float(request["volume"]) if order else 0.0, price,
            tick.bid, tick.ask, _COMMENTS.get(retcode, ""), len(self.requests), 0, TradeRequest(**fields),
        )  # fmt: skip

    def feed_bars(self, symbol: str, rates: Iterable[Any], *, timeframe_seconds: int = 60) -> list[TradeDeal]:
        """Play bars (MqlRates rows: time in server time, OHLC bid, spread in points) in order:
        close the positions whose stop or target they touch; the deals made, in order."""
        digits = self.specs[symbol][0]
        point = self._point(symbol)
        made = []
        with self._lock:
            for bar in rates:
                t, h, lo, c = int(bar[0]), float(bar[2]), float(bar[3]), float(bar[4])
                spread = float(bar[6]) * point if len(bar) > 6 else 0.0
                for pos in sorted((p for p in self.positions.values() if p.symbol == symbol), key=lambda p: p.ticket):
                    if pos.time >= t + timeframe_seconds:
                        continue  # opened after this bar
                    if pos.type == ORDER_TYPE_BUY:
                        stop = pos.sl and lo <= pos.sl + 1e-9
                        target = pos.tp and h >= pos.tp - 1e-9
                    else:  # a short closes at the ask
                        stop = pos.sl and h + spread >= pos.sl - 1e-9
                        target = pos.tp and lo + spread <= pos.tp + 1e-9
                    if stop or target:
                        level = round(pos.sl if stop else pos.tp, digits)
                        # Inside the bar, after the open and after the position's own open.
                        at = max(t + timeframe_seconds // 2, pos.time)
                        made.append(self._close(pos, level, at, DEAL_REASON_SL if stop else DEAL_REASON_TP))
                self._fed_bid[symbol] = round(c, digits)
                self._shift[symbol] = 0.0
                row = (
                    tuple(bar[k] for k in range(8))
                    if len(bar) >= 8
                    else (t, float(bar[1]), h, lo, c, 0, int(bar[6]) if len(bar) > 6 else 0, 0)
                )
                self._fed_rates[(symbol, timeframe_seconds)].append(row)
        return made

    def quote(self, symbol: str, bid: float, spread_points: int | None = None) -> None:
        """The market's bid now (a tick: the open of the next bar, say); the ask is the bid
        plus ``spread_points`` (default: the symbol's usual spread)."""
        with self._lock:
            self._fed_bid[symbol] = self._on_grid(symbol, bid)
            self._shift[symbol] = 0.0
            if spread_points is None:
                self._fed_spread.pop(symbol, None)
            else:
                self._fed_spread[symbol] = int(spread_points)

    def history_deals_get(
        self,
        date_from: Any = None,
        date_to: Any = None,
        group: str | None = None,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple:
        """Deals by time (``date_from``/``date_to``: datetimes or epoch seconds, server time, as the real
        function takes them), or by deal ``ticket``, or by ``position`` (every deal of one position)."""
        if not self.initialized:
            self._error = (-10004, "No IPC connection")
            return None  # type: ignore[return-value]

        def seconds(value: Any) -> float | None:
            if value is None:
                return None
            return value.timestamp() if isinstance(value, datetime) else float(value)

        lo, hi = seconds(date_from), seconds(date_to)
        out = []
        for d in self.deals:
            if ticket is not None and d.ticket != ticket:
                continue
            if position is not None and d.position_id != position:
                continue
            if (
                ticket is None
                and position is None
                and ((lo is not None and d.time < lo) or (hi is not None and d.time > hi))
            ):
                continue
            out.append(d)
        return tuple(out)

    def positions_get(self, symbol: str | None = None, group: str | None = None, ticket: int | None = None) -> tuple:
        return tuple(
            p
            for p in self.positions.values()
            if (symbol is None or p.symbol == symbol) and (ticket is None or p.ticket == ticket)
        )

    def history_orders_get(
        self,
        date_from: Any = None,
        date_to: Any = None,
        group: str | None = None,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple:
        return tuple(o for o in self.orders if ticket is None or o.ticket == ticket)

    def account_info(self) -> AccountInfo | None:
        if not self.initialized:
            self._error = (-10004, "No IPC connection")
            return None
        return AccountInfo(5_000_001, self.balance, self.balance, "USD", self.balance, True)


# The real package exposes its constants as module attributes; code reads them from
# whatever stands in for the module (``mt5.ORDER_TYPE_BUY``), so the instance has them too.
for _name, _value in list(globals().items()):
    if _name.isupper() and isinstance(_value, int) and not _name.startswith("_"):
        setattr(FakeMT5, _name, _value)
