"""Price sanity: absurd prices rejected at ingest with the row and the reason, nothing
stored; a plausible but extreme bar stored, flagged, and not traded until confirmed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from mt5_pipeline.ingest import MAX_PRICE, CandleValidationError, ingest_candles
from mt5_pipeline.storage.bulk import newest_bars, read_candles

T0 = int(datetime(2024, 6, 3, 9, 0, tzinfo=timezone.utc).timestamp())
NOW = datetime(2024, 6, 5, 12, 0, tzinfo=timezone.utc)


def bar(i: int, price: float, *, wick: float = 0.0002) -> dict:
    return {"time": T0 + 60 * i, "open": price, "high": price + wick, "low": price - wick, "close": price, "tick_volume": 10}


def walk(n: int, start: int = 0, price: float = 1.08) -> list[dict]:
    rng = np.random.default_rng(start)
    closes = price * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    return [bar(start + i, round(float(c), 5)) for i, c in enumerate(closes)]


def test_a_price_beyond_any_instrument_is_refused_with_its_row(db_url):
    batch = walk(5)
    batch[3] = {**batch[3], "high": 1e308}
    with pytest.raises(CandleValidationError) as err:
        ingest_candles(db_url, "EURUSD", "M1", batch, now=NOW)
    (error,) = err.value.errors
    assert error.loc == "candles[3].high" and "beyond any instrument's price" in error.message and f"{MAX_PRICE:g}" in error.message
    assert newest_bars(db_url) == []


def test_a_bad_tick_against_the_stored_series_is_refused_and_nothing_is_stored(db_url):
    ingest_candles(db_url, "EURUSD", "M1", walk(50), now=NOW)
    batch = walk(5, start=50)
    batch[2] = bar(52, 50.0)  # 46x the level
    with pytest.raises(CandleValidationError) as err:
        ingest_candles(db_url, "EURUSD", "M1", batch, now=NOW)
    (error,) = err.value.errors
    assert error.loc == "candles[2].high" and "times above the level" in error.message and "PRICE_MAX_JUMP=10" in error.message
    assert len(read_candles(db_url, "EURUSD", "M1")) == 50  # none of the five
    low = walk(3, start=50)
    low[0] = bar(50, 0.001, wick=0.0001)
    with pytest.raises(CandleValidationError, match="times below the level"):
        ingest_candles(db_url, "EURUSD", "M1", low, now=NOW)
    # The same bar with the check off (PRICE_MAX_JUMP=0) is stored.
    assert ingest_candles(db_url, "EURUSD", "M1", batch, now=NOW, max_jump=0).inserted == 5


def test_a_spike_inside_a_first_batch_is_found_too(db_url):
    batch = walk(31)
    batch[15] = bar(15, 10_000.0)
    with pytest.raises(CandleValidationError) as err:
        ingest_candles(db_url, "GBPUSD", "M1", [*batch[16:], *batch[:16]], now=NOW)  # sent out of order
    assert [e.loc for e in err.value.errors] == ["candles[30].high"]  # its row as sent


def test_a_long_trend_is_not_a_bad_tick(db_url):
    # BTC-like: 110x over 4,700 bars, never 10x from its neighbours.
    closes = 100.0 * np.exp(np.arange(4_700) * 0.001)
    rows = [bar(i, round(float(c), 2), wick=0.01) for i, c in enumerate(closes)]
    assert ingest_candles(db_url, "BTCUSD", "M1", rows, now=NOW + timedelta(days=10)).inserted == 4_700
