"""What the signals earned live, per timeframe and model version, beside what the same
model's backtest promised (docs/trades.md).

The live figures are the backtest's own (``backtest.summarize``) computed on the closed
trades reported back (``trades`` table; trades whose signal is unknown are left out:
no model made them), so the two columns mean the same thing.

Is it plausible? The model's backtest trades (their net pips, kept in the model's
sidecar as ``backtest_trade_pips``) are what the promotion gate believed. If live trades
were drawn from the same distribution, the sum of ``n`` live trades would look like the
sum of ``n`` trades drawn at random, with replacement, from the backtest's: a bootstrap
of ``BOOTSTRAP_DRAWS`` such sums gives a band (the 2.5 % and 97.5 % quantiles) and the
same draws, kept in order, give a band for the maximum drawdown of ``n`` trades (its
97.5 % quantile). Live net pips below the band, or a drawdown above it, is a warning:
at 95 % a model that trades as tested falls outside about one time in twenty (more
often, since both are checked). Above the band is said too (too good to be true is
worth a look: a leak, a pip size) but is not a warning. Draws are independent, so a
regime that makes consecutive trades alike widens the real band: the check errs on the
side of warning. Fewer than ``MIN_TRADES`` live trades say nothing and are not judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mt5_pipeline.figures import equity_axes
from mt5_pipeline.learning.backtest import summarize
from mt5_pipeline.learning.model_registry import by_version
from mt5_pipeline.learning.model_store import read_sidecar
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.trades import closed_trades

BOOTSTRAP_DRAWS = 2000
BAND = (0.025, 0.975)
MIN_TRADES = 10
SEED = 20
_CHUNK_CELLS = 2_000_000  # draws x trades per block of the bootstrap (16 MB of float64)


@dataclass
class Plausibility:
    judged: bool
    passed: bool
    description: str
    band_low: float = math.nan
    band_high: float = math.nan
    drawdown_limit: float = math.nan


@dataclass
class VersionPerformance:
    model_version: str
    live: dict[str, float]
    backtest: dict[str, Any]  # the model's backtest summary (sidecar), {} if unknown
    backtest_pips: np.ndarray
    plausibility: Plausibility
    trades: pd.DataFrame = field(repr=False)


def live_frame(database_url: str, timeframe: str) -> pd.DataFrame:
    """The timeframe's closed trades with a known signal, as the backtest's columns (pips, exit_ts)."""
    rows = [
        r for r in closed_trades(database_url, timeframe=timeframe) if not r["unknown_signal"] and r["pips"] is not None
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "ticket",
            "model_version",
            "symbol",
            "side",
            "open_time",
            "close_time",
            "exit_reason",
            "pips",
            "profit",
            "swap",
            "commission",
        ],
    )
    frame["exit_ts"] = pd.to_datetime(frame["close_time"], utc=True)
    frame["pips"] = frame["pips"].astype(float)
    return frame


def bootstrap_band(
    backtest_pips: np.ndarray, live_pips: np.ndarray, *, draws: int = BOOTSTRAP_DRAWS, seed: int = SEED
) -> Plausibility:
    """Live net pips and drawdown against bootstrap bands of ``len(live_pips)`` backtest trades."""
    n = len(live_pips)
    backtest_pips = np.asarray(backtest_pips, dtype=np.float64)
    if n < MIN_TRADES:
        return Plausibility(False, True, f"{n} live trade(s): fewer than {MIN_TRADES}, not judged yet")
    if len(backtest_pips) < MIN_TRADES:
        return Plausibility(
            False, True, f"the model's backtest kept {len(backtest_pips)} trade(s): no band to judge by"
        )
    rng = np.random.default_rng(seed)
    totals, drawdowns = np.empty(draws), np.empty(draws)
    chunk = max(1, _CHUNK_CELLS // n)  # a year of M1 trades must not need gigabytes
    for lo in range(0, draws, chunk):
        k = min(chunk, draws - lo)
        equity = np.cumsum(backtest_pips[rng.integers(0, len(backtest_pips), size=(k, n))], axis=1)
        totals[lo : lo + k] = equity[:, -1]
        drawdowns[lo : lo + k] = (np.maximum.accumulate(np.maximum(equity, 0.0), axis=1) - equity).max(axis=1)
    low, high = (float(q) for q in np.quantile(totals, BAND))
    dd_limit = float(np.quantile(drawdowns, BAND[1]))
    live_equity = np.cumsum(live_pips)
    live_total = float(live_equity[-1])
    live_dd = float((np.maximum.accumulate(np.maximum(live_equity, 0.0)) - live_equity).max())
    problems = []
    if live_total < low:
        problems.append(
            f"net {live_total:.1f} pips is below the backtest's 95% band [{low:.1f}, {high:.1f}] for {n} trades"
        )
    if live_dd > dd_limit:
        problems.append(
            f"drawdown {live_dd:.1f} pips is above the backtest's 97.5% quantile {dd_limit:.1f} for {n} trades"
        )
    if problems:
        return Plausibility(True, False, "; ".join(problems), low, high, dd_limit)
    note = " (above the band: better than the backtest makes likely; worth a look)" if live_total > high else ""
    return Plausibility(
        True,
        True,
        f"net {live_total:.1f} pips within [{low:.1f}, {high:.1f}], drawdown {live_dd:.1f} <= {dd_limit:.1f}, {n} "
        f"trades{note}",
        low,
        high,
        dd_limit,
    )


def _backtest_of(settings: Settings, version: str) -> tuple[dict, np.ndarray]:
    row = by_version(settings, version)
    meta = read_sidecar(Path(row["path"])) if row and row.get("path") else None
    if not meta:
        return {}, np.array([])
    return dict(meta.get("backtest") or {}), np.asarray(meta.get("backtest_trade_pips") or [], dtype=np.float64)


def performance(settings: Settings, timeframe: str) -> list[VersionPerformance]:
    """Per model version that traded the timeframe (newest first trade last): live figures, backtest, plausibility."""
    frame = live_frame(settings.database_url, timeframe)
    out = []
    for version, trades in frame.groupby("model_version", sort=False):
        trades = trades.sort_values("exit_ts", kind="stable")
        backtest, pips = _backtest_of(settings, str(version))
        out.append(
            VersionPerformance(
                str(version), summarize(trades), backtest, pips, bootstrap_band(pips, trades["pips"].to_numpy()), trades
            )
        )
    return sorted(out, key=lambda v: v.trades["exit_ts"].iloc[-1])


def plot_live_equity(perf: VersionPerformance, path: Path, *, title: str) -> Path:
    """The live cumulative pips by close time, with the backtest's bootstrap band at the last trade."""
    with equity_axes(title, ylabel="cumulative pips (fills, after spread)", xlabel="close time (UTC)") as (ax, save):
        t = perf.trades
        ax.plot(t["exit_ts"], np.cumsum(t["pips"].to_numpy()), "-", label=f"live: {len(t)} trades")
        p = perf.plausibility
        if p.judged:
            ax.errorbar(
                [t["exit_ts"].iloc[-1]], [(p.band_low + p.band_high) / 2], yerr=[[(p.band_high - p.band_low) / 2]],
                fmt="none", capsize=6, color="grey",
                label="backtest's 95% band for as many trades",
            )  # fmt: skip
        return save(path)
