"""Pip sizes: one helper used by labels, the backtest and signals."""

import pytest

from mt5_pipeline.market.pips import pip_size, point_size


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("EURUSD", 0.0001),
        ("GBPUSD", 0.0001),
        ("USDJPY", 0.01),
        ("EURJPY", 0.01),
        ("usdjpy", 0.01),
        ("GBPJPY.m", 0.01),
        ("AUDCAD", 0.0001),
    ],
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


# ---- instruments beyond FX: never the FX pip for gold, indices or crypto ----------------------

from contextlib import nullcontext  # noqa: E402

from mt5_pipeline.market.pips import PipSizeUnknown, currency_pair, pip_from_instrument, pip_size_for  # noqa: E402

NOT_FX = ["XAUUSD", "XAUUSD#", "US30", "US30.cash", "BTCUSD", "XAGUSD", "GER40"]


@pytest.mark.parametrize("symbol", NOT_FX)
def test_a_symbol_that_is_not_a_currency_pair_has_no_default(symbol):
    assert currency_pair(symbol) is None
    with pytest.raises(PipSizeUnknown, match=f"PIP_SIZES={symbol.upper()}="):
        pip_size(symbol)


@pytest.mark.parametrize(
    ("symbol", "pair"), [("EURUSD.m", ("EUR", "USD")), ("#GBPJPY", ("GBP", "JPY")), ("usdchfpro", ("USD", "CHF"))]
)
def test_currency_pairs_are_recognised_with_broker_decorations(symbol, pair):
    assert currency_pair(symbol) == pair


@pytest.mark.parametrize(
    ("digits", "point", "pip"),
    [
        (5, 0.00001, 0.0001),
        (3, 0.001, 0.01),
        (4, None, 0.0001),
        (2, 0.01, 0.01),
        (1, 0.1, 0.1),
        (None, 0.01, 0.01),
        (0, 1.0, 1.0),
    ],
)
def test_pip_from_the_eas_digits_and_point(digits, point, pip):
    # MQL's convention: point x 10 on 3- and 5-digit quotes, else one point.
    assert pip_from_instrument(digits, point) == pytest.approx(pip)


def test_pip_size_for_reads_what_the_ea_sent(db_url, settings_for):
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.market.sample_data import generate_candles, minutes_ago

    settings = settings_for(db_url, PIP_SIZES="US30=1")
    bars = generate_candles(5, end=minutes_ago(2), start_price=2034.0, digits=2, with_weekends=False)
    for symbol in ("XAUUSD", "BTCUSD", "US30"):
        with pytest.raises(PipSizeUnknown) if symbol != "US30" else nullcontext():
            pip_size_for(settings, db_url, symbol)
    ingest_candles(db_url, "XAUUSD", "M1", bars, digits=2, point=0.01)
    ingest_candles(db_url, "BTCUSD", "M1", bars, digits=2)
    ingest_candles(db_url, "US30", "M1", bars, digits=1, point=0.1)
    assert pip_size_for(settings, db_url, "XAUUSD") == pytest.approx(0.01)
    assert pip_size_for(settings, db_url, "BTCUSD") == pytest.approx(0.01)
    assert pip_size_for(settings, db_url, "US30") == 1.0  # PIP_SIZES wins over the EA
    assert pip_size_for(settings, db_url, "EURUSD") == 0.0001
    # A later batch without digits keeps what the EA said before.
    ingest_candles(db_url, "XAUUSD", "M1", bars)
    assert pip_size_for(settings, db_url, "XAUUSD") == pytest.approx(0.01)


def test_ingest_refuses_digits_and_point_that_disagree(db_url):
    from mt5_pipeline.market.ingest import CandleValidationError, ingest_candles
    from mt5_pipeline.market.sample_data import generate_candles, minutes_ago

    bars = generate_candles(3, end=minutes_ago(2), start_price=2034.0, digits=2, with_weekends=False)
    with pytest.raises(CandleValidationError) as err:
        ingest_candles(db_url, "XAUUSD", "M1", bars, digits=2, point=0.001)
    assert err.value.errors[0].loc == "point" and "does not match digits 2" in err.value.errors[0].message
    with pytest.raises(CandleValidationError, match="digits"):
        ingest_candles(db_url, "XAUUSD", "M1", bars, digits=-1)
    from mt5_pipeline.storage.candles import newest_bars

    assert newest_bars(db_url) == []  # nothing stored


def test_triple_barrier_labels_refuse_a_symbol_without_a_pip(settings_for, tmp_path):
    from mt5_pipeline.learning.labels import LabelSpec

    url = f"sqlite:///{tmp_path / 'x.db'}"
    from mt5_pipeline.storage import migrate

    migrate.upgrade(url)
    with pytest.raises(PipSizeUnknown, match="PIP_SIZES"):
        LabelSpec.from_settings(settings_for(url, LABEL_MODE="triple_barrier"), "XAUUSD")
    assert (
        LabelSpec.from_settings(settings_for(url, LABEL_MODE="triple_barrier", PIP_SIZES="XAUUSD=0.1"), "XAUUSD").pip
        == 0.1
    )
    # Horizon labels compare closes: no pip needed, none invented.
    spec = LabelSpec.from_settings(settings_for(url), "XAUUSD")
    assert spec.pip != spec.pip  # NaN


def test_the_backtest_leaves_out_a_symbol_without_a_pip(settings_for, tmp_path, caplog):
    import numpy as np
    import pandas as pd

    from mt5_pipeline.learning.backtest import run_backtest
    from mt5_pipeline.market.sample_data import generate_candles
    from mt5_pipeline.storage import migrate

    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    settings = settings_for(url)
    frames = {
        s: generate_candles(300, seed=i, start_price=p, with_weekends=False).rename(columns={"time": "ts"})
        for i, (s, p) in enumerate((("EURUSD", 1.08), ("XAUUSD", 2034.0)))
    }
    predictions = pd.concat(
        [
            pd.DataFrame({"symbol": s, "ts": f["ts"].iloc[:200], "probability": np.full(200, 0.9)})
            for s, f in frames.items()
        ]
    )
    result = run_backtest(frames, predictions, settings)
    assert set(result.trades["symbol"]) == {"EURUSD"}
    assert "XAUUSD left out" in caplog.text and "PIP_SIZES" in caplog.text
