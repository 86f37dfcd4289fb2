"""The zoned stand-in terminal: its server clock follows UTC+2/+3 with the US changes,
it has no bars over the weekend, and its bars are the ones true_bar promises."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mt5_pipeline.bridge import fake_mt5
from mt5_pipeline.bridge.fake_zone import ZonedFakeMT5
from mt5_pipeline_tests.bridge_support import ManualClock


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)


def _s(*args: int) -> int:
    return int(_utc(*args).timestamp())


def _terminal(now: datetime) -> ZonedFakeMT5:
    mt5 = ZonedFakeMT5(clock=ManualClock(now), zone="UTC+2/+3@US")
    mt5.initialize()
    return mt5


@pytest.mark.parametrize(
    ("now", "offset_h"),
    [(_utc(2025, 1, 15, 10, 0, 30), 2), (_utc(2025, 7, 16, 10, 0, 30), 3), (_utc(2025, 3, 12, 10, 0, 30), 3)],
)
def test_the_servers_clock_follows_the_us_changes(now, offset_h):
    # 2025-03-12: the US moved on 9 March, Europe only on 30 March; the server follows the US.
    assert _terminal(now).symbol_info_tick("XAUUSD").time == int(now.timestamp()) + offset_h * 3600


def test_over_the_weekend_the_last_tick_is_fridays_last_second():
    tick = _terminal(_utc(2025, 1, 18, 12, 0)).symbol_info_tick("USDJPY")  # Saturday
    assert tick.time == _s(2025, 1, 17, 23, 59, 59) and tick.time_msc == tick.time * 1000
    assert tick.bid > 0 and tick.ask > tick.bid


def test_the_week_has_no_weekend_bars():
    mt5 = _terminal(_utc(2025, 1, 20, 2, 30))  # Monday 04:30 on the server
    rates = mt5.copy_rates_from_pos("XAUUSD", fake_mt5.TIMEFRAME_H1, 0, 8)
    opens = [int(t) for t in rates["time"]]
    assert opens[-5:] == [_s(2025, 1, 20, h) for h in range(5)]  # Monday 00:00 .. 04:00 (forming)
    assert opens[:3] == [_s(2025, 1, 17, h) for h in (21, 22, 23)]  # then straight back to Friday
    assert all(datetime.fromtimestamp(t, tz=timezone.utc).weekday() < 5 for t in opens)


@pytest.mark.parametrize("now", [_utc(2025, 1, 15, 10, 0, 30), _utc(2025, 7, 16, 10, 0, 30)])
def test_a_closed_bar_is_the_true_bar_of_its_utc_hour(now):
    mt5 = _terminal(now)
    offset = mt5.symbol_info_tick("USDHUF").time - int(now.timestamp())
    rates = mt5.copy_rates_from_pos("USDHUF", fake_mt5.TIMEFRAME_H1, 1, 3)  # the closed ones
    for row in rates:
        utc_open = int(row["time"]) - offset
        assert (row["open"], row["high"], row["low"], row["close"]) == mt5.true_bar("USDHUF", utc_open, 60)


def test_a_spike_multiplies_that_minutes_prices_by_a_hundred():
    mt5 = _terminal(_utc(2025, 1, 15, 10, 0, 30))
    spiked = _s(2025, 1, 15, 9, 58) // 60
    before = mt5.true_bar("US30", spiked * 60, 1)
    mt5.spikes.add(("US30", spiked))
    assert mt5.true_bar("US30", spiked * 60, 1) == pytest.approx(tuple(p * 100 for p in before), rel=1e-6)
    rates = mt5.copy_rates_from_pos("US30", fake_mt5.TIMEFRAME_M1, 1, 3)
    closes = [float(r["close"]) for r in rates]
    assert closes[1] > 50 * closes[0] and closes[2] < 2 * closes[0]  # 09:58 only, in server time 11:58


def test_an_unknown_timeframe_or_symbol_is_refused_as_the_package_does():
    mt5 = _terminal(_utc(2025, 1, 15, 10, 0, 30))
    assert mt5.copy_rates_from_pos("XAUUSD", fake_mt5.TIMEFRAME_W1, 0, 3) is None
    assert mt5.last_error()[0] == fake_mt5.RES_E_INVALID_PARAMS
    assert mt5.copy_rates_from_pos("NOSUCH", fake_mt5.TIMEFRAME_M1, 0, 3) is None
    assert mt5.last_error()[0] == fake_mt5.RES_E_NOT_FOUND
