"""Closed bars from the terminal to POST /ingest, as they close, never skipping one.

Each cycle, per (symbol, timeframe): read the bars since the last one the API took
(``copy_rates_from_pos`` from position 0, enough of them to cover the gap), keep the
closed ones, and post those newer than that bar, together with that bar itself (a
late tick may have changed it; ingest is idempotent, so re-sending costs nothing). The
newest bar sent is recorded only after the API said yes, so an API outage just makes the
next cycle's window longer: retried, then caught up, nothing skipped.

MT5 bar times are the trade server's clock, not UTC. The bridge sends them as they are,
with the server's zone (``server_time_zone``), and the API converts each bar with the
offset in force at it (:mod:`mt5_pipeline.server_time`, the one place that does it; the
bridge's own bookkeeping of the last bar uses the same conversion). The zone is
``BRIDGE_SERVER_TIME_ZONE`` (such as ``UTC+2/+3@US``); with ``auto``, a fixed offset:
``BRIDGE_UTC_OFFSET_HOURS``, or measured from the freshest tick (server time minus UTC,
rounded to the half hour), and bars wait while it cannot be measured. A fixed offset is
wrong for every bar on the other side of a daylight-saving change: the API records the
offset each bar was stored with and refuses a bar re-sent with another one, so a
catch-up across a change cannot overwrite a correct bar, but only the zone stores it right.

Batches go with ``partial``: a bar the API refuses (a bad tick beyond PRICE_MAX_JUMP, a
time from a mis-set clock, another offset) is counted and reported (``/health``, the
log, the API's ``mt5_candles_rejected``), and the feed moves on past it.
A bar is closed once its open time + timeframe has passed, or a later bar exists (MN1:
only the latter, months are not 30 days).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict

import numpy as np

from mt5_pipeline.bridge.client import ApiClient, ApiRefused, ApiUnavailable
from mt5_pipeline.bridge.mt5_api import SymbolInfo
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import Terminal, mt5_timeframe
from mt5_pipeline.clock import utcnow
from mt5_pipeline.server_time import ServerZone, fixed_zone, parse_zone
from mt5_pipeline.settings import TIMEFRAME_SECONDS

log = logging.getLogger(__name__)

POST_CHUNK = 5000  # bars per POST /ingest during a catch-up
MAX_FETCH = 100_000  # most bars read back at once (terminals keep "Max bars in chart", often 100,000)
# After a bar closes, wait this long before reading it: the last tick of the bar may still
# be on its way from the trade server.
CLOSE_GRACE_SECONDS = 0.3
# Ticks this much older than a half-hour boundary do not measure the offset.
OFFSET_TOLERANCE_SECONDS = 90


class Candle(TypedDict):
    """One bar as POST /ingest takes it (MqlRates field names)."""

    time: int
    open: float
    high: float
    low: float
    close: float
    tick_volume: int
    spread: int
    real_volume: int


class Instrument(TypedDict):
    digits: int
    point: float


def candle(rate: np.void, offset_s: int = 0) -> Candle:
    """One MqlRates record as the API's candle (MqlRates field names; the server's time less `offset_s`)."""
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


def instrument_fields(info: SymbolInfo) -> Instrument:
    """The symbol's digits and point (SYMBOL_DIGITS, SYMBOL_POINT), sent with its bars so
    the core can decide its pip without PIP_SIZES (gold, indices, crypto, exotics)."""
    return {"digits": int(info.digits), "point": float(info.point)}


@dataclass
class FeedStatus:
    last_bar: int | None = None  # UTC epoch of the newest bar the API took
    last_error: str = ""
    api_error: bool = False  # last_error came from the API (not from the terminal)
    bars_sent: int = 0
    bars_skipped: int = 0  # bars the API refused (partial ingest): reported, not retried
    last_skipped: str = ""  # why the last one was refused


@dataclass
class BarFeeder:
    terminal: Terminal
    api: ApiClient
    store: BridgeStore
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    history_bars: int
    utc_offset_hours: float | None = None  # None: auto
    server_time_zone: str | None = None  # BRIDGE_SERVER_TIME_ZONE; None: auto (a fixed offset)
    clock: Callable[[], datetime] = utcnow
    status: dict[tuple[str, str], FeedStatus] = field(default_factory=dict)
    measured_offset_s: int | None = None
    selected: set[str] = field(default_factory=set)  # symbols put in Market Watch (hidden ones get no rates)
    instruments: dict[str, Instrument] = field(
        default_factory=dict
    )  # what each symbol says about itself, sent with its bars

    def __post_init__(self) -> None:
        if self.server_time_zone is None:
            log.warning(
                "BRIDGE_SERVER_TIME_ZONE is auto: every bar is converted with one UTC offset (%s). Bars on the other "
                "side of a "
                "daylight-saving change (most brokers: UTC+2 in winter, UTC+3 in summer) will be an hour off, or "
                "refused where "
                "they would replace a bar stored with the other offset. Set BRIDGE_SERVER_TIME_ZONE (such as "
                "UTC+2/+3@US) "
                "before sending history that crosses a change.",
                "measured from the last tick" if self.utc_offset_hours is None else f"UTC{self.utc_offset_hours:+g}",
            )

    # ---- the server's zone ----------------------------------------------------------
    def zone(self) -> ServerZone | None:
        """The server's zone, or None while an auto offset cannot be measured."""
        if self.server_time_zone is not None:
            return parse_zone(self.server_time_zone)
        offset = self.offset_seconds()
        return None if offset is None else fixed_zone(offset)

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
        zone = self.zone()
        if zone is None:
            for key in self._keys():
                self.status.setdefault(
                    key, FeedStatus()
                ).last_error = (
                    "waiting for a fresh tick to measure the server's UTC offset (or set BRIDGE_SERVER_TIME_ZONE)"
                )
            return 0
        sent = 0
        for symbol, timeframe in self._keys():
            sent += self._feed(symbol, timeframe, zone)
        return sent

    def _keys(self) -> list[tuple[str, str]]:
        return [(s, tf) for s in self.symbols for tf in self.timeframes]

    def _feed(self, symbol: str, timeframe: str, zone: ServerZone) -> int:
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
        # Server times go to the API as they are; the UTC time beside each is the same
        # conversion the API makes, for the bridge's own "newest bar taken".
        candles = sorted((candle(r) for r in rates), key=lambda c: c["time"])
        utc, ok = zone.to_utc(np.array([c["time"] for c in candles], dtype=np.int64))
        pairs = [(int(u), c) for u, c, good in zip(utc.tolist(), candles, ok.tolist(), strict=True) if good]
        if pairs and (timeframe == "MN1" or pairs[-1][0] + seconds > now):
            pairs.pop()  # the forming bar
        if last is not None:
            pairs = [p for p in pairs if p[0] >= last]
            if not any(u > last for u, _ in pairs):
                return 0
        new = 0
        for start in range(0, len(pairs), POST_CHUNK):
            chunk = pairs[start : start + POST_CHUNK]
            try:
                answer = self.api.ingest(
                    symbol,
                    timeframe,
                    [c for _, c in chunk],
                    server_time_zone=zone.name,
                    partial=True,
                    instrument=self.instruments.get(symbol),
                )
            except (ApiUnavailable, ApiRefused) as exc:
                status.last_error = str(exc)
                status.api_error = True
                log.warning("Bars %s %s not taken (will resend): %s", symbol, timeframe, exc)
                return new
            rejected = int(answer.get("rejected") or 0)
            if rejected:
                errors = answer.get("errors") or []
                status.bars_skipped += rejected
                status.last_skipped = "; ".join(
                    f"{e.get('loc')}: {e.get('message')}" for e in errors[:3] if isinstance(e, dict)
                )
                log.warning(
                    "Bars %s %s: the API refused %d bar(s), skipped (the rest stored): %s",
                    symbol,
                    timeframe,
                    rejected,
                    status.last_skipped,
                )
            newest = chunk[-1][0]
            new += sum(1 for u, _ in chunk if last is None or u > last) - rejected
            self.store.set_last_bar(symbol, timeframe, newest)
            status.last_bar = newest
            status.last_error = ""
            status.api_error = False
        new = max(new, 0)
        status.bars_sent += new
        return new

    # ---- the loop -------------------------------------------------------------------
    def seconds_to_next_close(self) -> float:
        """Until the next bar close of any feed, plus the grace. Bars up to D1 close on
        whole multiples of their length in server time (hence the offset: an H4 bar of a
        UTC+2 server closes at 22:00, 02:00, ... UTC); W1 and MN1 are checked every minute."""
        now = self.clock().timestamp()
        offset: float
        if self.server_time_zone is not None:
            offset = parse_zone(self.server_time_zone).offset_now(self.clock())
        else:
            offset = (
                self.utc_offset_hours * 3600 if self.utc_offset_hours is not None else (self.measured_offset_s or 0)
            )
        waits = []
        for tf in self.timeframes:
            seconds = TIMEFRAME_SECONDS[tf]
            waits.append(seconds - ((now + offset) % seconds) if seconds <= TIMEFRAME_SECONDS["D1"] else 60.0)
        return min(waits) + CLOSE_GRACE_SECONDS

    def run(
        self, stop: threading.Event, *, retry_seconds: float = 5.0, wait: Callable[[float], bool] | None = None
    ) -> None:
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
