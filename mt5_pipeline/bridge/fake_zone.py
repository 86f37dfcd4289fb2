"""A stand-in terminal whose server clock follows a time zone's rules, on an FX week.

:class:`~mt5_pipeline.bridge.fake_mt5.FakeMT5` runs its server at one fixed offset and
trades around the clock. Real FX servers do neither: most run at UTC+2 in winter and
UTC+3 in summer, and have no bars from Friday's close to Monday's open (server time).
:class:`ZonedFakeMT5` is that server, so tests can check that every stored bar lands at
its true UTC time when the offset changes inside the history.

Prices are a function of the UTC minute (so a test can say which prices a bar at a UTC
time must hold: :meth:`ZonedFakeMT5.true_bar`); bars are cut on the server's clock, as
MT5 does. ``spikes`` holds UTC minutes whose prices are multiplied by 100 (a bad tick).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mt5_pipeline.bridge.fake_mt5 import _MINUTES, RATES_DTYPE, FakeMT5, Tick
from mt5_pipeline.server_time import parse_zone

_DAY_MIN = 1440


def _weekday(minute: np.ndarray | int) -> np.ndarray:
    """Monday = 0 (1970-01-01 was a Thursday)."""
    return (np.asarray(minute) // _DAY_MIN + 3) % 7


class ZonedFakeMT5(FakeMT5):
    def __init__(self, *, zone: str = "UTC+2/+3@US", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.zone = parse_zone(zone)
        self.spikes: set[tuple[str, int]] = set()  # (symbol, UTC minute)

    # ---- the clock and the week -----------------------------------------------------
    def _now_server(self) -> float:
        now = self.clock().timestamp()
        return float(self.zone.to_server(int(now))[0]) + now % 1

    @staticmethod
    def market_open(server_minute: np.ndarray | int) -> np.ndarray:
        """Monday 00:00 to Friday 24:00 server time."""
        return _weekday(server_minute) < 5

    def _utc_minutes(self, server_minutes: np.ndarray) -> np.ndarray:
        utc, _ = self.zone.to_utc(server_minutes.astype(np.int64) * 60)
        return utc // 60

    # ---- prices ---------------------------------------------------------------------
    def _prices(self, symbol: str, utc_minutes: np.ndarray, frac: np.ndarray | float) -> np.ndarray:
        digits, base, *_ = self.specs[symbol]
        x = utc_minutes + frac
        wave = 0.002 * np.sin(x / 37.0) + 0.001 * np.sin(x / 5.3 + len(symbol))
        price = np.round(base * (1 + wave), digits)
        if self.spikes:
            spiked = np.array([(symbol, int(m)) in self.spikes for m in np.atleast_1d(utc_minutes)])
            price = np.where(spiked, price * 100, price)
        return price

    def _bar(self, symbol: str, utc_minutes: np.ndarray, upto: np.ndarray) -> tuple[float, float, float, float]:
        o = self._prices(symbol, utc_minutes, 0.0)
        c = self._prices(symbol, utc_minutes, upto)
        mid = self._prices(symbol, utc_minutes, upto / 2)
        return (
            float(o[0]),
            float(np.maximum(np.maximum(o, c), mid).max()),
            float(np.minimum(np.minimum(o, c), mid).min()),
            float(c[-1]),
        )

    def true_bar(self, symbol: str, utc_open_s: int, minutes: int) -> tuple[float, float, float, float]:
        """The (open, high, low, close) a closed bar opening at this UTC time must have."""
        utc = np.arange(utc_open_s // 60, utc_open_s // 60 + minutes)
        return self._bar(symbol, utc, np.ones(len(utc)))

    # ---- the terminal's functions ------------------------------------------------------
    def symbol_info_tick(self, symbol: str) -> Tick | None:
        tick = super().symbol_info_tick(symbol)
        if tick is None:
            return None
        minute = int(self._now_server() // 60)
        if self.market_open(minute):
            return tick
        # Closed: the last tick is Friday's last minute, server time.
        while not self.market_open(minute):
            minute -= 1
        last = minute * 60 + 59
        return tick._replace(time=last, time_msc=last * 1000)

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> np.ndarray | None:
        if not self._check_rates_request(symbol, timeframe, start_pos, count):
            return None
        width = _MINUTES[timeframe]
        now_min = self._now_server() / 60
        first_available = int(now_min) - self.history_minutes
        spread = self.specs[symbol][4]
        opens: list[int] = []
        open_min = int(now_min // width) * width
        while len(opens) < start_pos + count and open_min >= first_available:
            minutes = np.arange(open_min, open_min + width)
            if self.market_open(minutes[minutes <= now_min]).any():
                opens.append(open_min)
            open_min -= width
        rows = []
        for open_min in reversed(opens[start_pos : start_pos + count]):
            minutes = np.arange(open_min, open_min + width)
            minutes = minutes[(minutes <= now_min) & self.market_open(minutes)]
            o, h, lo, c = self._bar(symbol, self._utc_minutes(minutes), np.minimum(1.0, now_min - minutes))
            rows.append((open_min * 60, o, h, lo, c, 40 + (open_min % 17) * len(minutes), spread, 0))
        return np.array(rows, dtype=RATES_DTYPE)
