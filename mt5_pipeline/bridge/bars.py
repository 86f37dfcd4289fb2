"""Closed bars from the terminal to POST /ingest, as they close, never skipping one.

Each cycle, per (symbol, timeframe): read the bars since the last one the API took
(``copy_rates_from_pos`` from position 0, enough of them to cover the gap), keep the
closed ones, and post those newer than that bar, together with that bar itself (a
late tick may have changed it; ingest is idempotent, so re-sending costs nothing). The
newest bar sent is recorded only after the API said yes, so an API outage just makes the
next cycle's window longer: retried, then caught up, nothing skipped.

MT5 bar times are the trade server's clock, not UTC. The offset is
``BRIDGE_UTC_OFFSET_HOURS`` or, with ``auto``, measured from the freshest tick (server
time minus UTC, rounded to the half hour); bars wait while it cannot be measured.
A bar is closed once its open time + timeframe has passed, or a later bar exists (MN1:
only the latter, months are not 30 days).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mt5_pipeline.bridge.client import ApiClient, ApiRefused, ApiUnavailable
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import mt5_timeframe
from mt5_pipeline.clock import utcnow
from mt5_pipeline.settings import TIMEFRAME_SECONDS

log = logging.getLogger(__name__)

POST_CHUNK = 5000  # bars per POST /ingest during a catch-up
MAX_FETCH = 100_000  # most bars read back at once (terminals keep "Max bars in chart", often 100,000)
# After a bar closes, wait this long before reading it: the last tick of the bar may still
# be on its way from the trade server.
CLOSE_GRACE_SECONDS = 0.3
# Ticks this much older than a half-hour boundary do not measure the offset.
OFFSET_TOLERANCE_SECONDS = 90


def candle(rate: Any, offset_s: int) -> dict:
    """One MqlRates record as the API's candle (MqlRates field names, UTC time)."""
    return {
        "time": int(rate["time"]) - offset_s,
        "open": float(rate["open"]),
        "high": float(rate["high"]),
        "low": float(rate["low"]),
        "close": float(rate["close"]),
        "tick_volume": int(rate["tick_volume"]),
        "spread": int(rate["spread"]),
        "real_volume": int(rate["real_volume"]),
    }


def instrument_fields(info: Any) -> dict:
    """The symbol's digits and point (SYMBOL_DIGITS, SYMBOL_POINT), sent with its bars so
    the core can decide its pip without PIP_SIZES (gold, indices, crypto, exotics)."""
    return {"digits": int(info.digits), "point": float(info.point)}


@dataclass
class FeedStatus:
    last_bar: int | None = None  # UTC epoch of the newest bar the API took
    last_error: str = ""
    api_error: bool = False  # last_error came from the API (not from the terminal)
    bars_sent: int = 0


@dataclass
class BarFeeder:
    terminal: Any
    api: ApiClient
    store: BridgeStore
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    history_bars: int
    utc_offset_hours: float | None = None  # None: auto
    clock: Callable[[], datetime] = utcnow
    status: dict[tuple[str, str], FeedStatus] = field(default_factory=dict)
    measured_offset_s: int | None = None
    selected: set[str] = field(default_factory=set)  # symbols put in Market Watch (hidden ones get no rates)
    instruments: dict[str, dict] = field(default_factory=dict)  # what each symbol says about itself, sent with its bars

    # ---- the UTC offset -------------------------------------------------------------
    def offset_seconds(self) -> int | None:
        if self.utc_offset_hours is not None:
            return int(round(self.utc_offset_hours * 3600))
        now = self.clock().timestamp()
        best = None
        with self.terminal.session() as mt5:
            for symbol in self.symbols:
                tick = mt5.symbol_info_tick(symbol)
                if tick is not None and tick.time:
                    best = max(best or 0, int(tick.time))
        if best:
            diff = best - now
            rounded = int(round(diff / 1800.0)) * 1800
            if abs(diff - rounded) <= OFFSET_TOLERANCE_SECONDS and -12 * 3600 <= rounded <= 14 * 3600:
                if rounded != self.measured_offset_s:
                    log.info("Trade server time is UTC%+g (measured from the last tick)", rounded / 3600)
                self.measured_offset_s = rounded
        return self.measured_offset_s

    # ---- one cycle ------------------------------------------------------------------
    def cycle(self) -> int:
        """Post every closed bar not yet taken by the API; the number of new bars sent."""
        if not self.terminal.ensure():
            for key in self._keys():
                self.status.setdefault(key, FeedStatus()).last_error = "the terminal is not reachable"
            return 0
        offset = self.offset_seconds()
        if offset is None:
            for key in self._keys():
                self.status.setdefault(key, FeedStatus()).last_error = (
                    "waiting for a fresh tick to measure the server's UTC offset (or set BRIDGE_UTC_OFFSET_HOURS)"
                )
            return 0
        sent = 0
        for symbol, timeframe in self._keys():
            sent += self._feed(symbol, timeframe, offset)
        return sent

    def _keys(self) -> list[tuple[str, str]]:
        return [(s, tf) for s in self.symbols for tf in self.timeframes]

    def _feed(self, symbol: str, timeframe: str, offset: int) -> int:
        status = self.status.setdefault((symbol, timeframe), FeedStatus())
        seconds = TIMEFRAME_SECONDS[timeframe]
        now = int(self.clock().timestamp())
        last = self.store.last_bar(symbol, timeframe)
        status.last_bar = last
        if last is None:
            count = self.history_bars + 1
        else:
            count = min(MAX_FETCH, max(2, (now - last) // seconds + 3))
        if symbol not in self.selected:
            info = self.terminal.select(symbol)
            if info is not None:
                self.selected.add(symbol)
                self.instruments[symbol] = instrument_fields(info)
        with self.terminal.session() as mt5:
            rates = mt5.copy_rates_from_pos(symbol, mt5_timeframe(mt5, timeframe), 0, count)
            if rates is None:
                code, text = self.terminal.last_error()
                status.last_error = f"copy_rates_from_pos({symbol}, {timeframe}) failed: {code} {text}"
                log.warning(status.last_error)
                return 0
        candles = [candle(r, offset) for r in rates]
        candles.sort(key=lambda c: c["time"])
        if candles and (timeframe == "MN1" or candles[-1]["time"] + seconds > now):
            candles.pop()  # the forming bar
        if last is not None:
            candles = [c for c in candles if c["time"] >= last]
            if not any(c["time"] > last for c in candles):
                return 0
        new = 0
        for start in range(0, len(candles), POST_CHUNK):
            chunk = candles[start : start + POST_CHUNK]
            try:
                self.api.ingest(symbol, timeframe, chunk, offset / 3600, self.instruments.get(symbol))
            except (ApiUnavailable, ApiRefused) as exc:
                status.last_error = str(exc)
                status.api_error = True
                log.warning("Bars %s %s not taken (will resend): %s", symbol, timeframe, exc)
                return new
            newest = chunk[-1]["time"]
            new += sum(1 for c in chunk if last is None or c["time"] > last)
            self.store.set_last_bar(symbol, timeframe, newest)
            status.last_bar = newest
            status.last_error = ""
            status.api_error = False
        status.bars_sent += new
        return new

    # ---- the loop -------------------------------------------------------------------
    def seconds_to_next_close(self) -> float:
        """Until the next bar close of any feed, plus the grace. Bars up to D1 close on
        whole multiples of their length in server time (hence the offset: an H4 bar of a
        UTC+2 server closes at 22:00, 02:00, ... UTC); W1 and MN1 are checked every minute."""
        now = self.clock().timestamp()
        offset = self.utc_offset_hours * 3600 if self.utc_offset_hours is not None else (self.measured_offset_s or 0)
        waits = []
        for tf in self.timeframes:
            seconds = TIMEFRAME_SECONDS[tf]
            waits.append(seconds - ((now + offset) % seconds) if seconds <= TIMEFRAME_SECONDS["D1"] else 60.0)
        return min(waits) + CLOSE_GRACE_SECONDS

    def run(self, stop: threading.Event, *, retry_seconds: float = 5.0, wait: Callable[[float], bool] | None = None) -> None:
        """Cycle at every bar close (+ a grace), sooner while something failed."""
        wait = wait or stop.wait
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:  # the terminal connection broke: log and keep the loop alive
                log.exception("Bar cycle failed")
            failing = any(s.last_error for s in self.status.values())
            delay = self.seconds_to_next_close()
            if failing:
                delay = min(delay, retry_seconds)
            if wait(delay):
                return
