"""Pip sizes: one helper used by labels, the backtest and signals."""

import pytest

from mt5_pipeline.pips import pip_size, point_size


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("EURUSD", 0.0001), ("GBPUSD", 0.0001), ("USDJPY", 0.01), ("EURJPY", 0.01), ("usdjpy", 0.01), ("GBPJPY.m", 0.01), ("AUDCAD", 0.0001)],
)
def test_defaults(symbol, expected):
    assert pip_size(symbol) == expected


def test_overrides_win_over_the_defaults():
    overrides = {"XAUUSD": 0.1, "USDJPY": 0.001}
    assert pip_size("XAUUSD", overrides) == 0.1
    assert pip_size("xauusd", overrides) == 0.1  # settings keys are upper-case; symbols may not be
    assert pip_size("USDJPY", overrides) == 0.001
    assert pip_size("EURUSD", overrides) == 0.0001


def test_a_point_is_a_tenth_of_a_pip():
    # MT5 spreads are in points: 5-digit EURUSD quotes 0.00001, 3-digit USDJPY 0.001.
    assert point_size("EURUSD") == pytest.approx(0.00001)
    assert point_size("USDJPY") == pytest.approx(0.001)
    assert point_size("XAUUSD", {"XAUUSD": 0.1}) == pytest.approx(0.01)
