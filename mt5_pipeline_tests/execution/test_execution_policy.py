"""The execution policy: its decisions, and the backtest simulating exactly what the
bridge will do when it calls decide_entry / due_exits bar by bar."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.execution.execution_policy import (
    ENTRY_POLICIES,
    ExecutionPolicy,
    OpenPosition,
    bars_held,
    decide_entry,
    due_exits,
    entry_bar,
    signal_meta,
)
from mt5_pipeline.learning.backtest import simulate_trades
from mt5_pipeline.settings import Settings, SettingsError

T0 = datetime(2024, 6, 11, 10, 0, tzinfo=timezone.utc)


def _pos(
    ticket: int, side: str = "BUY", symbol: str = "EURUSD", timeframe: str = "M1", minute: int = 1
) -> OpenPosition:
    return OpenPosition(ticket, symbol, timeframe, side, T0 + timedelta(minutes=minute))


def test_default_is_one_per_symbol_timeframe_and_the_setting_is_checked():
    settings = Settings.from_env({}, env_file=None)
    assert ExecutionPolicy.from_settings(settings) == ExecutionPolicy("one_per_symbol_timeframe", 60)
    with pytest.raises(SettingsError, match="ENTRY_POLICY"):
        Settings.from_env({"ENTRY_POLICY": "pyramid"}, env_file=None)


def test_signal_meta_carries_the_policy_to_executors_that_cannot_import_it():
    assert signal_meta(ExecutionPolicy("reverse", 12)) == {"entry_policy": "reverse", "max_hold_bars": 12}
    with pytest.raises(ValueError, match="unknown entry policy"):
        ExecutionPolicy("pyramid")


def test_decide_entry_per_policy():
    open_ = [_pos(1, "BUY"), _pos(2, "SELL", symbol="GBPUSD"), _pos(3, "SELL", timeframe="H1")]
    one, stack, reverse = (ExecutionPolicy(p) for p in ("one_per_symbol_timeframe", "stack", "reverse"))
    assert [a.kind for a in decide_entry(one, "EURUSD", "M1", "SELL", open_)] == ["skip"]
    assert [a.kind for a in decide_entry(one, "USDJPY", "M1", "SELL", open_)] == ["open"]
    assert [a.kind for a in decide_entry(one, "EURUSD", "M5", "BUY", open_)] == [
        "open"
    ]  # other timeframes do not count
    assert [a.kind for a in decide_entry(stack, "EURUSD", "M1", "BUY", open_)] == ["open"]
    assert [a.kind for a in decide_entry(reverse, "EURUSD", "M1", "BUY", open_)] == ["skip"]
    actions = decide_entry(reverse, "EURUSD", "M1", "SELL", open_)
    assert [(a.kind, a.ticket, a.reason) for a in actions] == [("close", 1, "opposite_signal"), ("open", None, "")]
    with pytest.raises(ValueError):
        decide_entry(one, "EURUSD", "M1", "HOLD", open_)


def test_time_exit_is_due_at_the_close_of_the_max_hold_th_bar():
    policy = ExecutionPolicy(max_hold_bars=3)
    p = OpenPosition(7, "EURUSD", "M1", "BUY", entry_bar(T0, "M1"))  # signal on 10:00, enters the 10:01 bar
    assert p.entry_bar == T0 + timedelta(minutes=1)
    assert due_exits(policy, [p], T0 + timedelta(minutes=2), timeframe="M1") == []  # 2 bars held
    [action] = due_exits(policy, [p], T0 + timedelta(minutes=3), timeframe="M1")  # the 3rd bar closed
    assert (action.kind, action.ticket, action.reason) == ("close", 7, "time")
    assert due_exits(policy, [p], T0 + timedelta(minutes=3), timeframe="M5") == []  # another timeframe's close
    # Across a gap the bars are counted, as the backtest counts them.
    times = [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), T0 + timedelta(hours=48)]
    assert bars_held(p, T0 + timedelta(hours=48), times) == 3
    assert bars_held(p, T0 + timedelta(hours=48)) > 3


def _random_path(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 1.1 + np.cumsum(rng.normal(0, 0.0004, n))
    open_ = np.concatenate([[1.1], close[:-1]])
    high = np.maximum(open_, close) + rng.uniform(0, 0.0006, n)
    low = np.minimum(open_, close) - rng.uniform(0, 0.0006, n)
    ts = pd.date_range("2024-06-11 10:00", periods=n, freq="min", tz="UTC")
    return pd.DataFrame({"ts": ts, "open": open_, "high": high, "low": low, "close": close, "spread": 0})


def _bridge_like(
    candles: pd.DataFrame, signals: dict[int, int], policy: ExecutionPolicy, sl: float, tp: float
) -> list[tuple]:
    """What a bridge calling the policy API bar by bar does; SL/TP as a terminal closes them (SL first)."""
    ts = [t.to_pydatetime() for t in candles["ts"]]
    o, h, lo, c = (candles[k].to_numpy() for k in ("open", "high", "low", "close"))
    open_pos: dict[int, dict] = {}
    closed = []
    ticket = 0
    for i in range(len(candles)):
        # The open of bar i: the signal of bar i-1 arrives.
        if i - 1 in signals:
            side = "BUY" if signals[i - 1] > 0 else "SELL"
            positions = [OpenPosition(k, "EURUSD", "M1", p["side"], p["entry_bar"]) for k, p in open_pos.items()]
            for action in decide_entry(policy, "EURUSD", "M1", side, positions):
                if action.kind == "close":
                    p = open_pos.pop(action.ticket)
                    closed.append((p["entry"], i, action.reason, o[i]))
                elif action.kind == "open":
                    ticket += 1
                    price = o[i]
                    s = 1 if side == "BUY" else -1
                    open_pos[ticket] = {
                        "side": side,
                        "entry": i,
                        "entry_bar": entry_bar(ts[i - 1], "M1"),
                        "s": s,
                        "sl": price - s * sl,
                        "tp": price + s * tp,
                    }
        # During bar i: the terminal's stops.
        for k in sorted(open_pos):
            p = open_pos[k]
            stop_hit = lo[i] <= p["sl"] + 1e-9 if p["s"] > 0 else h[i] >= p["sl"] - 1e-9
            target_hit = h[i] >= p["tp"] - 1e-9 if p["s"] > 0 else lo[i] <= p["tp"] + 1e-9
            if stop_hit or target_hit:
                del open_pos[k]
                closed.append((p["entry"], i, "sl" if stop_hit else "tp", p["sl"] if stop_hit else p["tp"]))
        # The close of bar i: time exits.
        positions = [OpenPosition(k, "EURUSD", "M1", p["side"], p["entry_bar"]) for k, p in open_pos.items()]
        for action in due_exits(policy, positions, ts[i], timeframe="M1"):
            p = open_pos.pop(action.ticket)
            closed.append((p["entry"], i, "time", c[i]))
    return sorted(closed)


def _simulated(candles, index, side, policy: ExecutionPolicy):
    """The backtest's trades on EURUSD: 10 pips stop, 15 pips target, 12 bars at most."""
    return simulate_trades(
        candles,
        index,
        side,
        symbol="EURUSD",
        sl_pips=10,
        tp_pips=15,
        max_hold=12,
        policy=policy,
        pip=0.0001,
        point=0.00001,
    )


@pytest.mark.parametrize("entry", ENTRY_POLICIES)
def test_backtest_trades_are_what_the_policy_api_does_bar_by_bar(entry):
    candles = _random_path(600, seed=3)
    rng = np.random.default_rng(4)
    index = np.sort(rng.choice(np.arange(590), size=150, replace=False))
    side = rng.choice([-1, 1], size=len(index))
    policy = ExecutionPolicy(entry, max_hold_bars=12)
    trades = _simulated(candles, index, side, policy)
    pos = {t: i for i, t in enumerate(candles["ts"])}
    backtest = sorted((pos[r.entry_ts], pos[r.exit_ts], r.exit_reason, r.exit_price) for r in trades.itertuples())
    live = _bridge_like(
        candles, dict(zip(index.tolist(), side.tolist(), strict=True)), policy, 10 * 0.0001, 15 * 0.0001
    )
    assert [b[:3] for b in backtest] == [x[:3] for x in live]
    assert [b[3] for b in backtest] == pytest.approx([x[3] for x in live])
    reasons = set(trades["exit_reason"])
    assert {"sl", "tp", "time"} <= reasons
    if entry == "reverse":
        assert "opposite_signal" in reasons
    if entry == "one_per_symbol_timeframe":
        ordered = trades.sort_values("entry_ts")
        assert (ordered["entry_ts"].to_numpy()[1:] > ordered["exit_ts"].to_numpy()[:-1]).all()  # never two at once


def test_stacking_takes_more_trades_than_one_per_symbol():
    candles = _random_path(400, seed=5)
    index = np.arange(0, 390, 2)
    side = np.ones(len(index), dtype=int)
    counts = {e: len(_simulated(candles, index, side, ExecutionPolicy(e, 12))) for e in ENTRY_POLICIES}
    assert len(index) - 6 <= counts["stack"] <= len(index)  # the last windows may run past the data
    assert counts["one_per_symbol_timeframe"] < counts["stack"] / 2
    assert counts["reverse"] == counts["one_per_symbol_timeframe"]  # same side every time: reverse never reverses
