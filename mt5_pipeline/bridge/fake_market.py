"""The stand-in terminal's market: symbols, ticks and bars.

Deterministic M1 prices per symbol up to ``clock()`` (tests drive the clock), bar times
in the trade server's time (UTC + ``server_offset_hours``), like the real terminal.
Tests can replace the synthetic prices: :meth:`~mt5_pipeline.bridge.fake_history.FakeHistory.feed_bars`
plays bars (the last close becomes the bid; ``copy_rates_from_pos`` then gives the fed
bars, those opened by ``clock()``), and :meth:`FakeMarket.quote` moves the bid between bars.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime

import numpy as np

from mt5_pipeline.bridge.fake_connection import FakeConnection
from mt5_pipeline.bridge.fake_mt5_types import (
    _MINUTES,
    DEFAULT_SYMBOLS,
    INSTRUMENT_CLASSES,
    RATES_DTYPE,
    RES_E_INVALID_PARAMS,
    RES_E_NOT_FOUND,
    SYMBOL_FILLING_FOK,
    TICK_SIZES,
    SymbolInfo,
    Tick,
)
from mt5_pipeline.clock import utcnow


class FakeMarket(FakeConnection):
    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = utcnow,
        server_offset_hours: float = 2.0,
        symbols: Iterable[str] | None = None,
        history_minutes: int = 20_000,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.server_offset_s = int(server_offset_hours * 3600)
        self.history_minutes = history_minutes
        self.specs = dict(DEFAULT_SYMBOLS)
        self.specs.update(INSTRUMENT_CLASSES)
        for name in symbols or ():
            self.specs.setdefault(name.upper(), (5, 1.0, 10, SYMBOL_FILLING_FOK, 10))
        self.visible: set[str] = set()
        self._shift: dict[str, float] = defaultdict(float)  # price moves from requotes, in price units
        self._fed_bid: dict[str, float] = {}  # the last fed bar's close: the market's bid
        self._fed_spread: dict[str, int] = {}  # points, from quote()
        # (symbol, timeframe seconds): fed bars, oldest first
        self._fed_rates: dict[tuple[str, int], list[tuple]] = defaultdict(list)

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
        if self._not_connected():
            return False
        if symbol not in self.specs:
            self._error = (RES_E_NOT_FOUND, f"Terminal: Symbol {symbol} not found")
            return False
        return True

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        if not self._check(symbol):
            return None
        digits, _, stops_level, filling, spread = self.specs[symbol]
        tick = self._market(symbol)
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

    def _market(self, symbol: str) -> Tick:
        """The tick now, for a symbol already checked."""
        tick = self.symbol_info_tick(symbol)
        assert tick is not None, symbol
        return tick

    def _check_rates_request(self, symbol: str, timeframe: int, start_pos: int, count: int) -> bool:
        """A known symbol and a timeframe, position and count the real function takes; else the
        error it sets."""
        if not self._check(symbol):
            return False
        if timeframe not in _MINUTES or count <= 0 or start_pos < 0:
            self._error = (RES_E_INVALID_PARAMS, "Invalid params")
            return False
        return True

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> np.ndarray | None:
        """Bars newest-last, position 0 being the forming bar, as the real function."""
        if not self._check_rates_request(symbol, timeframe, start_pos, count):
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
