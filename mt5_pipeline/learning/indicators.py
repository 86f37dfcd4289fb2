"""The features of each bar, as pure functions of a series' candles (no database here).

What the model sees is scale-free, so a forest trained on 2017 prices means the same on
2024 prices (and on every symbol at once):

- ``ret_1``, ``ret_5``, ``ret_10``: log returns of the close over 1, 5 and 10 bars;
- ``ma_N_ratio`` = ma_N / close - 1 for the simple moving averages of the close over 5, 10, 20, 50 bars;
- ``std_5``, ``std_10``, ``std_20``: rolling standard deviation (ddof=1) of the 1-bar log returns;
- ``rsi_14``: Wilder's RSI (EWM with alpha = 1/14, not adjusted; 100 when there were no losses, 50 when flat);
- ``vol_ratio`` = tick_volume / EMA20(tick_volume) (span 20, not adjusted; 1 when the EMA is 0);
- ``range_ratio`` = (high - low) / close;
- ``hour`` and ``dow`` (Monday = 0) of the bar's open time in UTC: FX sessions.

The table also keeps raw levels for people to read (``close``, ``ma_5`` .. ``ma_50``,
``volume_ema_20``); the model does not use them.

Rules, each tested:

- **No look-ahead.** Every feature of bar t uses bars <= t only (rolling windows and
  recursions run forward; nothing is centred or back-filled).
- **Gaps.** Windows count bars, not clock minutes: a weekend is simply the step from
  Friday's last bar to Monday's first. A gap longer than ``GAP_LIMIT_BARS`` bar lengths
  (10 minutes on M1) sets ``after_gap`` on the first bar after it and the next
  ``AFTER_GAP_BARS - 1`` bars, while the 10-bar returns and deviations still span the
  gap. The flag is for people and filters; such rows stay usable (Monday's open is a real
  market the model must handle).
- **Warm-up.** A row is ``usable`` when at least ``WARMUP_BARS`` bars of the symbol's
  history precede it and every feature is finite. After 300 bars the seed of Wilder's
  RSI weighs (13/14)^300 = 2e-10 and that of the volume EMA less, so usable rows do not
  depend on where the history starts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from mt5_pipeline.settings import TIMEFRAME_SECONDS
from mt5_pipeline.storage.schema import FEATURE_COLUMNS, RAW_LEVEL_COLUMNS

FEATURE_SET_NAME = "features_m1"
# Bump whenever a formula changes: a model records the version it was trained on and
# refuses features of another.
FEATURE_SET_VERSION = "1"
MODEL_FEATURES: tuple[str, ...] = tuple(FEATURE_COLUMNS)

WARMUP_BARS = 300
GAP_LIMIT_BARS = 10
AFTER_GAP_BARS = 10

MA_WINDOWS = (5, 10, 20, 50)
RETURN_BARS = (1, 5, 10)
STD_WINDOWS = (5, 10, 20)
RSI_BARS = 14
VOLUME_EMA_SPAN = 20

FLOAT_COLUMNS: tuple[str, ...] = (*RAW_LEVEL_COLUMNS, *FEATURE_COLUMNS)
OUTPUT_COLUMNS: tuple[str, ...] = ("ts", *FLOAT_COLUMNS, "after_gap", "usable")

assert max(MA_WINDOWS) < WARMUP_BARS


def _ewm(values: np.ndarray, *, alpha: float) -> np.ndarray:
    """EWM with adjust=False seeded with the first value (pandas' definition), as a linear filter."""
    if len(values) == 0:
        return values.astype(np.float64)
    y, _ = lfilter([alpha], [1.0, alpha - 1.0], values, zi=[(1.0 - alpha) * values[0]])
    return y


def _window_sums(csum: np.ndarray, window: int, lo: int = 0) -> np.ndarray:
    """Sum of each trailing window of ``window`` values, for the values from index ``lo``
    on, from their cumulative sum ``csum``; NaN until the window is full.

    Differences of one cumulative sum: each window costs O(1) whatever its length, and
    one cumulative sum serves every window length. The rounding error grows with the
    running total, so callers centre their values first.
    """
    n = len(csum)
    out = np.full(n - lo, np.nan)
    if n >= window:
        if lo <= window - 1:
            out[window - 1 - lo] = csum[window - 1]
        start = max(lo, window)
        out[start - lo :] = csum[start:] - csum[start - window : n - window]
    return out


def _moving_averages(close: np.ndarray, lo: int) -> dict[int, np.ndarray]:
    """Simple moving averages of the close over MA_WINDOWS, for the bars from ``lo`` on."""
    ref = close[0] if len(close) else 0.0
    csum = np.cumsum(close - ref)
    return {w: _window_sums(csum, w, lo) / w + ref for w in MA_WINDOWS}


def _deviations(values: np.ndarray, lo: int) -> dict[int, np.ndarray]:
    """Sample standard deviations (ddof=1) over STD_WINDOWS trailing windows, for the
    values from ``lo`` on; ``values[0]`` may be NaN."""
    x = np.nan_to_num(values, nan=0.0)
    c1, c2 = np.cumsum(x), np.cumsum(x * x)
    out = {}
    for window in STD_WINDOWS:
        s1 = _window_sums(c1, window, lo)
        s2 = _window_sums(c2, window, lo)
        var = np.maximum((s2 - s1 * s1 / window) / (window - 1), 0.0)
        std = np.sqrt(var)
        # The first value has no return (NaN): windows that include it are not full.
        std[: max(0, min(window, len(values)) - lo)] = np.nan
        out[window] = std
    return out


def _shift(values: np.ndarray, bars: int) -> np.ndarray:
    out = np.empty_like(values)
    out[:bars] = np.nan
    out[bars:] = values[:-bars]
    return out


def wilder_rsi(close: np.ndarray, bars: int = RSI_BARS, *, lo: int = 0) -> np.ndarray:
    """Wilder's RSI (of the bars from ``lo`` on); the first bar's change counts as 0 (as in the ``ta`` library)."""
    delta = np.diff(close, prepend=close[:1])
    gain = _ewm(np.where(delta > 0, delta, 0.0), alpha=1.0 / bars)[lo:]
    loss = _ewm(np.where(delta < 0, -delta, 0.0), alpha=1.0 / bars)[lo:]
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = 100.0 - 100.0 / (1.0 + gain / loss)
    # No losses in the memory of the average: the RSI's limit is 100; a flat market 50.
    rsi = np.where(loss == 0, np.where(gain == 0, 50.0, 100.0), rsi)
    return rsi


def _gap_starts(ns: np.ndarray, timeframe: str) -> np.ndarray:
    """1 on each bar that follows a gap longer than GAP_LIMIT_BARS bars (``ns``: open times, int64 ns)."""
    limit_ns = GAP_LIMIT_BARS * TIMEFRAME_SECONDS[timeframe] * 1_000_000_000
    starts = np.zeros(len(ns), dtype=np.int64)
    if len(ns) > 1:
        starts[1:] = np.diff(ns) > limit_ns
    return starts


def _window_any(flags: np.ndarray) -> np.ndarray:
    seen = np.cumsum(flags)
    before = np.zeros_like(seen)
    before[AFTER_GAP_BARS:] = seen[:-AFTER_GAP_BARS]
    return (seen - before) > 0


def after_gap_flags(ts: pd.Series, timeframe: str = "M1") -> np.ndarray:
    """True on the first ``AFTER_GAP_BARS`` bars after a gap longer than ``GAP_LIMIT_BARS`` bars."""
    return _window_any(_gap_starts(pd.DatetimeIndex(ts).as_unit("ns").asi8, timeframe))


def _empty_output(with_source: bool) -> pd.DataFrame:
    result = pd.DataFrame({c: pd.Series(dtype="float64") for c in OUTPUT_COLUMNS})
    result["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    result["after_gap"] = pd.Series(dtype=bool)
    result["usable"] = pd.Series(dtype=bool)
    if with_source:
        result["source_ingested_at"] = pd.Series(dtype="datetime64[ns, UTC]")
    return result


def feature_block(
    ts_ns: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    timeframe: str = "M1",
    last: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features of the last ``last`` bars (all with None) of one series' bars, sorted by
    open time (``ts_ns``: int64 ns since the epoch, UTC; the rest float64): (the
    FLOAT_COLUMNS as one Fortran-ordered float64 matrix, after_gap, usable).

    The batch (:func:`compute_features`) and the live worker's one new row
    (:mod:`mt5_pipeline.signals.series_tail`) are both this function, in numpy without a
    frame, so they agree bit for bit. A new row is not updated from a running state: the
    batch's own value for a bar depends on where its window starts (the two EWMs are
    seeded with the window's first value; the rolling sums are differences of one
    cumulative sum centred on the window's first close), so a running state would differ
    from it in the last bits. Their cumulative sums and recursions run over the window (a
    few microseconds each for 500 bars), one cumulative sum per input shared by every
    window length; the log over the window too (one ``np.log`` call whatever its length);
    everything else only on the rows wanted.
    """
    n = len(close)
    k = n if last is None else max(0, min(last, n))
    lo = n - k
    matrix = np.empty((k, len(FLOAT_COLUMNS)), order="F")
    out = {c: matrix[:, i] for i, c in enumerate(FLOAT_COLUMNS)}
    close_k = close[lo:]
    out["close"][:] = close_k
    for w, values in _moving_averages(close, lo).items():
        out[f"ma_{w}"][:] = values
    volume_ema = out["volume_ema_20"]
    volume_ema[:] = _ewm(volume, alpha=2.0 / (VOLUME_EMA_SPAN + 1))[lo:]

    log_close = np.log(close)
    ret_1 = log_close - _shift(log_close, 1)
    for r in RETURN_BARS:
        out[f"ret_{r}"][:] = (ret_1 if r == 1 else log_close - _shift(log_close, r))[lo:]
    for w in MA_WINDOWS:
        np.divide(out[f"ma_{w}"], close_k, out=out[f"ma_{w}_ratio"])
        out[f"ma_{w}_ratio"] -= 1.0
    for w, values in _deviations(ret_1, lo).items():
        out[f"std_{w}"][:] = values
    out["rsi_14"][:] = wilder_rsi(close, lo=lo)
    volume_k = volume[lo:]
    with np.errstate(divide="ignore", invalid="ignore"):
        # A symbol without tick volume (some CSV exports) reads as always-normal volume.
        out["vol_ratio"][:] = np.where(volume_ema > 0, volume_k / volume_ema, 1.0)
    out["range_ratio"][:] = (high[lo:] - low[lo:]) / close_k
    seconds = ts_ns[lo:] // 1_000_000_000
    out["hour"][:] = (seconds // 3600) % 24
    out["dow"][:] = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0

    usable = np.arange(lo, n) >= WARMUP_BARS
    usable &= np.isfinite(matrix[:, len(RAW_LEVEL_COLUMNS) :]).all(axis=1)
    # The flag of a bar looks back AFTER_GAP_BARS bars (and each of those at its predecessor).
    after_gap = _window_any(_gap_starts(ts_ns[max(0, lo - AFTER_GAP_BARS) :], timeframe))[-k:] if k else usable
    return matrix, after_gap, usable


def compute_features(candles: pd.DataFrame, *, timeframe: str = "M1") -> pd.DataFrame:
    """Features of one symbol's candles (any order; one row per ``ts``).

    Reads ``ts``, ``high``, ``low``, ``close``, ``tick_volume``. Returns a frame with a
    RangeIndex: ``ts`` + the raw levels + the features + ``after_gap`` + ``usable``, plus
    ``source_ingested_at`` when the input has ``ingested_at``. ``usable`` takes the first
    row to be the first bar of the symbol's history.
    """
    with_source = "ingested_at" in candles.columns
    if len(candles) == 0:
        return _empty_output(with_source)
    frame = candles if candles["ts"].is_monotonic_increasing else candles.sort_values("ts", kind="stable")
    ts = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("ns").reset_index(drop=True)
    matrix, after_gap, usable = feature_block(
        pd.DatetimeIndex(ts).asi8,
        frame["high"].to_numpy(dtype=np.float64),
        frame["low"].to_numpy(dtype=np.float64),
        frame["close"].to_numpy(dtype=np.float64),
        frame["tick_volume"].to_numpy(dtype=np.float64),
        timeframe=timeframe,
    )
    result = pd.DataFrame(matrix, columns=list(FLOAT_COLUMNS), copy=False)
    result.insert(0, "ts", ts)
    result["after_gap"] = after_gap
    result["usable"] = usable
    if with_source:
        result["source_ingested_at"] = pd.to_datetime(frame["ingested_at"], utc=True).dt.as_unit("ns").array
    return result
