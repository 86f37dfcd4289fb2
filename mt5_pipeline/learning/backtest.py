"""Out-of-sample backtest of the model's signals, against random sides at the same times.

Rules, the same as the triple-barrier label's (see ``labels.walk_barriers``):

- a probability for bar t at or above ``SIGNAL_BUY_THRESHOLD`` is a BUY, at or below
  ``SIGNAL_SELL_THRESHOLD`` a SELL; which signals become trades is the execution
  policy's (``execution_policy``, ``ENTRY_POLICY``), the one the bridge and the EA obey:
  by default one open position per symbol and timeframe;
- entry at the open of bar t+1, when the signal can first reach the EA;
- exit at the stop-loss or take-profit (per symbol, in pips), checked against each
  bar's low and high; the stop-loss wins a bar that touches both; else at the close of
  bar t + ``LABEL_MAX_HOLD_BARS`` (the time exit); under ``reverse``, at the open of the
  bar an opposite signal enters at (``opposite_signal``). Trades whose holding window
  runs past the data and hit nothing are left out (their result is unknown), but they
  hold their slot, as they would live;
- the entry bar's spread is paid once: MT5 gives it in points, a tenth of a pip on 5-
  and 3-digit quotes (``pips.point_size``). Candles are bid prices, so a long pays it
  on entry and a short on exit: either way the trade's pips shrink by the spread.

Reported for the model and for a random-side baseline (a fair coin per trade, fixed
seed, same entry bars): trades, hit rate (share with positive net pips), profit factor,
total and average pips, maximum drawdown of the cumulative pips (by exit time), and the
Sharpe ratio of daily P&L (summed by exit day, UTC; annualised with sqrt(252); days
without trades do not count).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mt5_pipeline.execution.execution_policy import EXIT_OPPOSITE, STACK, ExecutionPolicy, select_entries
from mt5_pipeline.figures import equity_axes
from mt5_pipeline.learning.labels import EXIT_NAMES, walk_barriers
from mt5_pipeline.market.pips import PipSizeUnknown, pip_size, pip_size_for, point_size, point_size_for
from mt5_pipeline.settings import Settings

log = logging.getLogger(__name__)

TRADING_DAYS_PER_YEAR = 252
BASELINE_SEED = 12345

_TRADE_COLUMNS = (
    "symbol",
    "signal_ts",
    "entry_ts",
    "exit_ts",
    "side",
    "entry_price",
    "exit_price",
    "gross_pips",
    "cost_pips",
    "pips",
    "exit_reason",
)


@dataclass
class BacktestResult:
    summary: dict  # flat and numeric: model figures, then the baseline's as baseline_*
    trades: pd.DataFrame
    baseline_trades: pd.DataFrame


def simulate_trades(
    candles: pd.DataFrame,
    signal_index: np.ndarray,
    side: np.ndarray,
    *,
    symbol: str,
    sl_pips: float,
    tp_pips: float,
    max_hold: int,
    pip_overrides: Mapping[str, float] | None = None,
    pip: float | None = None,
    point: float | None = None,
    policy: ExecutionPolicy | None = None,
) -> pd.DataFrame:
    """Trades for signals on bars ``signal_index`` (positions in ``candles``, sorted by ts), ``side`` +1/-1,
    under ``policy`` (default: ``stack``, every signal a trade; ``max_hold`` is the time exit either way)."""
    policy = ExecutionPolicy(STACK, max_hold) if policy is None else policy
    order = np.argsort(np.asarray(signal_index, dtype=np.int64), kind="stable")
    signal_index = np.asarray(signal_index, dtype=np.int64)[order]
    side = np.asarray(side, dtype=np.int64)[order]
    n = len(candles)
    keep = signal_index + 1 < n
    signal_index, side = signal_index[keep], side[keep]
    pip = pip_size(symbol, pip_overrides) if pip is None else pip
    open_ = candles["open"].to_numpy(dtype=np.float64)
    close = candles["close"].to_numpy(dtype=np.float64)
    entry = signal_index + 1
    spread_points = candles["spread"].to_numpy(dtype=np.float64) if "spread" in candles.columns else np.zeros(n)
    # The entry bar's spread in price: the terminal fills a BUY at the ask and closes a SELL at the
    # ask, and places the stops from the fill; on bid prices that puts the stop a spread nearer and
    # the target a spread farther, so a stop nets exactly -sl_pips and a target +tp_pips after the
    # spread, as live (docs/trades.md).
    spread = spread_points[entry] * (point_size(symbol, pip_overrides) if point is None else point)
    walk = walk_barriers(
        open_,
        candles["high"].to_numpy(dtype=np.float64),
        candles["low"].to_numpy(dtype=np.float64),
        close,
        entry,
        side,
        sl_distance=np.maximum(sl_pips * pip - spread, 0.0),
        tp_distance=tp_pips * pip + spread,
        max_hold=max_hold,
    )
    # A trade that never exits in the data holds its slot to the end.
    natural_exit = np.where(walk.complete, walk.exit_index, n)
    taken, cut = select_entries(policy, signal_index, side, natural_exit)
    reasons = np.array([EXIT_NAMES[int(r)] for r in walk.reason], dtype=object)
    exit_index, exit_price, complete = walk.exit_index.copy(), walk.exit_price.copy(), walk.complete.copy()
    cut_at = cut >= 0
    exit_index[cut_at] = cut[cut_at]
    exit_price[cut_at] = open_[cut[cut_at]]
    reasons[cut_at] = EXIT_OPPOSITE
    complete[cut_at] = True
    done = taken & complete
    entry, side, signal_index = entry[done], side[done], signal_index[done]
    exit_index, exit_price, reason_names = exit_index[done], exit_price[done], reasons[done]
    entry_price = open_[entry]
    gross = side * (exit_price - entry_price) / pip
    cost = spread[done] / pip
    # A DatetimeIndex, not .to_numpy(): that would make an object array of Timestamps.
    ts = pd.DatetimeIndex(pd.to_datetime(candles["ts"], utc=True))
    return pd.DataFrame(
        {
            "symbol": symbol,
            "signal_ts": ts[signal_index],
            "entry_ts": ts[entry],
            "exit_ts": ts[exit_index],
            "side": np.where(side > 0, "BUY", "SELL"),
            "entry_price": entry_price,
            "exit_price": exit_price,
            "gross_pips": gross,
            "cost_pips": cost,
            "pips": gross - cost,
            "exit_reason": reason_names.astype(str) if len(reason_names) else np.array([], dtype=str),
        },
        columns=list(_TRADE_COLUMNS),
    )


def summarize(trades: pd.DataFrame) -> dict[str, float]:
    """The figures of a set of trades (NaN where a figure is undefined, e.g. no trades)."""
    n = len(trades)
    if n == 0:
        return {
            "trades": 0.0,
            "hit_rate": math.nan,
            "profit_factor": math.nan,
            "total_pips": 0.0,
            "avg_pips": math.nan,
            "max_drawdown_pips": 0.0,
            "sharpe_daily": math.nan,
            "days": 0.0,
        }
    ordered = trades.sort_values("exit_ts", kind="stable")
    pips = ordered["pips"].to_numpy(dtype=np.float64)
    wins, losses = pips[pips > 0].sum(), -pips[pips < 0].sum()
    equity = np.cumsum(pips)
    peak = np.maximum.accumulate(np.concatenate([[0.0], equity]))[1:]
    daily = pd.Series(pips, index=pd.DatetimeIndex(ordered["exit_ts"])).groupby(lambda t: t.date()).sum()
    sd = float(daily.std(ddof=1)) if len(daily) > 1 else math.nan
    sharpe = float(daily.mean()) / sd * math.sqrt(TRADING_DAYS_PER_YEAR) if sd and sd > 0 else math.nan
    return {
        "trades": float(n),
        "hit_rate": float((pips > 0).mean()),
        "profit_factor": float(wins / losses) if losses > 0 else (math.inf if wins > 0 else math.nan),
        "total_pips": float(pips.sum()),
        "avg_pips": float(pips.mean()),
        "max_drawdown_pips": float((peak - equity).max()),
        "sharpe_daily": sharpe,
        "days": float(len(daily)),
    }


def run_backtest(
    candles_by_symbol: Mapping[str, pd.DataFrame],
    predictions: pd.DataFrame,
    settings: Settings,
    *,
    seed: int = BASELINE_SEED,
) -> BacktestResult:
    """Backtest ``predictions`` (columns symbol, ts, probability) on each symbol's candles."""
    rng = np.random.default_rng(seed)
    model_parts, base_parts = [], []
    for symbol in sorted(predictions["symbol"].unique()):
        candles = candles_by_symbol[symbol]
        candles = candles if candles["ts"].is_monotonic_increasing else candles.sort_values("ts", kind="stable")
        candles = candles.reset_index(drop=True)
        rows = predictions[predictions["symbol"] == symbol].sort_values("ts", kind="stable")
        p = rows["probability"].to_numpy(dtype=np.float64)
        side = np.where(p >= settings.signal_buy_threshold, 1, np.where(p <= settings.signal_sell_threshold, -1, 0))
        ts_ns = pd.DatetimeIndex(pd.to_datetime(candles["ts"], utc=True)).as_unit("ns").asi8
        at = np.searchsorted(ts_ns, pd.DatetimeIndex(pd.to_datetime(rows["ts"], utc=True)).as_unit("ns").asi8)
        trade = side != 0
        index, side = at[trade], side[trade]
        sl, tp = settings.sl_tp_pips(symbol)
        try:
            pip, point = pip_size_for(settings, None, symbol), point_size_for(settings, None, symbol)
        except PipSizeUnknown as exc:
            # No stop or target can be placed without a pip: left out, and said so.
            log.warning("backtest: %s left out: %s", symbol, exc)
            continue
        policy = ExecutionPolicy.from_settings(settings)
        common = dict(
            symbol=symbol, sl_pips=sl, tp_pips=tp, max_hold=policy.max_hold_bars, pip=pip, point=point, policy=policy
        )
        model_parts.append(simulate_trades(candles, index, side, **common))
        base_parts.append(simulate_trades(candles, index, rng.choice(np.array([-1, 1]), size=len(index)), **common))
    empty = pd.DataFrame(columns=list(_TRADE_COLUMNS))
    trades = pd.concat(model_parts, ignore_index=True) if model_parts else empty
    baseline = pd.concat(base_parts, ignore_index=True) if base_parts else empty
    summary = summarize(trades)
    summary.update({f"baseline_random_{k}": v for k, v in summarize(baseline).items()})
    return BacktestResult(summary=summary, trades=trades, baseline_trades=baseline)


def plot_equity(result: BacktestResult, path: Path, *, title: str = "rf_m1 out-of-sample backtest") -> Path:
    """Cumulative pips of the model and of the random-side baseline, by exit time, as a PNG."""
    with equity_axes(title, ylabel="cumulative pips (after spread)", xlabel="exit time (UTC)") as (ax, save):
        for trades, label, style in (
            (result.trades, "model", "-"),
            (result.baseline_trades, "random side (baseline)", "--"),
        ):
            if len(trades):
                ordered = trades.sort_values("exit_ts", kind="stable")
                ax.plot(
                    pd.to_datetime(ordered["exit_ts"], utc=True),
                    np.cumsum(ordered["pips"].to_numpy(dtype=float)),
                    style,
                    label=f"{label}: {len(trades)} trades",
                )
            else:
                ax.plot([], [], style, label=f"{label}: no trades")
        return save(path)
