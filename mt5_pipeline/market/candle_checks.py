"""The rules a candle batch must obey before anything is stored, checked column-wise.

Prices finite, positive and ordered (low <= open, close <= high), volumes whole and
within their columns, times not in the future and on the timeframe's open times
(in the broker's day for H4 and longer, see :mod:`mt5_pipeline.market.ingest`). The
result is a :class:`~mt5_pipeline.storage.candles.CandleBatch`, deduplicated (the last
version of a time wins) and sorted; the rules that need the stored bars (price jumps,
server-time offsets) are the ingest core's.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from mt5_pipeline.clock import resolve_now
from mt5_pipeline.market.candle_columns import extract_columns
from mt5_pipeline.market.candle_problems import (
    PRICE_FIELDS,
    VALUE_FIELDS,
    VOLUME_FIELDS,
    FieldError,
    Problems,
    show_number,
    show_time,
)
from mt5_pipeline.market.symbols import SYMBOL_RE
from mt5_pipeline.server_time import ServerZone
from mt5_pipeline.settings import TIMEFRAME_SECONDS
from mt5_pipeline.storage.candles import CandleBatch

TIMEFRAMES: tuple[str, ...] = tuple(TIMEFRAME_SECONDS)
FUTURE_SKEW_SECONDS = 60
# No instrument trades above this (BTC in yen is about 1e7): anything larger is an
# encoding or unit error, and would poison every feature window it enters.
MAX_PRICE = 1e10
SYMBOL_PATTERN = SYMBOL_RE  # one rule for bars and signals (market.symbols)
# spread is an INTEGER column; the volumes are BIGINT.
_INT_MAX = {"tick_volume": 2**63 - 1, "spread": 2**31 - 1, "real_volume": 2**63 - 1}
# 1970-01-04 was a Sunday: MT5's weeks (W1 bars) open on Sunday 00:00.
_FIRST_SUNDAY = 3 * 86_400
# Epoch seconds beyond this are surely milliseconds (year 5138).
_LOOKS_LIKE_MS = 10**11


def check_values(values: dict[str, np.ndarray], reported: dict[str, np.ndarray], problems: Problems) -> None:
    finite = {f: np.isfinite(values[f]) for f in VALUE_FIELDS}
    for field in VALUE_FIELDS:
        _check_finite(field, values[field], ~finite[field] & ~reported[field], problems)
    _check_prices(values, finite, problems)
    for field in VOLUME_FIELDS:
        _check_volume(field, values[field], finite[field], problems)


def _check_finite(field: str, v: np.ndarray, bad: np.ndarray, problems: Problems) -> None:
    problems.add_mask(bad, field, lambda i: f"must be a finite number, got {float(v[i])}")


def _check_prices(values: dict[str, np.ndarray], finite: dict[str, np.ndarray], problems: Problems) -> None:
    o, h, lo, c = (values[f] for f in PRICE_FIELDS)
    problems.add_mask(finite["low"] & (lo <= 0), "low", lambda i: f"must be greater than 0, got {show_number(lo[i])}")
    for field in PRICE_FIELDS:
        _check_price_range(field, values[field], finite[field], problems)
    prices_ok = finite["open"] & finite["high"] & finite["low"] & finite["close"]
    top = np.maximum(o, c)
    bottom = np.minimum(o, c)
    problems.add_mask(
        prices_ok & (h < top),
        "high",
        lambda i: f"must be >= max(open, close) = {show_number(top[i])}, got {show_number(h[i])}",
    )
    problems.add_mask(
        prices_ok & (lo > bottom),
        "low",
        lambda i: f"must be <= min(open, close) = {show_number(bottom[i])}, got {show_number(lo[i])}",
    )
    # high >= low follows from the two rules above; it is checked for when they pass only
    # by accident of rounding, so say it plainly then.
    problems.add_mask(
        prices_ok & (h >= top) & (lo <= bottom) & (h < lo),
        "high",
        lambda i: f"must be >= low {show_number(lo[i])}, got {show_number(h[i])}",
    )


def _check_price_range(field: str, v: np.ndarray, finite: np.ndarray, problems: Problems) -> None:
    problems.add_mask(
        finite & (v > MAX_PRICE),
        field,
        lambda i: (
            f"{show_number(v[i])} is beyond any instrument's price (at most {MAX_PRICE:g}); a unit or encoding error?"
        ),
    )


def _check_volume(field: str, v: np.ndarray, ok: np.ndarray, problems: Problems) -> None:
    problems.add_mask(ok & (v < 0), field, lambda i: f"must be >= 0, got {show_number(v[i])}")
    problems.add_mask(
        ok & (v >= 0) & (np.floor(v) != v), field, lambda i: f"must be a whole number, got {show_number(v[i])}"
    )
    problems.add_mask(
        ok & (v > _INT_MAX[field]), field, lambda i: f"is too large ({show_number(v[i])} > {_INT_MAX[field]})"
    )


def check_times(
    ts: np.ndarray,
    ts_ok: np.ndarray,
    field: str,
    timeframe: str | None,
    now_s: int,
    offset_s: int | np.ndarray,
    problems: Problems,
    zone: str = "",
) -> None:
    problems.add_mask(ts_ok & (ts < 0), field, lambda i: f"{show_time(ts[i])} is before 1970")
    future = ts_ok & (ts > now_s + FUTURE_SKEW_SECONDS)

    def future_message(i: int) -> str:
        hint = (
            " (milliseconds? send epoch seconds)"
            if ts[i] > _LOOKS_LIKE_MS
            else " (bar times are the bar's open time in UTC)"
        )
        return f"{show_time(ts[i])} is {int(ts[i] - now_s):,} s in the future; now is {show_time(now_s)}{hint}"

    problems.add_mask(future, field, future_message)
    if timeframe is None:
        return
    check = ts_ok & (ts >= 0) & ~future
    # Per bar: with the server's zone, each bar's own offset (a day starts at the server's
    # midnight, whichever offset is in force).
    local = ts + offset_s
    if zone:
        where = f" server time ({zone})"
    else:
        where = f" (broker time UTC{int(offset_s) / 3600:+g})" if offset_s else " UTC"
    if timeframe == "MN1":
        as_dt = np.where(check, local, 0).astype("datetime64[s]")
        bad = check & (as_dt.astype("datetime64[M]").astype("datetime64[s]") != as_dt)
        rule = f"MN1 bars open on the 1st of the month at 00:00{where}"
    elif timeframe == "W1":
        bad = check & ((local - _FIRST_SUNDAY) % TIMEFRAME_SECONDS["W1"] != 0)
        rule = f"W1 bars open on Sunday at 00:00{where}, as MT5's weeks do"
    else:
        seconds = TIMEFRAME_SECONDS[timeframe]
        bad = check & (local % seconds != 0)
        rule = {
            "D1": f"D1 bars open at 00:00{where}",
            "H4": f"H4 bars open at 00:00, 04:00, 08:00, ...{where}",
        }.get(timeframe, f"{timeframe} bars open on whole multiples of {seconds // 60} minute(s)")
    problems.add_mask(bad, field, lambda i: f"{show_time(ts[i])} is not a bar open time: {rule}")


def validate_candles(
    symbol: str,
    timeframe: str,
    candles: list[dict] | pd.DataFrame,
    *,
    now: datetime | None = None,
    utc_offset_hours: float = 0.0,
    server_zone: ServerZone | None = None,
) -> CandleBatch:
    """Check a batch column-wise; return it deduplicated (last wins) and sorted by ts.

    Raises CandleValidationError naming each bad row and field; nothing is stored then.
    `server_zone`: the times are the trade server's clock, converted here bar by bar
    (:mod:`mt5_pipeline.server_time`); the batch then carries each bar's offset.
    """
    batch, _ = validate_batch(
        symbol, timeframe, candles, now=now, utc_offset_hours=utc_offset_hours, server_zone=server_zone, partial=False
    )
    return batch


def validate_batch(
    symbol: str,
    timeframe: str,
    candles: list[dict] | pd.DataFrame,
    *,
    now: datetime | None,
    utc_offset_hours: float,
    server_zone: ServerZone | None,
    partial: bool,
) -> tuple[CandleBatch, Problems]:
    """validate_candles; with `partial`, rows with problems are dropped (and left in the
    returned problems) instead of rejecting the batch. Batch-level problems always raise."""
    now = aware_now(now)
    problems = Problems()
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        problems.batch.append(FieldError("symbol", f"must be 1-32 letters, digits or . _ # -, got {symbol!r}"))
    known_tf = isinstance(timeframe, str) and timeframe in TIMEFRAME_SECONDS
    if not known_tf:
        problems.batch.append(FieldError("timeframe", f"must be one of {', '.join(TIMEFRAMES)}, got {timeframe!r}"))

    n, ts, ts_ok, values, reported = extract_columns(candles, problems)
    time_field = "ts" if isinstance(candles, pd.DataFrame) and "time" not in candles.columns else "time"
    check_values(values, reported, problems)
    offsets: np.ndarray | int = round(utc_offset_hours * 3600)
    zone_name = ""
    if server_zone is not None:
        server = ts
        ts, converted = server_zone.to_utc(np.where(ts_ok, server, 0))
        skipped = ts_ok & ~converted
        problems.add_mask(
            skipped,
            time_field,
            lambda i: f"server time {show_time(server[i])} does not exist in {server_zone} (its clocks skip that hour)",
        )
        ts_ok = ts_ok & converted
        offsets = np.where(ts_ok, server - ts, 0)
        zone_name = str(server_zone)
    check_times(
        ts, ts_ok, time_field, timeframe if known_tf else None, int(now.timestamp()), offsets, problems, zone_name
    )
    if problems.batch or not partial:
        problems.raise_if_any()
    good = ~problems.bad_rows(n) if partial else np.ones(n, dtype=bool)

    # Last one wins: a stable sort keeps input order among equal times; keep each run's last.
    order = np.argsort(ts, kind="stable")
    order = order[good[order]]
    sorted_ts = ts[order]
    keep = order[np.append(sorted_ts[1:] != sorted_ts[:-1], True)] if len(order) else order
    row_offsets = np.broadcast_to(np.asarray(offsets, dtype=np.int64), (n,))
    batch = CandleBatch(
        symbol=symbol,
        timeframe=timeframe,
        received=n,
        ts=ts[keep],
        open=values["open"][keep],
        high=values["high"][keep],
        low=values["low"][keep],
        close=values["close"][keep],
        tick_volume=values["tick_volume"][keep].astype(np.int64),
        spread=values["spread"][keep].astype(np.int64),
        real_volume=values["real_volume"][keep].astype(np.int64),
        source_rows=keep,
        utc_offset_s=row_offsets[keep].copy(),
    )
    return batch, problems


def aware_now(now: datetime | None) -> datetime:
    # Stricter than clock.resolve_now: a naive `now` here is a caller's mistake, not UTC.
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return resolve_now(now)
