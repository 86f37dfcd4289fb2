"""The stand-in terminal's trade server: ``order_send`` checks a request as a real one
does (price within the deviation, stops on the right side and beyond the stops level, an
allowed filling mode, the volume step), opens or closes the position, and answers with
the documented retcode; every request is kept in ``requests``.

Knobs for tests: ``script(symbol, retcodes)`` makes the next ``order_send`` calls answer
those retcodes (a requote also moves the price, as one does); ``market_closed`` is a set
of symbols whose orders get MARKET_CLOSED; ``lose_answers`` drops the next answers after
the order executed (a lost IPC reply).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

from mt5_pipeline.bridge.fake_history import FakeHistory
from mt5_pipeline.bridge.fake_mt5_types import (
    COMMENTS,
    DEAL_REASON_CLIENT,
    DEAL_REASON_EXPERT,
    ORDER_FILLING_FOK,
    ORDER_FILLING_IOC,
    ORDER_FILLING_RETURN,
    ORDER_TYPE_BUY,
    ORDER_TYPE_SELL,
    RES_E_INVALID_PARAMS,
    RES_S_OK,
    SYMBOL_FILLING_FOK,
    SYMBOL_FILLING_IOC,
    TRADE_ACTION_DEAL,
    TRADE_RETCODE_DONE,
    TRADE_RETCODE_INVALID,
    TRADE_RETCODE_INVALID_FILL,
    TRADE_RETCODE_INVALID_PRICE,
    TRADE_RETCODE_INVALID_STOPS,
    TRADE_RETCODE_INVALID_VOLUME,
    TRADE_RETCODE_MARKET_CLOSED,
    TRADE_RETCODE_REQUOTE,
    OrderSendResult,
    Tick,
    TradeOrder,
    TradePosition,
    TradeRequest,
)


class FakeOrders(FakeHistory):
    def __init__(self, **market: Any) -> None:
        super().__init__(**market)
        self.requests: list[dict] = []
        self.market_closed: set[str] = set()
        self.lose_answers = 0  # the next n order_send calls execute, then answer None (a dropped IPC answer)
        self._scripts: dict[str, deque[int]] = defaultdict(deque)

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
            tick = self._market(symbol)
            if request.get("position"):
                return self._close_request(request, tick)
            retcode = self._judge(request, tick)
            if retcode == TRADE_RETCODE_REQUOTE:
                self._shift[symbol] += 3 * self._tick(symbol)  # the price moved: that is what a requote says
                tick = self._market(symbol)
            ticket = self._open(request, symbol).ticket if retcode == TRADE_RETCODE_DONE else 0
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
                COMMENTS.get(retcode, ""),
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

    def _close_retcode(self, request: dict, pos: TradePosition | None) -> int:
        if pos is None or pos.symbol != request["symbol"]:
            return 10036  # TRADE_RETCODE_POSITION_CLOSED
        if request["type"] == pos.type or float(request["volume"]) > pos.volume + 1e-9:
            return TRADE_RETCODE_INVALID
        if self._scripts[pos.symbol]:
            return self._scripts[pos.symbol].popleft()
        if pos.symbol in self.market_closed:
            return TRADE_RETCODE_MARKET_CLOSED
        return TRADE_RETCODE_DONE

    def _close_request(self, request: dict, tick: Tick) -> OrderSendResult:
        """TRADE_ACTION_DEAL with ``position``: close (all or part of) it at market."""
        pos = self.positions.get(int(request["position"]))
        fields = {f: request.get(f, 0) for f in TradeRequest._fields}
        fields["comment"] = str(request.get("comment", ""))
        retcode = self._close_retcode(request, pos)
        price = 0.0
        order = 0
        if retcode == TRADE_RETCODE_DONE and pos is not None:
            price = tick.bid if pos.type == ORDER_TYPE_BUY else tick.ask
            if abs(float(request["price"]) - price) > int(request.get("deviation", 0)) * self._point(pos.symbol) + 1e-9:
                retcode = TRADE_RETCODE_REQUOTE
        if retcode == TRADE_RETCODE_DONE and pos is not None:
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
            tick.bid, tick.ask, COMMENTS.get(retcode, ""), len(self.requests), 0, TradeRequest(**fields),
        )  # fmt: skip
