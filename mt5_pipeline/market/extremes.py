"""Extreme bars: stored, flagged, not traded until confirmed.

Ingest rejects the absurd (PRICE_MAX_JUMP, mt5_pipeline.market.ingest). What passes may still
be extreme: a bar whose high or low lies further from the previous close than
EXTREME_SIGMAS robust standard deviations of the bars before it (1.4826 x the median
absolute close-to-close log return of EXTREME_LOOKBACK_BARS bars, floored at
MIN_SIGMA so a flat quiet market does not make every tick extreme). A news spike
or a bad tick looks the same on arrival; the next CONFIRM_BARS bars tell them apart:
the level is confirmed when each of their closes is nearer the extreme bar's close
than the close before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd

from mt5_pipeline.clock import as_utc
from mt5_pipeline.storage.candles import read_candles

EXTREME_SIGMAS = 20.0
EXTREME_LOOKBACK_BARS = 100
MIN_SIGMA = 1e-4  # one basis point per bar
CONFIRM_BARS = 2
_MIN_PERIODS = 20  # returns the yardstick needs before it means anything
# The bars unconfirmed_extreme looks at, ending at the bar decided.
EXTREME_CHECK_WINDOW = EXTREME_LOOKBACK_BARS + CONFIRM_BARS + 2
# The candles check looks at this many newest bars per series (what trading still uses).
EXTREME_CHECK_BARS = 5_000

# The bars the guard reads: a frame, or numpy columns with ts as int64 nanoseconds since the
# epoch, UTC (the live worker's tail, without the cost of a frame).
RecentBars = pd.DataFrame | Mapping[str, np.ndarray]


def extreme_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """Per bar of one series (sorted by ts): ``sigmas`` (its excursion from the previous
    close in robust standard deviations), ``extreme`` and ``confirmed`` (None while fewer
    than CONFIRM_BARS bars follow it)."""
    logc = np.log(frame["close"].to_numpy(dtype=np.float64))
    prev = np.concatenate([[np.nan], logc[:-1]])
    move = np.fmax(
        np.abs(np.log(frame["high"].to_numpy(dtype=np.float64)) - prev),
        np.abs(np.log(frame["low"].to_numpy(dtype=np.float64)) - prev),
    )
    absret = pd.Series(np.abs(logc - prev))
    # The bars before, not the bar itself: a spike must not raise its own yardstick.
    sigma = 1.4826 * absret.shift(1).rolling(EXTREME_LOOKBACK_BARS, min_periods=_MIN_PERIODS).median().to_numpy()
    sigmas = move / np.fmax(sigma, MIN_SIGMA)
    extreme = np.nan_to_num(sigmas, nan=0.0) > EXTREME_SIGMAS
    confirmed: list[bool | None] = [None] * len(frame)
    for i in np.flatnonzero(extreme):
        after = logc[i + 1 : i + 1 + CONFIRM_BARS]
        if len(after) == CONFIRM_BARS:
            confirmed[i] = bool((np.abs(after - logc[i]) < np.abs(after - prev[i])).all())
    return pd.DataFrame({"ts": frame["ts"].to_numpy(), "sigmas": sigmas, "extreme": extreme, "confirmed": confirmed})


def unconfirmed_extreme(database_url: str, symbol: str, timeframe: str, bar_ts: datetime) -> str | None:
    """Why no signal may be made from the bar at `bar_ts`, or None when one may.

    Refused while the bar itself, or one of the CONFIRM_BARS bars before it, is extreme
    and the bars after it up to `bar_ts` have not (yet) confirmed its level: the
    features of such a bar carry a price the market may never have traded at.
    """
    frame = read_candles(database_url, symbol, timeframe, end=as_utc(bar_ts), last_n=EXTREME_CHECK_WINDOW)
    return unconfirmed_extreme_in(frame, symbol, timeframe)


def window_ends_at(bars: RecentBars, bar: datetime) -> bool:
    """Whether ``bars`` (as :func:`unconfirmed_extreme_in` takes them) end at the bar ``bar``."""
    ts = bars["ts"]
    if not len(ts):
        return False
    last = pd.Timestamp(ts.iloc[-1]) if isinstance(ts, pd.Series) else pd.Timestamp(int(ts[-1]), unit="ns", tz="UTC")
    return as_utc(last.to_pydatetime()) == as_utc(bar)


def unconfirmed_extreme_in(bars: RecentBars, symbol: str, timeframe: str) -> str | None:
    """:func:`unconfirmed_extreme` on the bars in hand: ``bars`` is the series' newest
    EXTREME_CHECK_WINDOW bars up to the bar decided (all of them when it has fewer),
    sorted by ts, with ts, high, low and close: a frame, or numpy columns with ts as int64
    nanoseconds since the epoch, UTC (the live worker's tail holds them)."""
    close = np.asarray(bars["close"], dtype=np.float64)
    n = len(close)
    if n == 0:
        return None
    for i, sigmas, confirmed in _recent_flags(
        np.asarray(bars["high"], dtype=np.float64), np.asarray(bars["low"], dtype=np.float64), close
    ):
        if confirmed is True:
            continue
        ts = bars["ts"]
        when = (
            pd.Timestamp(ts.iloc[i]) if isinstance(ts, pd.Series) else pd.Timestamp(int(ts[i]), unit="ns", tz="UTC")
        ).isoformat()
        waiting = n - 1 - i < CONFIRM_BARS
        state = (
            f"waiting for {CONFIRM_BARS - (n - 1 - i)} more bar(s) to confirm its level"
            if waiting
            else f"the {CONFIRM_BARS} bars after it did not hold its level"
        )
        return f"{symbol} {timeframe} bar {when} moved {sigmas:.0f} standard deviations: {state}"
    return None


def _recent_flags(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> list[tuple[int, float, bool | None]]:
    """(index, sigmas, confirmed) of the extreme bars among the last CONFIRM_BARS + 1, oldest
    first: :func:`extreme_bars` on those bars alone, the same floats.

    The guard decides from these few bars only; a rolling median over the whole window
    costs more than the rest of the guard. Each bar's yardstick is ``np.median`` of the same
    values pandas' rolling median takes (the absolute log returns of the
    EXTREME_LOOKBACK_BARS bars before it, NaN and inf left out as pandas leaves them, none
    when fewer than 20 remain), and a median of the same values is the same float.
    """
    n = len(close)
    first = max(0, n - 1 - CONFIRM_BARS)
    # One bar more than the look-back: the oldest return needed reads the close before it.
    lo = max(0, first - EXTREME_LOOKBACK_BARS - 1)
    logc = np.log(close[lo:])
    prev = np.concatenate([[np.nan], logc[:-1]])
    absret = np.abs(logc - prev)
    logh, logl = np.log(high[lo:]), np.log(low[lo:])
    usable = np.isfinite(absret)
    out: list[tuple[int, float, bool | None]] = []
    for i in range(first - lo, n - lo):
        start = max(0, i - EXTREME_LOOKBACK_BARS)
        values = absret[start:i][usable[start:i]]
        sigma = 1.4826 * np.median(values) if len(values) >= _MIN_PERIODS else np.nan
        move = np.fmax(np.abs(logh[i] - prev[i]), np.abs(logl[i] - prev[i]))
        sigmas = float(move / np.fmax(sigma, MIN_SIGMA))
        if not np.nan_to_num(sigmas, nan=0.0) > EXTREME_SIGMAS:
            continue
        after = logc[i + 1 : i + 1 + CONFIRM_BARS]
        confirmed = (
            bool((np.abs(after - logc[i]) < np.abs(after - prev[i])).all()) if len(after) == CONFIRM_BARS else None
        )
        out.append((lo + i, sigmas, confirmed))
    return out
