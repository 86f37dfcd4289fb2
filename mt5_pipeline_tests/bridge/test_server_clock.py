"""Server-clock times to UTC for the bridge's bookkeeping, with the bars feed's zone: the
offset in force at each time, a fixed or measured one, and none while it is unknown."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mt5_pipeline.bridge.bars import BarFeeder
from mt5_pipeline.bridge.server_clock import server_to_utc
from mt5_pipeline.bridge.terminal import Terminal
from mt5_pipeline_tests.bridge.parts import NOW


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)


def _s(*args: int) -> int:
    return int(_utc(*args).timestamp())


def _feeder(terminal: Terminal, api, store, clock, **zone) -> BarFeeder:
    return BarFeeder(terminal, api, store, ("XAUUSD", "USDJPY"), ("H1",), 10, clock=clock, **zone)


def test_a_zone_converts_each_time_with_the_offset_in_force_then(terminal, api, store, clock):
    bars = _feeder(terminal, api, store, clock, server_time_zone="UTC+2/+3@US")
    winter, summer = _s(2025, 1, 15, 12, 0), _s(2025, 7, 15, 12, 0)  # server wall clock, as deals carry it
    assert server_to_utc(bars, [winter, summer]) == [winter - 2 * 3600, summer - 3 * 3600]


def test_a_time_inside_the_skipped_spring_hour_takes_the_offset_after_the_switch(terminal, api, store, clock):
    # US clocks went forward at 2024-03-10 07:00 UTC: the server jumped from 09:00 to 10:00.
    bars = _feeder(terminal, api, store, clock, server_time_zone="UTC+2/+3@US")
    assert server_to_utc(bars, [_s(2024, 3, 10, 9, 30)]) == [_s(2024, 3, 10, 6, 30)]
    assert server_to_utc(bars, [_s(2024, 3, 10, 8, 59), _s(2024, 3, 10, 10, 0)]) == [
        _s(2024, 3, 10, 6, 59), _s(2024, 3, 10, 7, 0),
    ]  # fmt: skip


def test_a_fixed_offset_from_the_settings_applies_to_every_time(terminal, api, store, clock):
    bars = _feeder(terminal, api, store, clock, utc_offset_hours=3.0)
    summer_and_winter = [_s(2025, 7, 15, 12, 0), _s(2025, 1, 15, 12, 0)]
    assert server_to_utc(bars, summer_and_winter) == [t - 3 * 3600 for t in summer_and_winter]


def test_auto_measures_the_offset_from_the_freshest_tick(terminal, api, store, clock):
    bars = _feeder(terminal, api, store, clock)  # the stand-in terminal runs at UTC+2
    t = int(NOW.timestamp()) + 7200
    assert server_to_utc(bars, [t, t - 60]) == [int(NOW.timestamp()), int(NOW.timestamp()) - 60]


@pytest.mark.parametrize("why", ["no terminal", "a tick off the half hour"])
def test_unknown_until_a_tick_can_say(terminal, mt5, api, store, clock, why):
    if why == "no terminal":
        mt5.shutdown()  # no tick at all
    else:
        mt5.server_offset_s = 2 * 3600 + 7 * 60  # a server clock 7 minutes off: no whole half hour
    bars = _feeder(terminal, api, store, clock)
    assert server_to_utc(bars, [int(NOW.timestamp())]) is None
