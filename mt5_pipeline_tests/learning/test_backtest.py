"""The backtest on a hand-made path gives the P&L computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.learning.backtest import plot_equity, run_backtest, summarize

# (open, high, low, close, spread in points); EURUSD, pip 0.0001, SL 20 / TP 40 pips, hold 3 bars.
BARS = [
    (1.1000, 1.1005, 1.0995, 1.1000, 0),  # 0  BUY signal (p = 0.9)
    (
        1.1000,
        1.1010,
        1.0990,
        1.1005,
        10,
    ),  # 1  A enters at the ask 1.1001 (bid 1.1000, 1 pip); SL 1.0981, TP 1.1041 on the bid
    (1.1005, 1.1042, 1.1000, 1.1035, 0),  # 2  A: take-profit, bid +41, net +40
    (1.1035, 1.1040, 1.1025, 1.1030, 0),  # 3
    (1.1030, 1.1035, 1.1025, 1.1030, 0),  # 4  SELL signal (p = 0.1)
    # 5  B sells at 1.1030, 2-pip spread; SL ask 1.1050 = bid 1.1048, TP ask 1.0990 = bid 1.0988,
    # both touched: SL, bid -18, net -20
    (
        1.1030,
        1.1055,
        1.0980,
        1.1000,
        20,
    ),
    (1.1000, 1.1005, 1.0995, 1.1000, 0),  # 6
    (1.1000, 1.1005, 1.0995, 1.1000, 0),  # 7
    (1.1000, 1.1005, 1.0995, 1.1000, 0),  # 8  BUY signal (p = 0.7)
    (1.1000, 1.1010, 1.0990, 1.1005, 0),  # 9  C enters at 1.1000
    (1.1005, 1.1015, 1.0995, 1.1010, 0),  # 10
    (1.1010, 1.1020, 1.1000, 1.1012, 0),  # 11 C: time is up, exits at the close, +12
    (1.1012, 1.1015, 1.1005, 1.1010, 0),  # 12
    (1.1010, 1.1015, 1.1005, 1.1010, 0),  # 13 BUY signal: its window runs past the data, no barrier hit: not counted
    (1.1010, 1.1015, 1.1005, 1.1010, 0),  # 14
    (1.1010, 1.1015, 1.1005, 1.1010, 0),  # 15
]
PROBABILITY = {0: 0.9, 4: 0.1, 8: 0.7, 13: 0.8}


@pytest.fixture
def hand_made(settings_for, tmp_path):
    o, h, lo, c, spread = zip(*BARS, strict=True)
    ts = pd.date_range("2024-06-11 10:00", periods=len(BARS), freq="min", tz="UTC")
    candles = pd.DataFrame({"ts": ts, "open": o, "high": h, "low": lo, "close": c, "tick_volume": 10, "spread": spread})
    predictions = pd.DataFrame(
        {"symbol": "EURUSD", "ts": ts, "probability": [PROBABILITY.get(i, 0.5) for i in range(len(BARS))]}
    )
    settings = settings_for(
        f"sqlite:///{tmp_path / 'x.db'}", DEFAULT_SL_PIPS=20, DEFAULT_TP_PIPS=40, LABEL_MAX_HOLD_BARS=3
    )
    return candles, predictions, settings


def test_hand_made_path_gives_the_hand_computed_pnl(hand_made):
    candles, predictions, settings = hand_made
    result = run_backtest({"EURUSD": candles}, predictions, settings)
    trades = result.trades
    assert list(trades["side"]) == ["BUY", "SELL", "BUY"]
    assert list(trades["exit_reason"]) == ["tp", "sl", "time"]
    assert list(trades["entry_ts"]) == list(candles["ts"].iloc[[1, 5, 9]])
    assert list(trades["exit_ts"]) == list(candles["ts"].iloc[[2, 5, 11]])
    assert trades["gross_pips"].to_numpy() == pytest.approx([41.0, -18.0, 12.0])
    assert trades["cost_pips"].to_numpy() == pytest.approx([1.0, 2.0, 0.0])
    assert trades["pips"].to_numpy() == pytest.approx([40.0, -20.0, 12.0])

    s = result.summary
    assert s["trades"] == 3
    assert s["total_pips"] == pytest.approx(32.0)
    assert s["hit_rate"] == pytest.approx(2 / 3)
    assert s["profit_factor"] == pytest.approx(52 / 20)
    assert s["max_drawdown_pips"] == pytest.approx(20.0)  # from +40 down to +20
    assert math.isnan(s["sharpe_daily"])  # one trading day: no spread of daily P&L
    assert all(isinstance(v, float) for v in s.values())


def test_random_side_baseline_uses_the_same_times_and_a_fixed_seed(hand_made):
    candles, predictions, settings = hand_made
    first = run_backtest({"EURUSD": candles}, predictions, settings)
    again = run_backtest({"EURUSD": candles}, predictions, settings)
    pd.testing.assert_frame_equal(first.baseline_trades, again.baseline_trades)
    assert list(first.baseline_trades["entry_ts"]) == list(first.trades["entry_ts"])
    sides = {
        tuple(run_backtest({"EURUSD": candles}, predictions, settings, seed=s).baseline_trades["side"])
        for s in range(12)
    }
    assert len(sides) > 1  # the sides really are drawn
    assert first.summary["baseline_random_trades"] == 3


def test_daily_sharpe_and_drawdown_of_a_known_series():
    exits = pd.to_datetime(["2024-06-10 10:00", "2024-06-10 11:00", "2024-06-11 10:00", "2024-06-12 10:00"], utc=True)
    trades = pd.DataFrame({"exit_ts": exits, "pips": [10.0, -4.0, -8.0, 6.0]})
    s = summarize(trades)
    daily = np.array([6.0, -8.0, 6.0])
    assert s["sharpe_daily"] == pytest.approx(daily.mean() / daily.std(ddof=1) * math.sqrt(252))
    assert s["max_drawdown_pips"] == pytest.approx(12.0)  # 10 -> -2
    assert s["profit_factor"] == pytest.approx(16 / 12)
    empty = summarize(trades.iloc[:0])
    assert empty["trades"] == 0 and math.isnan(empty["hit_rate"])


def test_no_signal_inside_the_band_means_no_trade(hand_made):
    candles, predictions, settings = hand_made
    neutral = predictions.assign(probability=0.5)
    result = run_backtest({"EURUSD": candles}, neutral, settings)
    assert result.trades.empty and result.summary["trades"] == 0


def test_equity_curve_png(hand_made, tmp_path):
    candles, predictions, settings = hand_made
    result = run_backtest({"EURUSD": candles}, predictions, settings)
    path = plot_equity(result, tmp_path / "models" / "rf_m1-test-equity.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    assert not list(path.parent.glob("*.tmp"))
