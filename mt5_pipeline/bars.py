"""When a bar is data: the closed-bar rule, written once.

MT5 stamps a bar with its OPEN time. A bar is closed once ``open + timeframe <= now``,
or once a later bar of the same series exists (the EA has moved on, whatever our clock
says). Until then it is still forming: it may be stored (an EA may send it, then its
final version), but no feature row used for a decision, no label and no signal ever
comes from it. Features, training, the live worker and the API all ask this module.

A closed bar is *ready* to be decided (:func:`ready_among`; read from the database by
:func:`mt5_pipeline.storage.candles.ready_bar`) once its final version is in: a
later bar of the series exists, the EA posted it after its close (its ``ingested_at`` is
past the close, or the live worker's NOTIFY said so), or LIVE_CLOSE_GRACE_SECONDS after
its close have passed (an EA that only sends the forming bar: its last forming version
is then the bar). Until then the bar before it is the one to decide. The live worker,
``generate_signal`` (the API, the Dagster predict path) all decide the ready bar, so
none can lock in a signal (one per bar) from a forming version its final one would change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.settings import TIMEFRAME_SECONDS

# Bar times are whole seconds; "before a bar" is a microsecond earlier.
_TICK = timedelta(microseconds=1)


# An MN1 bar opens on the 1st at 00:00 of the broker's clock, which runs between UTC-12
# and UTC+14: its UTC open lies between the 1st - 14 h and the 1st + 12 h, so the month
# is the one of (open + 14 h), and the broker's offset is the 1st's midnight minus the open.
_MONTH_SLACK = timedelta(hours=14)


def _month_start(t: datetime) -> datetime:
    """Midnight UTC of the 1st of the month an MN1 bar opening at `t` (UTC) belongs to."""
    u = as_utc(t) + _MONTH_SLACK
    return u.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(first: datetime) -> datetime:
    return (first + timedelta(days=32)).replace(day=1)


def bar_length(timeframe: str, bar_open: datetime | None = None) -> timedelta:
    """A timeframe's length; MN1 is the calendar month of `bar_open` (28 to 31 days;
    without an open, the shortest: 28 days, so "closed by the clock" is never too early
    where callers use it as a lower bound). W1 is seven days from the broker's Sunday."""
    if timeframe == "MN1":
        if bar_open is None:
            return timedelta(days=28)
        first = _month_start(bar_open)
        return _next_month(first) - first
    return timedelta(seconds=TIMEFRAME_SECONDS[timeframe])


def bar_close(bar_open: datetime, timeframe: str) -> datetime:
    """The moment the bar stops forming: its open time plus one bar (MN1: the next month's
    1st at the broker's midnight, at the offset the bar opened with; a daylight-saving
    change inside the month moves the true close by that hour)."""
    return as_utc(bar_open) + bar_length(timeframe, bar_open)


def _mn1_cutoff(at: datetime) -> datetime:
    """The newest MN1 open whose calendar month has run out by `at`."""
    best = None
    first = _month_start(at)
    for _ in range(3):
        lo = first - _MONTH_SLACK  # opens of this month lie in [lo, hi)
        hi = _next_month(first) - _MONTH_SLACK
        cutoff = min(hi - _TICK, at - (_next_month(first) - first))
        if cutoff >= lo:
            best = cutoff if best is None else max(best, cutoff)
        first = (first - timedelta(days=1)).replace(day=1)
    return best if best is not None else at - timedelta(days=62)


def closed_cutoff(timeframe: str, *, now: datetime | None = None, newest_open: datetime | None = None) -> datetime:
    """The newest open time a closed bar can have: every bar with ``ts <= cutoff`` is closed.

    ``newest_open`` is the series' newest stored bar: every bar before it is closed even if
    our clock lags the EA's.
    """
    at = resolve_now(now)
    cutoff = _mn1_cutoff(at) if timeframe == "MN1" else at - bar_length(timeframe)
    if newest_open is not None:
        cutoff = max(cutoff, as_utc(newest_open) - _TICK)
    return cutoff


def is_closed(
    bar_open: datetime, timeframe: str, *, now: datetime | None = None, newest_open: datetime | None = None
) -> bool:
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


@dataclass(frozen=True)
class Ready:
    """The bar to decide now (None: none), and the closed bar waiting for its final version."""

    bar: datetime | None
    stored: bool  # the series has bars at all
    waiting: datetime | None = None  # closed by the clock, final version not in yet
    until: datetime | None = None  # when the grace for `waiting` runs out


def ready_among(
    newest: tuple[datetime, datetime] | None,
    previous: datetime | None,
    timeframe: str,
    *,
    grace_seconds: float,
    now: datetime | None = None,
    final: datetime | None = None,
) -> Ready:
    """The rule, on the series' newest bar (open, ingested_at) and the open of the one before."""
    if newest is None:
        return Ready(None, False)
    at = resolve_now(now)
    newest_open, stamp = as_utc(newest[0]), as_utc(newest[1])
    close = bar_close(newest_open, timeframe)
    waiting = until = None
    if close <= at:
        sent_closed = stamp >= close or (final is not None and as_utc(final) >= newest_open)
        until = close + timedelta(seconds=grace_seconds)
        if sent_closed or at >= until:
            return Ready(newest_open, True)
        waiting = newest_open
    # The newest bar is forming (or its final version may still come): the one before it
    # is closed and final, since a later bar exists.
    return Ready(None if previous is None else as_utc(previous), True, waiting, until)
