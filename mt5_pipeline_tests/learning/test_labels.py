"""Labels on hand-made candle paths whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.learning.labels import (
    EXIT_SL,
    EXIT_TIMEOUT,
    EXIT_TP,
    LabelSpec,
    horizon_labels,
    lookahead_bars,
    make_labels,
    walk_barriers,
)

PIP = 0.0001
# SL 20 pips, TP 40 pips, three bars of holding time.
SPEC = LabelSpec(mode="triple_barrier", horizon_bars=5, max_hold_bars=3, sl_pips=20, tp_pips=40, pip=PIP)


def path(rows: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    """Candles from (open, high, low, close) rows, one minute apart."""
    o, h, lo, c = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
    ts = pd.date_range("2024-06-11 10:00", periods=len(rows), freq="min", tz="UTC")
    return pd.DataFrame({"ts": ts, "open": o, "high": h, "low": lo, "close": c, "tick_volume": 10, "spread": 0})


def first_label(rows, spec=SPEC) -> float:
    return make_labels(path(rows), spec)["label"].iloc[0]


BAR0 = (1.1000, 1.1005, 1.0995, 1.1000)  # the signal bar; the long enters at the next bar's open


def test_take_profit_first_is_a_win():
    rows = [BAR0, (1.1000, 1.1010, 1.0990, 1.1005), (1.1005, 1.1045, 1.1000, 1.1040), (1.1040, 1.1041, 1.0950, 1.0960)]
    assert first_label(rows) == 1.0  # TP (1.1040) at the second bar, before the SL that comes later


def test_stop_loss_first_is_a_loss_even_if_the_target_comes_later():
    rows = [BAR0, (1.1000, 1.1010, 1.0975, 1.0985), (1.0985, 1.1045, 1.0980, 1.1040), (1.1040, 1.1041, 1.1030, 1.1035)]
    assert first_label(rows) == 0.0


def test_both_barriers_in_one_bar_count_as_the_stop():
    rows = [BAR0, (1.1000, 1.1050, 1.0970, 1.1040), BAR0, BAR0]
    assert first_label(rows) == 0.0


@pytest.mark.parametrize(("last_close", "expected"), [(1.1012, 1.0), (1.0990, 0.0), (1.1000, 0.0)])
def test_neither_barrier_labels_by_the_sign_at_timeout(last_close, expected):
    rows = [
        BAR0,
        (1.1000, 1.1010, 1.0990, 1.1005),
        (1.1005, 1.1015, 1.0995, 1.1000),
        (1.1000, 1.1020, 1.0985, last_close),
    ]
    assert first_label(rows) == expected


def test_entry_is_the_next_open_not_this_close():
    # The next bar opens 10 pips higher: the target is 1.1050, which 1.1045 does not reach,
    # and the trade ends below its entry.
    rows = [BAR0, (1.1010, 1.1045, 1.1000, 1.1040), (1.1040, 1.1045, 1.1000, 1.1005), (1.1005, 1.1010, 1.0995, 1.1005)]
    assert first_label(rows) == 0.0


def test_bars_without_a_full_window_get_no_label():
    rows = [BAR0] * 10
    labels = make_labels(path(rows), SPEC)
    assert labels["label"].iloc[:7].notna().all() and labels["label"].iloc[7:].isna().all()
    # label_end_ts: the last bar each label reads (the embargo a split must keep).
    assert labels["label_end_ts"].iloc[0] == labels["ts"].iloc[3]
    assert labels["label_end_ts"].iloc[7:].isna().all()


def test_horizon_labels():
    np.testing.assert_array_equal(horizon_labels(np.array([1.0, 2.0, 1.0, 3.0, 3.0]), 1), [1.0, 0.0, 1.0, 0.0, np.nan])
    close = np.array([1.10, 1.11, 1.09, 1.12, 1.08, 1.13, 1.13])
    spec = LabelSpec(mode="horizon", horizon_bars=2, max_hold_bars=60, sl_pips=20, tp_pips=40, pip=PIP)
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-02", periods=7, freq="min", tz="UTC"),
            "open": close,
            "high": close,
            "low": close,
            "close": close,
        }
    )
    labels = make_labels(frame, spec)
    np.testing.assert_array_equal(labels["label"].to_numpy(), [0.0, 1.0, 0.0, 1.0, 1.0, np.nan, np.nan])
    assert labels["label_end_ts"].iloc[0] == frame["ts"].iloc[2]


def test_shorts_mirror_longs_in_the_barrier_walk():
    frame = path([BAR0, (1.1000, 1.1010, 1.0955, 1.0960), (1.0960, 1.1030, 1.0950, 1.1020), BAR0])
    o, h, lo, c = (frame[k].to_numpy() for k in ("open", "high", "low", "close"))
    walk = walk_barriers(
        o, h, lo, c, np.array([1, 1]), np.array([-1, 1]), sl_distance=20 * PIP, tp_distance=40 * PIP, max_hold=3
    )
    # The short's target (1.0960) is touched at the first bar; the long's stop (1.0980) too.
    assert list(walk.reason) == [EXIT_TP, EXIT_SL]
    assert walk.exit_price == pytest.approx([1.0960, 1.0980])
    assert list(walk.exit_index) == [1, 1] and walk.complete.all()
    # A window that runs past the data and hits nothing is incomplete.
    late = walk_barriers(
        o, h, lo, c, np.array([3]), np.array([1]), sl_distance=20 * PIP, tp_distance=40 * PIP, max_hold=3
    )
    assert late.reason[0] == EXIT_TIMEOUT and not late.complete[0]


def test_pip_size_and_per_symbol_barriers_come_from_the_settings(settings_for, tmp_path):
    settings = settings_for(
        f"sqlite:///{tmp_path / 'x.db'}",
        LABEL_MODE="triple_barrier",
        SYMBOL_SL_TP_PIPS="USDJPY=25/50",
        LABEL_MAX_HOLD_BARS=30,
    )
    jpy = LabelSpec.from_settings(settings, "USDJPY")
    assert (jpy.pip, jpy.sl_pips, jpy.tp_pips, jpy.max_hold_bars) == (0.01, 25.0, 50.0, 30)
    assert LabelSpec.from_settings(settings, "EURUSD").pip == 0.0001
    assert jpy.lookahead_bars == lookahead_bars(settings) == 30
    # 25/50 pips on USDJPY are 0.25/0.50 yen: the 10-sen dip of the first bar is no stop
    # (with a 0.0001 pip it would be), and the target at 150.50 is reached on the second bar.
    rows = [(150.00, 150.05, 149.95, 150.00), (150.00, 150.45, 149.90, 150.40), (150.40, 150.55, 150.30, 150.50)]
    rows += [(150.50, 150.51, 150.49, 150.50)] * 30
    assert make_labels(path(rows), jpy)["label"].iloc[0] == 1.0
    as_if_eurusd = LabelSpec(**{**jpy.__dict__, "pip": 0.0001})
    assert make_labels(path(rows), as_if_eurusd)["label"].iloc[0] == 0.0
