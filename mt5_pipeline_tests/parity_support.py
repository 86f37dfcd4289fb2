"""Parity of the bridge with the backtest, measured: the bridge on the stand-in terminal
plays a stretch of bars with a set of signals, the trades it reports land in the API's
``trades`` table, and they are compared with ``backtest.simulate_trades`` on the same
bars, signals and execution policy (test_parity.py; benchmarks/bench_parity.py).

The play, bar by bar (times UTC; the terminal runs at UTC+2 and the bridge converts):

1. the close of the previous bar: the bridge's time exits (``PositionKeeper.time_exits``),
   at the last bar's close price;
2. the open of this bar: the market is quoted at its open (with its spread), and the
   signal of the previous bar, if any, goes to the bridge's executor as the pusher would
   post it (the policy decides, the order fills at the ask or the bid);
3. during this bar: the bar is fed to the terminal, which closes positions at their
   stop-loss or take-profit (the stop first when the bar touches both).

Every few hundred bars, and at the end, the bridge reads the deals history and reports
the trades (``POST /ea/trades``); at the end it reconciles, and the API's rows are read back.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import select

from mt5_pipeline.bridge.fake_mt5 import RATES_DTYPE
from mt5_pipeline.clock import iso_z
from mt5_pipeline.execution.execution_policy import ExecutionPolicy, signal_meta
from mt5_pipeline.learning.backtest import simulate_trades
from mt5_pipeline.settings import TIMEFRAME_SECONDS
from mt5_pipeline.signals import queue
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import trades as trades_table

SERVER_OFFSET_S = 2 * 3600
REPORT_EVERY = 200  # bars between two reads of the deals history


@dataclass
class Parity:
    backtest: pd.DataFrame
    live: pd.DataFrame  # the API's closed trades, with entry_bar / exit_bar positions in the candles
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    open_at_end: int = 0
    answers: dict = field(default_factory=dict)  # bar index -> the bridge's answer to that bar's signal


def signal_payload(
    candles: pd.DataFrame,
    i: int,
    side: int,
    *,
    symbol: str,
    timeframe: str,
    sl_pips: float,
    tp_pips: float,
    pip: float,
    policy: ExecutionPolicy,
) -> dict:
    ts = candles["time"].iloc[i].to_pydatetime()
    p = 0.8 if side > 0 else 0.2
    return {
        "signal_id": str(uuid.uuid4()),
        "timestamp": iso_z(ts),
        "symbol": symbol,
        "timeframe": timeframe,
        "side": "BUY" if side > 0 else "SELL",
        "confidence": 0.8,
        "sl_pips": sl_pips,
        "tp_pips": tp_pips,
        "price": float(candles["close"].iloc[i]),
        "meta": {
            "model": f"rf_{timeframe.lower()}",
            "model_version": "v-parity",
            "probability": p,
            "pip_size": pip,
            **signal_meta(policy),
        },
        # Valid through the next bar's open, however long a weekend makes the wait.
        "expires_at": iso_z(
            candles["time"].iloc[min(i + 1, len(candles) - 1)].to_pydatetime()
            + timedelta(seconds=TIMEFRAME_SECONDS[timeframe])
        ),
    }


def play(
    rig,
    candles: pd.DataFrame,
    signals: dict[int, int],
    *,
    symbol: str,
    timeframe: str,
    sl_pips: float,
    tp_pips: float,
    pip: float,
    point: float,
    policy: ExecutionPolicy,
) -> Parity:
    """Run the bridge of ``rig`` (bridge_support.build_rig) over ``candles`` (time UTC, open,
    high, low, close, tick_volume, spread, real_volume) with ``signals`` {bar index: +1/-1}."""
    started = time.perf_counter()
    mt5, bridge, clock = rig.mt5, rig.bridge, rig.clock
    seconds = TIMEFRAME_SECONDS[timeframe]
    utc = (pd.DatetimeIndex(candles["time"]).as_unit("s").asi8).astype(np.int64)
    rates = np.zeros(len(candles), dtype=RATES_DTYPE)
    rates["time"] = utc + SERVER_OFFSET_S
    for k in ("open", "high", "low", "close", "tick_volume", "spread", "real_volume"):
        rates[k] = candles[k].to_numpy()
    payloads = {
        i: signal_payload(
            candles, i, s, symbol=symbol, timeframe=timeframe, sl_pips=sl_pips, tp_pips=tp_pips, pip=pip, policy=policy
        )
        for i, s in signals.items()
    }
    queue.enqueue_many(rig.url, list(payloads.values()), now=datetime.fromtimestamp(int(utc[0]), timezone.utc))
    answers = {}
    for i in range(len(candles)):
        t = int(utc[i])
        if i > 0:
            clock.now = datetime.fromtimestamp(t + 0.5, timezone.utc)  # the previous bar has closed
            bridge.positions.time_exits()
        mt5.quote(symbol, float(rates["open"][i]), int(rates["spread"][i]))
        clock.now = datetime.fromtimestamp(t + 1, timezone.utc)
        if i - 1 in payloads:
            code, answer = bridge.executor.handle(payloads[i - 1])
            answers[i - 1] = (code, answer)
            assert code == 200, answer
        mt5.feed_bars(symbol, rates[i : i + 1], timeframe_seconds=seconds)
        if i % REPORT_EVERY == REPORT_EVERY - 1:
            # as the running bridge does every minute (its first look reaches back 30 days only)
            bridge.trade_reports.cycle()
    clock.now = datetime.fromtimestamp(int(utc[-1]) + seconds + 0.5, timezone.utc)  # the last bar has closed
    bridge.positions.time_exits()
    status = bridge.reconciler.cycle()
    assert status.error == "", status.error
    elapsed = time.perf_counter() - started

    policy_ = ExecutionPolicy(policy.entry, policy.max_hold_bars)
    index = np.array(sorted(signals), dtype=np.int64)
    side = np.array([signals[i] for i in index], dtype=np.int64)
    frame = candles.rename(columns={"time": "ts"})
    backtest = simulate_trades(
        frame,
        index,
        side,
        symbol=symbol,
        sl_pips=sl_pips,
        tp_pips=tp_pips,
        max_hold=policy.max_hold_bars,
        pip=pip,
        point=point,
        policy=policy_,
    )
    ts = pd.DatetimeIndex(candles["time"])
    backtest["entry_bar"] = ts.get_indexer(pd.DatetimeIndex(backtest["entry_ts"]))
    backtest["exit_bar"] = ts.get_indexer(pd.DatetimeIndex(backtest["exit_ts"]))

    with get_engine(rig.url).connect() as conn:
        rows = pd.DataFrame([dict(r) for r in conn.execute(select(trades_table)).mappings()])
    open_at_end = int(rows["close_time"].isna().sum()) if len(rows) else 0
    live = rows[rows["close_time"].notna()].copy() if len(rows) else rows
    if len(live):
        opened = pd.DatetimeIndex(pd.to_datetime(live["open_time"], utc=True)).as_unit("s").asi8
        closed = pd.DatetimeIndex(pd.to_datetime(live["close_time"], utc=True)).as_unit("s").asi8
        live["entry_bar"] = np.searchsorted(utc, opened, side="right") - 1
        bar_of_close = np.searchsorted(utc, closed, side="right") - 1
        # A time exit happens once its last bar has closed (at the next bar's open, or after a weekend).
        last_closed = np.searchsorted(utc + seconds, closed, side="right") - 1
        live["exit_bar"] = np.where(live["exit_reason"] == "time", last_closed, bar_of_close)
    figures = compare(backtest, live, candles, point, pip)
    figures["signals_not_traded"] = {}
    for _, answer in answers.values():
        if not answer.get("success"):
            why = str(answer.get("message", ""))
            why = why.split(":")[0] if why.startswith("skipped") else why[:80]
            figures["signals_not_traded"][why] = figures["signals_not_traded"].get(why, 0) + 1
    return Parity(
        backtest=backtest, live=live, figures=figures, seconds=elapsed, open_at_end=open_at_end, answers=answers
    )


def compare(backtest: pd.DataFrame, live: pd.DataFrame, candles: pd.DataFrame, point: float, pip: float) -> dict:
    """Entries matched by (entry bar, side); for each match, the exit bar and reason, and the
    pips (the live fill pays the spread in its price, the backtest as a cost)."""
    b = backtest.set_index(["entry_bar", "side"])
    live_keys = list(zip(live["entry_bar"], live["side"], strict=True)) if len(live) else []
    l_ = live.set_index(["entry_bar", "side"]) if len(live) else live
    common = sorted(set(b.index) & set(live_keys))
    spread_pips = candles["spread"].to_numpy(dtype=float) * point / pip
    same_exit = 0
    diffs, beyond, at_barriers = [], 0, []
    for key in common:
        bt, lv = b.loc[key], l_.loc[key]
        if int(bt["exit_bar"]) == int(lv["exit_bar"]) and bt["exit_reason"] == lv["exit_reason"]:
            same_exit += 1
            d = abs(float(lv["pips"]) - float(bt["pips"]))
            diffs.append(d)
            # A stop or a target nets its pips exactly on both sides (the backtest places them
            # from the fill); a time exit closes at the exit bar's spread, which may differ.
            if bt["exit_reason"] in ("sl", "tp"):
                at_barriers.append(d)
            # Rounding of the stops to the tick grid: a point.
            if d > spread_pips[int(key[0])] + spread_pips[int(bt["exit_bar"])] + point / pip + 1e-6:
                beyond += 1
    return {
        "backtest_trades": len(backtest),
        "live_trades": len(live),
        "same_entries": len(common),
        "same_exits": same_exit,
        "entries_only_backtest": len(set(b.index) - set(live_keys)),
        "entries_only_live": len(set(live_keys) - set(b.index)),
        "max_pips_difference": max(diffs) if diffs else 0.0,
        "mean_pips_difference": float(np.mean(diffs)) if diffs else 0.0,
        "max_pips_difference_at_barriers": max(at_barriers) if at_barriers else 0.0,
        "pips_beyond_spread": beyond,
        "backtest_total_pips": float(backtest["pips"].sum()) if len(backtest) else 0.0,
        "live_total_pips": float(live["pips"].sum()) if len(live) else 0.0,
        "exit_reasons_backtest": backtest["exit_reason"].value_counts().to_dict() if len(backtest) else {},
        "exit_reasons_live": live["exit_reason"].value_counts().to_dict() if len(live) else {},
    }
