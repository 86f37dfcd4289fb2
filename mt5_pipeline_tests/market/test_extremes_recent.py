"""The live guard's few-bar numpy flags say, to the float, what extreme_bars' rolling median says.

unconfirmed_extreme_in computes only the last CONFIRM_BARS + 1 bars' flags (np.median of
each bar's look-back); extreme_bars (the batch check) keeps pandas' rolling median over
the whole window. The reference below is the guard as it was, on extreme_bars: over many
windows (quiet and wild markets, flat ones under the MIN_SIGMA floor, short ones around
the 20 returns the yardstick needs, NaN and zero closes, spikes confirmed, refuted and
still waiting) both must give the same answer, from a frame and from numpy columns.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd

from mt5_pipeline.market.extremes import (
    CONFIRM_BARS,
    EXTREME_CHECK_WINDOW,
    _recent_flags,
    extreme_bars,
    unconfirmed_extreme_in,
    window_ends_at,
)

T0 = pd.Timestamp("2024-06-03 09:00", tz="UTC")


def _reference(frame: pd.DataFrame, symbol: str, timeframe: str) -> str | None:
    """unconfirmed_extreme_in before the numpy flags: extreme_bars over the whole frame."""
    if frame.empty:
        return None
    flags = extreme_bars(frame)
    n = len(flags)
    for i in range(max(0, n - 1 - CONFIRM_BARS), n):
        if not flags["extreme"].iloc[i] or flags["confirmed"].iloc[i] is True:
            continue
        when = pd.Timestamp(flags["ts"].iloc[i]).isoformat()
        waiting = n - 1 - i < CONFIRM_BARS
        state = (
            f"waiting for {CONFIRM_BARS - (n - 1 - i)} more bar(s) to confirm its level"
            if waiting
            else f"the {CONFIRM_BARS} bars after it did not hold its level"
        )
        return f"{symbol} {timeframe} bar {when} moved {flags['sigmas'].iloc[i]:.0f} standard deviations: {state}"
    return None


def _window(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """n bars of one of several markets, with a spike among the last bars more often than not."""
    kind = rng.choice(["walk", "quiet", "flat", "wild", "steps"])
    vol = {"walk": 1e-4, "quiet": 2e-6, "flat": 0.0, "wild": 3e-3, "steps": 0.0}[kind]
    close = 1.08 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    if kind == "steps":  # a flat market that moves by ticks now and then
        close = np.round(1.08 + np.cumsum(rng.choice([0, 0, 0, 1e-5, -1e-5], n)), 5)
    if kind != "flat":
        close = np.round(close, 5)
    wick = np.abs(rng.normal(0, max(vol, 1e-6), n))
    high, low = close + wick, close - wick
    spike = rng.integers(max(0, n - 6), n) if n and rng.random() < 0.7 else None
    if spike is not None:
        size = rng.choice([0.001, 0.005, 0.02, 0.05])
        side = 1 if rng.random() < 0.5 else -1
        if rng.random() < 0.5:  # the wick alone
            (high if side > 0 else low)[spike] = close[spike] * (1 + side * size)
        else:  # a level the bars after hold or leave
            hold = rng.random() < 0.5
            shift = 1 + side * size
            close[spike:] = close[spike:] * (shift if hold else 1.0)
            close[spike] = close[spike] * (1.0 if hold else shift)
            high, low = np.fmax(high, close), np.fmin(low, close)
    if n and rng.random() < 0.1:  # a hole or a nonsense price inside the look-back
        bad = rng.integers(0, n)
        close[bad] = np.nan if rng.random() < 0.7 else 0.0
    ts = T0 + pd.to_timedelta(np.arange(n), unit="min")
    return pd.DataFrame({"ts": ts, "high": high, "low": low, "close": close})


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The frame as the live tail hands it: numpy columns, ts in int64 nanoseconds."""
    out = {name: frame[name].to_numpy(dtype=np.float64) for name in ("high", "low", "close")}
    out["ts"] = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    return out


def test_the_guard_on_few_bars_says_what_the_rolling_median_says():
    rng = np.random.default_rng(21)
    sizes = [*range(0, 30), *([EXTREME_CHECK_WINDOW] * 6), 101, 102, 103, 105, 150, 300]
    answers: Counter[str] = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0) and NaN closes, on purpose
        for k in range(2500):
            frame = _window(rng, sizes[k % len(sizes)])
            expected = _reference(frame, "EURUSD", "M1")
            assert unconfirmed_extreme_in(frame, "EURUSD", "M1") == expected, k
            assert unconfirmed_extreme_in(_columns(frame), "EURUSD", "M1") == expected, k
            # The flags themselves, bit for bit: every extreme bar among the last ones, its
            # sigmas and its confirmation.
            flags = extreme_bars(frame)
            first = max(0, len(frame) - 1 - CONFIRM_BARS)
            want = [
                (i, flags["sigmas"].iloc[i], flags["confirmed"].iloc[i])
                for i in range(first, len(frame))
                if flags["extreme"].iloc[i]
            ]
            got = _recent_flags(*(frame[c].to_numpy(dtype=np.float64) for c in ("high", "low", "close")))
            assert [(i, c) for i, _, c in got] == [(i, c) for i, _, c in want], k
            assert np.array_equal([s for _, s, _ in got], [s for _, s, _ in want]), k
            answers["none" if expected is None else expected.split(": ")[-1].split(" ")[0]] += 1
    # Every case was met many times: no hold, waiting, and refuted.
    assert answers["none"] > 200 and answers["waiting"] > 200 and answers["the"] > 100, answers


def test_the_window_end_is_read_the_same_from_a_frame_and_from_columns():
    frame = _window(np.random.default_rng(3), 30)
    last = frame["ts"].iloc[-1].to_pydatetime()
    for bars in (frame, _columns(frame)):
        assert window_ends_at(bars, last)
        assert not window_ends_at(bars, frame["ts"].iloc[-2].to_pydatetime())
    assert not window_ends_at(_columns(frame.iloc[:0]), last) and not window_ends_at(frame.iloc[:0], last)
