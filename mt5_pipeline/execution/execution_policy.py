"""The execution policy: which signals open a position, and when a position closes.

Decided once, here, for everyone who trades or pretends to: the backtest (and so the
promotion gate) simulates it, the bridge and the MQL5 EA obey it, and the
triple-barrier label describes one of its trades. docs/trades.md explains it for a trader.

Entry (``ENTRY_POLICY``), for a signal on the closed bar t, acted on at the open of bar t+1:

- ``one_per_symbol_timeframe`` (default): open only when no position of this symbol and
  timeframe is open; a signal while one is open (either side) is skipped. Every trade
  taken is then exactly the trade the triple-barrier label describes (held to its SL,
  TP or time exit), risk is one stop-loss per symbol and timeframe, and it is what
  freqtrade does unless stacking is turned on.
- ``stack``: every signal opens a position (up to ``LABEL_MAX_HOLD_BARS`` at once per
  symbol and timeframe: that many stop-losses of risk).
- ``reverse``: like one_per_symbol_timeframe, but a signal of the opposite side closes
  the open position at the open of bar t+1 (exit reason ``opposite_signal``) and opens
  the new one; a signal of the same side keeps the open position (its clock is not reset).

Exit, whatever the entry policy: the stop-loss or take-profit (placed with the order, the
terminal closes at them; the backtest takes the stop-loss when one bar touches both), or
the time exit: at the close of the ``LABEL_MAX_HOLD_BARS``-th bar counted from the entry
bar (the bar whose open the position entered at), performed by the bridge or the EA when
that bar closes. A trader closing a position by hand is ``manual``.

Positions of other timeframes or symbols never interact: the policy is per
(symbol, timeframe), the unit one model's signals are made for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from mt5_pipeline.clock import as_utc
from mt5_pipeline.settings import TIMEFRAME_SECONDS, Settings

ONE_PER_SYMBOL_TIMEFRAME = "one_per_symbol_timeframe"
STACK = "stack"
REVERSE = "reverse"
ENTRY_POLICIES = (ONE_PER_SYMBOL_TIMEFRAME, STACK, REVERSE)

# Why a position closed: the names the trades table, the API and the backtest use.
EXIT_SL, EXIT_TP, EXIT_TIME, EXIT_OPPOSITE, EXIT_MANUAL = "sl", "tp", "time", "opposite_signal", "manual"
EXIT_REASONS = (EXIT_SL, EXIT_TP, EXIT_TIME, EXIT_OPPOSITE, EXIT_MANUAL)

Side = Literal["BUY", "SELL"]


def as_side(value: str) -> Side:
    """``value`` (a signal's side) as a :data:`Side`; ValueError for anything else."""
    if value == "BUY":
        return "BUY"
    if value == "SELL":
        return "SELL"
    raise ValueError(f"side must be BUY or SELL, got {value!r}")


@dataclass(frozen=True)
class ExecutionPolicy:
    entry: str = ONE_PER_SYMBOL_TIMEFRAME
    max_hold_bars: int = 60

    def __post_init__(self) -> None:
        if self.entry not in ENTRY_POLICIES:
            raise ValueError(f"unknown entry policy {self.entry!r}; expected one of {', '.join(ENTRY_POLICIES)}")
        if self.max_hold_bars < 1:
            raise ValueError("max_hold_bars must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> ExecutionPolicy:
        return cls(entry=settings.entry_policy, max_hold_bars=settings.label_max_hold_bars)


def signal_meta(policy: ExecutionPolicy) -> dict[str, object]:
    """What an executor that cannot import this module (the MQL5 EA) needs to obey the
    policy, to travel in the signal's ``meta`` (the EA contract decides where)."""
    return {"entry_policy": policy.entry, "max_hold_bars": policy.max_hold_bars}


@dataclass(frozen=True)
class OpenPosition:
    """A position as the policy needs to know it. ``entry_bar`` is the open time (UTC) of
    the bar the position entered at: the signal's bar + one bar (see :func:`entry_bar`)."""

    ticket: int
    symbol: str
    timeframe: str
    side: Side
    entry_bar: datetime


@dataclass(frozen=True)
class Action:
    """What to do: ``close`` a ticket (with its reason), ``open`` the signal, or ``skip`` it (with why)."""

    kind: Literal["open", "close", "skip"]
    ticket: int | None = None
    reason: str = ""


def entry_bar(signal_bar: datetime, timeframe: str) -> datetime:
    """The bar a signal for ``signal_bar`` (its open time) enters at: the next one."""
    return as_utc(signal_bar) + timedelta(seconds=TIMEFRAME_SECONDS[timeframe])


def decide_entry(
    policy: ExecutionPolicy, symbol: str, timeframe: str, side: Side, open_positions: Iterable[OpenPosition]
) -> list[Action]:
    """What a new signal does given the positions open now (any symbol; only this
    symbol and timeframe count). Closes come before the open, to be executed in order."""
    if side not in ("BUY", "SELL"):
        raise ValueError(f"side must be BUY or SELL, got {side!r}")
    mine = [p for p in open_positions if p.symbol == symbol and p.timeframe == timeframe]
    if policy.entry == STACK or not mine:
        return [Action("open")]
    if policy.entry == ONE_PER_SYMBOL_TIMEFRAME:
        return [Action("skip", reason=f"a {symbol} {timeframe} position is open (ticket {mine[0].ticket})")]
    if all(p.side == side for p in mine):
        return [
            Action("skip", reason=f"a {side} {symbol} {timeframe} position is already open (ticket {mine[0].ticket})")
        ]
    closes = [Action("close", p.ticket, EXIT_OPPOSITE) for p in mine if p.side != side]
    return [*closes, Action("open")]


def bars_held(position: OpenPosition, closed_bar: datetime, bar_times: Sequence[datetime] | None = None) -> int:
    """Bars from the entry bar through ``closed_bar`` (open times), both counted.

    With ``bar_times`` (the series' bar open times, as the terminal has them) the bars
    are counted, as the backtest counts them, across weekends and holidays; without,
    they are counted by the clock, which is the same while the market is open.
    """
    start, end = as_utc(position.entry_bar), as_utc(closed_bar)
    if end < start:
        return 0
    if bar_times is not None:
        return sum(1 for t in bar_times if start <= as_utc(t) <= end)
    return int((end - start).total_seconds() // TIMEFRAME_SECONDS[position.timeframe]) + 1


def due_exits(
    policy: ExecutionPolicy,
    positions: Iterable[OpenPosition],
    closed_bar: datetime,
    *,
    timeframe: str,
    bar_times: Sequence[datetime] | None = None,
) -> list[Action]:
    """Time exits due now that the ``timeframe`` bar opened at ``closed_bar`` has closed:
    close these at its close (the bridge or the EA runs this on every bar close)."""
    return [
        Action("close", p.ticket, EXIT_TIME)
        for p in positions
        if p.timeframe == timeframe and bars_held(p, closed_bar, bar_times) >= policy.max_hold_bars
    ]


def select_entries(
    policy: ExecutionPolicy, signal_index: np.ndarray, side: np.ndarray, exit_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The backtest's form of :func:`decide_entry`, for one symbol and timeframe.

    ``signal_index`` (sorted) and ``side`` are the signals (bar t, +1/-1); ``exit_index``
    the bar each one's trade would exit on if taken and left alone (SL, TP or time; a
    trade never exiting in the data has ``exit_index`` past the end). A trade taken at
    signal t enters at bar t+1 and is open for a later signal s while its exit bar is
    after s (an exit on bar s, by barrier or at its close, happens before s+1 opens).

    Returns (taken, cut): a mask of the signals that open a trade, and for each one the
    bar at whose open it is closed by an opposite signal (``reverse``), else -1.
    """
    m = len(signal_index)
    taken = np.zeros(m, dtype=bool)
    cut = np.full(m, -1, dtype=np.int64)
    if policy.entry == STACK:
        taken[:] = True
        return taken, cut
    current = -1  # index (into the signals) of the open trade
    current_exit = -1
    for i in range(m):
        t = int(signal_index[i])
        if current >= 0 and current_exit > t:
            if policy.entry == ONE_PER_SYMBOL_TIMEFRAME or side[i] == side[current]:
                continue
            cut[current] = t + 1  # closed at the open of the bar the new trade enters at
        taken[i] = True
        current, current_exit = i, int(exit_index[i])
    return taken, cut
