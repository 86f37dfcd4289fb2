"""Price sanity: absurd prices rejected at ingest with the row and the reason, nothing
stored; a plausible but extreme bar stored, flagged, and not traded until confirmed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from mt5_pipeline.market.ingest import MAX_PRICE, CandleValidationError, ingest_candles
from mt5_pipeline.storage.candles import newest_bars, read_candles

T0 = int(datetime(2024, 6, 3, 9, 0, tzinfo=timezone.utc).timestamp())
NOW = datetime(2024, 6, 5, 12, 0, tzinfo=timezone.utc)


def bar(i: int, price: float, *, wick: float = 0.0002) -> dict:
    return {
        "time": T0 + 60 * i,
        "open": price,
        "high": price + wick,
        "low": price - wick,
        "close": price,
        "tick_volume": 10,
    }


def walk(n: int, start: int = 0, price: float = 1.08) -> list[dict]:
    rng = np.random.default_rng(start)
    closes = price * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    return [bar(start + i, round(float(c), 5)) for i, c in enumerate(closes)]


def _the_one_error(url: str, batch: list[dict]):
    """The error EURUSD's `batch` is refused with: it must be refused, for one reason."""
    with pytest.raises(CandleValidationError) as err:
        ingest_candles(url, "EURUSD", "M1", batch, now=NOW)
    (error,) = err.value.errors
    return error


def test_a_price_beyond_any_instrument_is_refused_with_its_row(db_url):
    batch = walk(5)
    batch[3] = {**batch[3], "high": 1e308}
    error = _the_one_error(db_url, batch)
    assert (
        error.loc == "candles[3].high"
        and "beyond any instrument's price" in error.message
        and f"{MAX_PRICE:g}" in error.message
    )
    assert newest_bars(db_url) == []


def test_a_bad_tick_against_the_stored_series_is_refused_and_nothing_is_stored(db_url):
    ingest_candles(db_url, "EURUSD", "M1", walk(50), now=NOW)
    batch = walk(5, start=50)
    batch[2] = bar(52, 50.0)  # 46x the level
    error = _the_one_error(db_url, batch)
    assert (
        error.loc == "candles[2].high"
        and "times above the level" in error.message
        and "PRICE_MAX_JUMP=10" in error.message
    )
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


# ---- plausible but extreme: stored, flagged, no signal until the next bars confirm ----------

from mt5_pipeline.market import extremes  # noqa: E402
from mt5_pipeline.monitoring import quality  # noqa: E402


def _series_with_jump(db_url: str, *, jump: float = 1.012) -> tuple[list[dict], datetime]:
    """300 quiet EURUSD bars (about 1 bp a minute), then bar 300 jumps 1.2 %: 100+ standard
    deviations, yet far from a bad tick's 10x. Returns the bars and the jump bar's time."""
    history = walk(300)
    level = history[-1]["close"] * jump
    ingest_candles(db_url, "EURUSD", "M1", [*history, bar(300, round(level, 5))], now=NOW)
    return history, datetime.fromtimestamp(T0 + 300 * 60, timezone.utc)


def _at(i: int) -> datetime:
    return datetime.fromtimestamp(T0 + 60 * i, timezone.utc)


def test_an_extreme_bar_is_stored_and_waits_for_the_next_bars(db_url):
    _, jump_ts = _series_with_jump(db_url)
    assert len(read_candles(db_url, "EURUSD", "M1")) == 301  # stored: plausible
    flags = extremes.extreme_bars(read_candles(db_url, "EURUSD", "M1"))
    assert list(flags.index[flags["extreme"]]) == [300] and flags["sigmas"].iloc[300] > 50

    reason = extremes.unconfirmed_extreme(db_url, "EURUSD", "M1", jump_ts)
    assert reason is not None and "waiting for 2 more bar(s)" in reason
    assert extremes.unconfirmed_extreme(db_url, "EURUSD", "M1", _at(299)) is None  # the bar before is fine
    check = quality.candles_extreme_bars(db_url)
    assert not check.passed and check.severity == "WARN" and check.metadata["unconfirmed"] == 1

    level = read_candles(db_url, "EURUSD", "M1")["close"].iloc[-1]
    ingest_candles(db_url, "EURUSD", "M1", [bar(301, level + 0.0001)], now=NOW)
    assert "waiting for 1 more bar(s)" in extremes.unconfirmed_extreme(db_url, "EURUSD", "M1", _at(301))
    ingest_candles(db_url, "EURUSD", "M1", [bar(302, level - 0.0001)], now=NOW)
    # Two bars held the new level: confirmed, signals may follow.
    assert extremes.unconfirmed_extreme(db_url, "EURUSD", "M1", _at(302)) is None
    assert quality.candles_extreme_bars(db_url).passed


def test_a_spike_the_next_bars_do_not_hold_keeps_its_bars_from_trading(db_url):
    history, jump_ts = _series_with_jump(db_url)
    before = history[-1]["close"]
    ingest_candles(db_url, "EURUSD", "M1", [bar(301, before), bar(302, before + 0.0001)], now=NOW)
    reason = extremes.unconfirmed_extreme(db_url, "EURUSD", "M1", _at(302))
    assert reason is not None and "did not hold its level" in reason
    check = quality.candles_extreme_bars(db_url)
    assert not check.passed and check.metadata["bars"][0]["state"] == "not confirmed"
    # Once the spike is CONFIRM_BARS + 1 bars back, newer bars trade again.
    ingest_candles(db_url, "EURUSD", "M1", [bar(303, before)], now=NOW)
    assert extremes.unconfirmed_extreme(db_url, "EURUSD", "M1", _at(303)) is None


def test_the_candles_check_flags_it_through_dagster(sqlite_url, settings_for):
    import dagster as dg

    from mt5_pipeline_tests.orchestration_support import FAST_MODEL, defs_for

    _series_with_jump(sqlite_url)
    defs = defs_for(settings_for(sqlite_url, **FAST_MODEL), **FAST_MODEL)
    result = defs.resolve_job_def("candles_checks_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["candles_extreme_bars"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "1 unconfirmed" in evaluation.description
