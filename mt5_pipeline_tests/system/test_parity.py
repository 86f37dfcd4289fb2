"""Parity, measured: the trades the bridge reports (the API's trades table) are the
backtest's trades on the same bars and signals, under each entry policy
(mt5_pipeline_tests/parity_support.py says how the bars are played)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.execution.execution_policy import ENTRY_POLICIES, ExecutionPolicy
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline_tests.bridge_support import build_rig
from mt5_pipeline_tests.parity_support import play

# 450 bars before a weekend and 150 after it: time exits count bars across the gap.
END = datetime(2024, 6, 10, 2, 29, tzinfo=timezone.utc)
PIP, POINT = 0.0001, 0.00001


def _bars_and_signals(spread: bool, seed: int = 7):
    candles = generate_candles(600, end=END, seed=seed)
    if not spread:
        candles["spread"] = 0
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(np.arange(598), size=200, replace=False))
    return candles, {int(i): int(s) for i, s in zip(index, rng.choice([-1, 1], size=len(index)), strict=True)}


def _played(rig, candles, signals, entry: str, *, sl_pips: float, tp_pips: float):
    """The bars and signals played through the bridge rig and the backtest alike: EURUSD M1,
    positions held 12 bars at most under the `entry` policy."""
    return play(
        rig,
        candles,
        signals,
        symbol="EURUSD",
        timeframe="M1",
        sl_pips=sl_pips,
        tp_pips=tp_pips,
        pip=PIP,
        point=POINT,
        policy=ExecutionPolicy(entry, 12),
    )


@pytest.mark.parametrize("entry", ENTRY_POLICIES)
def test_bridge_trades_are_the_backtest_trades_without_spread(sqlite_url, tmp_path, entry):
    candles, signals = _bars_and_signals(spread=False)
    gaps = np.diff(pd.DatetimeIndex(candles["time"]).as_unit("s").asi8)
    assert gaps.max() > 24 * 3600  # the stretch crosses a weekend
    rig = build_rig(sqlite_url, tmp_path, LABEL_MAX_HOLD_BARS="12", ENTRY_POLICY=entry)
    try:
        result = _played(rig, candles, signals, entry, sl_pips=3, tp_pips=4)
        f = result.figures
        assert f["backtest_trades"] > 20
        assert f["same_entries"] == f["backtest_trades"] == f["live_trades"], f
        assert f["same_exits"] == f["backtest_trades"], f
        assert f["max_pips_difference"] < 0.01, f  # no spread: the same prices
        assert {"sl", "tp", "time"} <= set(f["exit_reasons_live"]), f
        if entry == "reverse":
            assert "opposite_signal" in f["exit_reasons_live"], f
        # A skipped signal is acked honestly, and the record is in sync with the terminal.
        health = rig.bridge.health()[1]
        assert health["reconciliation"]["state"] == "in_sync", health
        assert health["trade_reports"]["pending"] == 0
        if entry != "stack":
            assert health["signals"].get("REJECTED", 0) > 0
        live = result.live
        assert not live["unknown_signal"].any()  # each linked to its signal and model version
        assert set(live["model_version"]) == {"v-parity"}
    finally:
        rig.close()


def test_bridge_trades_are_the_backtest_trades_with_a_spread(sqlite_url, tmp_path):
    candles, signals = _bars_and_signals(spread=True, seed=11)
    rig = build_rig(sqlite_url, tmp_path, LABEL_MAX_HOLD_BARS="12")
    try:
        result = _played(rig, candles, signals, "one_per_symbol_timeframe", sl_pips=6, tp_pips=9)
        f = result.figures
        # The backtest places its stops from the fill, as the terminal does (a spread nearer the
        # stop, a spread farther the target, on bid prices): the same trades, the same exits, and a
        # stop or target nets the same pips up to the tick rounding. A SELL's time exit buys at its
        # own bar's ask, where the backtest charges the entry bar's spread (pips_beyond_spread).
        assert f["same_entries"] == f["backtest_trades"] == f["live_trades"], f
        assert f["same_exits"] == f["backtest_trades"], f
        assert f["max_pips_difference_at_barriers"] <= POINT / PIP + 1e-6, f
        assert {"sl", "tp", "time"} <= set(f["exit_reasons_live"]), f
        assert f["pips_beyond_spread"] == 0, f
    finally:
        rig.close()
