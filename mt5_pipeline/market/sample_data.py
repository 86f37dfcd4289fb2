"""Generated M1 candles for the demo, tests and benchmarks — clearly not market data.

A random walk with volatility clusters, an intraday volatility cycle, FX weekends and
a weak short-term momentum, so that a model has something faint to find. Every bar is
valid MqlRates (high >= max(open, close), low <= min(open, close), spread in points).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from mt5_pipeline.clock import utcnow

SAMPLE_LABEL = "generated sample (synthetic random walk, not market data)"


def _is_fx_open(ts: pd.DatetimeIndex) -> np.ndarray:
    """FX trades from Sunday 22:00 to Friday 22:00 UTC."""
    dow, hour = ts.day_of_week.to_numpy(), ts.hour.to_numpy()
    closed = (dow == 5) | ((dow == 4) & (hour >= 22)) | ((dow == 6) & (hour < 22))
    return ~closed


def generate_candles(
    n: int,
    *,
    end: datetime | None = None,
    start_price: float = 1.08,
    seed: int = 0,
    momentum: float = 0.08,
    with_weekends: bool = True,
    digits: int = 5,
) -> pd.DataFrame:
    """`n` consecutive M1 bars whose last bar opens at `end` (default: the current minute).

    Columns: time (datetime64[ns, UTC]), open, high, low, close, tick_volume, spread,
    real_volume — the names the ingest core and POST /ingest take.
    """
    rng = np.random.default_rng(seed)
    end = (end or utcnow()).replace(second=0, microsecond=0)
    # Generate enough minutes to leave n open-market bars after removing weekends.
    span = int(n * (1.45 if with_weekends else 1.0)) + 3000
    minutes = pd.date_range(end=pd.Timestamp(end), periods=span, freq="min", tz="UTC")
    if with_weekends:
        minutes = minutes[_is_fx_open(minutes)]
    ts = minutes[-n:]

    hours = ts.hour.to_numpy()
    session = 0.6 + 0.8 * np.exp(-(((hours - 14) % 24) ** 2) / 18.0)  # busiest around London/NY overlap
    # Volatility clusters: a slowly mean-reverting log-vol.
    log_vol = np.zeros(n)
    shocks = rng.normal(0, 0.05, n)
    for i in range(1, n):
        log_vol[i] = 0.995 * log_vol[i - 1] + shocks[i]
    sigma = 0.00012 * session * np.exp(log_vol)
    noise = rng.standard_normal(n) * sigma
    returns = np.empty(n)
    returns[0] = noise[0]
    for i in range(1, n):
        returns[i] = momentum * returns[i - 1] + noise[i]
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.empty(n)
    open_[0] = start_price
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0, 1, (2, n))) * sigma * close * 0.6
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    scale = 10**digits
    open_, high, low, close = (np.round(a * scale) / scale for a in (open_, high, low, close))
    high = np.maximum.reduce([high, open_, close])
    low = np.minimum.reduce([low, open_, close])
    tick_volume = np.maximum(1, rng.poisson(60 * session * np.exp(log_vol))).astype(np.int64)
    spread = rng.integers(1, 4, n).astype(np.int64)  # points: 0.1-0.3 pips on a 5-digit quote
    return pd.DataFrame(
        {
            "time": ts,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "tick_volume": tick_volume,
            "spread": spread,
            "real_volume": np.zeros(n, dtype=np.int64),
        }
    )


def open_minutes(start: datetime, end: datetime, *, with_weekends: bool = True) -> int:
    """How many M1 bars open after `start` up to and including `end`."""
    if end <= start:
        return 0
    minutes = pd.date_range(start=pd.Timestamp(start) + pd.Timedelta(minutes=1), end=pd.Timestamp(end), freq="min")
    return int(_is_fx_open(minutes).sum()) if with_weekends else len(minutes)


def to_ingest_payload(frame: pd.DataFrame) -> list[dict]:
    """Rows as POST /ingest candles (time as epoch seconds, as an MQL5 EA sends MqlRates)."""
    out = frame.copy()
    if out["time"].dtype.kind == "M":
        # pandas 3 may hold microseconds, not nanoseconds: divide by a Timedelta, not 10**9.
        out["time"] = (out["time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return out.to_dict(orient="records")


def minutes_ago(n: int) -> datetime:
    return (utcnow() - timedelta(minutes=n)).replace(second=0, microsecond=0)
