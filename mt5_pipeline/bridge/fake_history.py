"""The stand-in terminal's positions and deals history.

Positions close as on a trade server: at market (an opposite order naming the position,
:mod:`~mt5_pipeline.bridge.fake_orders`), or when a bar fed with :meth:`FakeHistory.feed_bars`
(server time, bid prices, spread in points) touches the stop-loss or take-profit, at that
level (a long at the bid, a short at the ask = bid + the bar's spread; the stop-loss first
when one bar touches both, as the backtest assumes). Every open and close leaves deals
(``history_deals_get``: DEAL_ENTRY_IN / DEAL_ENTRY_OUT, position_id, reason, profit in the
USD account, swap, commission) that outlive the position, as the terminal's history does.
``commission_per_lot`` (per deal) and ``swap_per_lot_night`` (charged at the close, per
server midnight held) are 0 unless a test sets them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from mt5_pipeline.bridge.fake_market import FakeMarket
from mt5_pipeline.bridge.fake_mt5_types import (
    DEAL_ENTRY_IN,
    DEAL_ENTRY_OUT,
    DEAL_REASON_CLIENT,
    DEAL_REASON_EXPERT,
    DEAL_REASON_SL,
    DEAL_REASON_TP,
    DEAL_TYPE_BUY,
    DEAL_TYPE_SELL,
    ORDER_TYPE_BUY,
    AccountInfo,
    TradeDeal,
    TradeOrder,
    TradePosition,
)


class FakeHistory(FakeMarket):
    def __init__(self, **market: Any) -> None:
        super().__init__(**market)
        self.positions: dict[int, TradePosition] = {}
        self.orders: list[TradeOrder] = []
        self.deals: list[TradeDeal] = []
        self.balance = 10_000.0
        self.commission_per_lot = 0.0
        self.swap_per_lot_night = 0.0
        self._ticket = 50_000_000  # orders and positions
        self._deal_ticket = 80_000_000

    def _open(self, request: dict, symbol: str) -> TradePosition:
        """An accepted order: the position, its order and its IN deal."""
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
                ticket, pos.time, pos.type, pos.magic, pos.volume, pos.price_open, pos.sl, pos.tp, symbol, pos.comment
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
        return pos

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
            ticket=self._deal_ticket,
            order=order,
            time=int(at),
            time_msc=int(at) * 1000,
            type=DEAL_TYPE_BUY if buy else DEAL_TYPE_SELL,
            entry=entry,
            magic=pos.magic,
            position_id=pos.ticket,
            reason=reason,
            volume=volume,
            price=price,
            commission=round(-self.commission_per_lot * volume, 2),
            swap=swap,
            profit=profit,
            fee=0.0,
            symbol=pos.symbol,
            comment=pos.comment,
            external_id="",
        )
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
        if self._not_connected():
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
        if self._not_connected():
            return None
        return AccountInfo(5_000_001, self.balance, self.balance, "USD", self.balance, True)
