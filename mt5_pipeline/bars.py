"""When a bar is data: the closed-bar rule, written once.

MT5 stamps a bar with its OPEN time. A bar is closed once ``open + timeframe <= now``,
or once a later bar of the same series exists (the EA has moved on, whatever our clock
says). Until then it is still forming: it may be stored (an EA may send it, then its
final version), but no feature row used for a decision, no label and no signal ever
comes from it. Features, training, the live worker and the API all ask this module.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.settings import TIMEFRAME_SECONDS

# Bar times are whole seconds; "before a bar" is a microsecond earlier.
_TICK = timedelta(microseconds=1)


def bar_length(timeframe: str) -> timedelta:
    return timedelta(seconds=TIMEFRAME_SECONDS[timeframe])


def bar_close(bar_open: datetime, timeframe: str) -> datetime:
    """The moment the bar stops forming (its open time plus one timeframe)."""
    return as_utc(bar_open) + bar_length(timeframe)


def closed_cutoff(timeframe: str, *, now: datetime | None = None, newest_open: datetime | None = None) -> datetime:
    """The newest open time a closed bar can have: every bar with ``ts <= cutoff`` is closed.

    ``newest_open`` is the series' newest stored bar: every bar before it is closed even if
    our clock lags the EA's.
    """
    cutoff = resolve_now(now) - bar_length(timeframe)
    if newest_open is not None:
        cutoff = max(cutoff, as_utc(newest_open) - _TICK)
    return cutoff


def is_closed(bar_open: datetime, timeframe: str, *, now: datetime | None = None, newest_open: datetime | None = None) -> bool:
    return as_utc(bar_open) <= closed_cutoff(timeframe, now=now, newest_open=newest_open)


def newest_closed(opens: list[datetime], timeframe: str, *, now: datetime | None = None) -> datetime | None:
    """The newest closed bar among a series' newest bars (any order; two are enough)."""
    if not opens:
        return None
    ordered = sorted(as_utc(t) for t in opens)
    cutoff = closed_cutoff(timeframe, now=now, newest_open=ordered[-1])
    closed = [t for t in ordered if t <= cutoff]
    return closed[-1] if closed else None


def closed_only(bars: pd.DataFrame, timeframe: str, *, now: datetime | None = None, column: str = "ts") -> pd.DataFrame:
    """The closed bars of one series' frame (sorted or not), dropping the forming one."""
    if bars.empty:
        return bars
    ts = pd.to_datetime(bars[column], utc=True)
    cutoff = closed_cutoff(timeframe, now=now, newest_open=ts.max().to_pydatetime())
    keep = ts <= pd.Timestamp(cutoff)
    return bars if bool(keep.all()) else bars[keep.to_numpy()].reset_index(drop=True)
