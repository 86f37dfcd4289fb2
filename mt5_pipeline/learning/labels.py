"""What the model learns to predict: the label of each bar, and the barrier walk the backtest shares.

Two modes (``LABEL_MODE``):

- ``horizon`` (default): 1 when the close ``LABEL_HORIZON_BARS`` bars ahead is above the
  close now, else 0 (a tie is 0). The default, 5 bars (5 minutes on M1), is a move that
  is usually larger than the spread yet near enough for one bar's features to say
  something about it.
- ``triple_barrier``: the trade the EA would place. A long enters at the next bar's open
  (``open[t+1]``, when a signal for bar t can reach the EA, as in the backtest); over
  bars t+1 .. t+``LABEL_MAX_HOLD_BARS`` its stop-loss ``sl_pips`` below and take-profit
  ``tp_pips`` above are checked against each bar's low and high. Label 1 if the
  take-profit is touched first, 0 if the stop-loss is; when both fall in one bar the
  stop-loss counts (a bar does not say which came first, and assuming the worse is the
  honest choice). If neither is touched the trade closes at the last bar's close and
  the label is 1 when that close is above the entry: the sign of what the trade made.
  Spread is left out of the label (it asks where the price went) and paid in the backtest.

Windows count bars, not minutes, like the features. The last bars of a symbol, whose
window runs past the data, get no label (NaN) and are not trained on; ``label_end``
gives, for every bar, the index of the last bar its label reads, so a time split can
purge the training rows whose labels reach into the evaluation part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mt5_pipeline.execution import execution_policy
from mt5_pipeline.market.pips import PipSizeUnknown, pip_size_for
from mt5_pipeline.settings import Settings

LABEL_MODES = ("horizon", "triple_barrier")

# Exit reasons of a barrier walk, named as the execution policy names them (the label's
# trade is one trade of that policy: same barriers, same time exit).
EXIT_SL, EXIT_TP, EXIT_TIMEOUT = 0, 1, 2
EXIT_NAMES = {
    EXIT_SL: execution_policy.EXIT_SL,
    EXIT_TP: execution_policy.EXIT_TP,
    EXIT_TIMEOUT: execution_policy.EXIT_TIME,
}

# Comparisons with a level allow this much rounding (prices like 1.1 + 0.004 are not exact).
_TOUCH_TOLERANCE = 1e-9
# Bars x holding steps per chunk of the vectorised walk (about 64 MB of booleans and floats).
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class LabelSpec:
    """Everything a label of one symbol depends on."""

    mode: str
    horizon_bars: int
    max_hold_bars: int
    sl_pips: float
    tp_pips: float
    pip: float

    @property
    def lookahead_bars(self) -> int:
        """Bars after t that the label of bar t reads: the embargo a time split needs."""
        return self.horizon_bars if self.mode == "horizon" else self.max_hold_bars

    @classmethod
    def from_settings(cls, settings: Settings, symbol: str) -> LabelSpec:
        sl, tp = settings.sl_tp_pips(symbol)
        try:
            pip = pip_size_for(settings, None, symbol)
        except PipSizeUnknown:
            if settings.label_mode == "triple_barrier":
                raise  # barriers in pips need a pip: never the FX one for gold
            pip = math.nan  # horizon labels compare closes; no pip is used
        return cls(
            mode=settings.label_mode,
            horizon_bars=settings.label_horizon_bars,
            max_hold_bars=settings.label_max_hold_bars,
            sl_pips=float(sl),
            tp_pips=float(tp),
            pip=pip,
        )


def lookahead_bars(settings: Settings) -> int:
    """The longest look-ahead of any label under these settings (the minimum embargo)."""
    return settings.label_horizon_bars if settings.label_mode == "horizon" else settings.label_max_hold_bars


@dataclass(frozen=True)
class BarrierWalk:
    """Outcome of trades entered at ``open[entry]``; arrays aligned with the entries."""

    exit_index: np.ndarray  # bar index of the exit
    exit_price: np.ndarray
    reason: np.ndarray  # EXIT_SL / EXIT_TP / EXIT_TIMEOUT
    complete: np.ndarray  # False when the holding window ran past the data and no barrier was hit


def walk_barriers(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    entry: np.ndarray,
    side: np.ndarray,
    *,
    sl_distance: float | np.ndarray,
    tp_distance: float | np.ndarray,
    max_hold: int,
) -> BarrierWalk:
    """Walk trades entered at ``open[entry]`` with ``side`` +1 (long) or -1 (short).

    Bars ``entry`` .. ``entry + max_hold - 1`` are checked against the stop and the target
    (distances in price units); the stop wins a bar that touches both; a trade that
    touches neither exits at the close of its last bar. Prices are bid prices; the
    caller pays the spread.
    """
    n = len(close)
    entry = np.asarray(entry, dtype=np.int64)
    side = np.asarray(side, dtype=np.int64)
    m = len(entry)
    sl_distance = np.broadcast_to(np.asarray(sl_distance, dtype=np.float64), (m,))
    tp_distance = np.broadcast_to(np.asarray(tp_distance, dtype=np.float64), (m,))
    exit_index = np.zeros(m, dtype=np.int64)
    exit_price = np.full(m, np.nan)
    reason = np.full(m, EXIT_TIMEOUT, dtype=np.int8)
    complete = np.zeros(m, dtype=bool)
    if m == 0:
        return BarrierWalk(exit_index, exit_price, reason, complete)
    if max_hold < 1:
        raise ValueError("max_hold must be at least 1 bar")

    steps = np.arange(max_hold, dtype=np.int64)
    chunk = max(1, _CHUNK_CELLS // max_hold)
    for lo in range(0, m, chunk):
        sl_ = slice(lo, min(m, lo + chunk))
        e = entry[sl_]
        s = side[sl_]
        price = open_[e]
        idx = e[:, None] + steps[None, :]
        in_data = idx < n
        idx_c = np.minimum(idx, n - 1)
        h = high[idx_c]
        lw = low[idx_c]
        long_ = (s > 0)[:, None]
        stop = np.where(s > 0, price - sl_distance[sl_], price + sl_distance[sl_])[:, None]
        target = np.where(s > 0, price + tp_distance[sl_], price - tp_distance[sl_])[:, None]
        stop_hit = np.where(long_, lw <= stop + _TOUCH_TOLERANCE, h >= stop - _TOUCH_TOLERANCE) & in_data
        target_hit = np.where(long_, h >= target - _TOUCH_TOLERANCE, lw <= target + _TOUCH_TOLERANCE) & in_data
        first_stop = np.where(stop_hit.any(axis=1), stop_hit.argmax(axis=1), max_hold)
        first_target = np.where(target_hit.any(axis=1), target_hit.argmax(axis=1), max_hold)

        last = e + max_hold - 1
        full_window = last < n
        r = np.full(len(e), EXIT_TIMEOUT, dtype=np.int8)
        k = np.full(len(e), max_hold - 1, dtype=np.int64)
        by_stop = (first_stop < max_hold) & (first_stop <= first_target)
        by_target = (first_target < max_hold) & ~by_stop
        r[by_stop] = EXIT_SL
        r[by_target] = EXIT_TP
        k[by_stop] = first_stop[by_stop]
        k[by_target] = first_target[by_target]
        px = close[np.minimum(last, n - 1)].astype(np.float64)
        px = np.where(by_stop, stop[:, 0], px)
        px = np.where(by_target, target[:, 0], px)

        exit_index[sl_] = e + k
        exit_price[sl_] = px
        reason[sl_] = r
        complete[sl_] = full_window | by_stop | by_target
    return BarrierWalk(exit_index, exit_price, reason, complete)


def horizon_labels(close: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 where ``close[t + horizon] > close[t]``, 0.0 where not, NaN for the last ``horizon`` bars."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full(len(close), np.nan)
    if len(close) > horizon:
        out[:-horizon] = (close[horizon:] > close[:-horizon]).astype(np.float64)
    return out


def triple_barrier_labels(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    *,
    sl_distance: float,
    tp_distance: float,
    max_hold: int,
) -> np.ndarray:
    """Label of a long entered at ``open[t+1]`` (see the module docstring); NaN for the last ``max_hold`` bars."""
    n = len(close)
    out = np.full(n, np.nan)
    labelled = max(0, n - max_hold)
    if labelled == 0:
        return out
    entry = np.arange(1, labelled + 1)
    walk = walk_barriers(
        np.asarray(open_, dtype=np.float64),
        np.asarray(high, dtype=np.float64),
        np.asarray(low, dtype=np.float64),
        np.asarray(close, dtype=np.float64),
        entry,
        np.ones(labelled, dtype=np.int64),
        sl_distance=sl_distance,
        tp_distance=tp_distance,
        max_hold=max_hold,
    )
    win = np.where(
        walk.reason == EXIT_TP,
        1.0,
        np.where(walk.reason == EXIT_SL, 0.0, (walk.exit_price > open_[entry] + _TOUCH_TOLERANCE).astype(np.float64)),
    )
    out[:labelled] = win
    return out


def make_labels(candles: pd.DataFrame, spec: LabelSpec) -> pd.DataFrame:
    """Labels of one symbol's candles (sorted by ``ts``): ``ts``, ``label`` (1/0/NaN), ``label_end_ts``.

    ``label_end_ts`` is the open time of the last bar the label reads (NaT when unlabelled).
    """
    frame = candles if candles["ts"].is_monotonic_increasing else candles.sort_values("ts", kind="stable")
    ts = pd.to_datetime(frame["ts"], utc=True).reset_index(drop=True)
    close = frame["close"].to_numpy(dtype=np.float64)
    if spec.mode == "horizon":
        label = horizon_labels(close, spec.horizon_bars)
    elif spec.mode == "triple_barrier":
        label = triple_barrier_labels(
            frame["open"].to_numpy(dtype=np.float64),
            frame["high"].to_numpy(dtype=np.float64),
            frame["low"].to_numpy(dtype=np.float64),
            close,
            sl_distance=spec.sl_pips * spec.pip,
            tp_distance=spec.tp_pips * spec.pip,
            max_hold=spec.max_hold_bars,
        )
    else:
        raise ValueError(f"unknown label mode {spec.mode!r}; expected one of {LABEL_MODES}")
    return pd.DataFrame({"ts": ts, "label": label, "label_end_ts": ts.shift(-spec.lookahead_bars)})
