"""The bars feed on the stand-in terminal (server at UTC+2) to a scripted API on loopback:
closed bars only, each sent until taken, refused ones skipped, and the wake-up times."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from mt5_pipeline.bridge.bars import CLOSE_GRACE_SECONDS, BarFeeder, candle, instrument_fields
from mt5_pipeline.bridge.fake_mt5 import RATES_DTYPE, FakeMT5
from mt5_pipeline_tests.bridge.parts import NOW, OFFSET_S, bridge_settings, connected

LAST_CLOSED = int(NOW.timestamp()) // 60 * 60 - 60  # 09:59 UTC: 10:00 is still forming


def _feeder(terminal, api, store, clock, symbols=("XAUUSD",), timeframes=("M1",), **kw) -> BarFeeder:
    return BarFeeder(
        terminal, api, store, symbols, timeframes, 5, server_time_zone=kw.pop("zone", "UTC+2"), clock=clock, **kw
    )


def test_a_rate_becomes_the_apis_candle():
    rate = np.array([(1736942400, 2390.5, 2391.25, 2389.75, 2390.0, 321, 30, 7)], dtype=RATES_DTYPE)[0]
    assert candle(rate, OFFSET_S) == {
        "time": 1736942400 - OFFSET_S, "open": 2390.5, "high": 2391.25, "low": 2389.75, "close": 2390.0,
        "tick_volume": 321, "spread": 30, "real_volume": 7,
    }  # fmt: skip


def test_the_instrument_goes_with_its_bars(terminal):
    assert instrument_fields(terminal.select("XAUUSD")) == {"digits": 2, "point": 0.01}
    assert instrument_fields(terminal.select("US30")) == {"digits": 0, "point": 1.0}


def test_the_first_cycle_sends_the_history_in_server_time_without_the_forming_bar(terminal, api, peer, store, clock):
    feeder = _feeder(terminal, api, store, clock, symbols=("XAUUSD", "USDJPY"))
    assert feeder.cycle() == 10
    gold, yen = peer.calls("/ingest")
    times = [c["time"] for c in gold.body["candles"]]
    assert times == [LAST_CLOSED - 60 * i + OFFSET_S for i in range(4, -1, -1)]  # server clock, oldest first
    assert (gold.body["server_time_zone"], gold.body["partial"], gold.body["digits"]) == ("UTC+2", True, 2)
    assert yen.body["symbol"] == "USDJPY" and yen.body["digits"] == 3
    assert store.last_bar("XAUUSD", "M1") == LAST_CLOSED and feeder.status[("USDJPY", "M1")].bars_sent == 5


def test_each_cycle_sends_only_what_closed_since_with_the_last_bar_again(terminal, api, peer, store, clock):
    feeder = _feeder(terminal, api, store, clock)
    feeder.cycle()
    assert feeder.cycle() == 0 and len(peer.calls("/ingest")) == 1  # nothing closed since
    clock.advance(60)
    assert feeder.cycle() == 1
    resent, new = (c["time"] - OFFSET_S for c in peer.calls("/ingest")[-1].body["candles"])
    assert (resent, new) == (LAST_CLOSED, LAST_CLOSED + 60)  # a late tick may have changed the last one
    assert store.last_bar("XAUUSD", "M1") == LAST_CLOSED + 60


def test_an_api_outage_skips_nothing(terminal, api, peer, store, clock):
    feeder = _feeder(terminal, api, store, clock)
    feeder.cycle()
    peer.answer("/ingest", (503, {}))
    clock.advance(60)
    assert feeder.cycle() == 0
    status = feeder.status[("XAUUSD", "M1")]
    assert status.api_error and "HTTP 503" in status.last_error and store.last_bar("XAUUSD", "M1") == LAST_CLOSED
    clock.advance(120)
    assert feeder.cycle() == 3 and not status.api_error and status.last_error == ""
    sent = [c["time"] - OFFSET_S for c in peer.calls("/ingest")[-1].body["candles"]]
    assert sent == [LAST_CLOSED + 60 * i for i in range(4)]
    assert store.last_bar("XAUUSD", "M1") == LAST_CLOSED + 180


def test_bars_the_api_refuses_are_counted_reported_and_passed(terminal, api, peer, store, clock):
    errors = [{"loc": "candles.2.high", "message": "beyond PRICE_MAX_JUMP"}]
    peer.answer("/ingest", (200, {"inserted": 4, "rejected": 1, "errors": errors}))
    feeder = _feeder(terminal, api, store, clock)
    assert feeder.cycle() == 4
    status = feeder.status[("XAUUSD", "M1")]
    assert status.bars_skipped == 1 and status.last_skipped == "candles.2.high: beyond PRICE_MAX_JUMP"
    assert store.last_bar("XAUUSD", "M1") == LAST_CLOSED


def test_the_terminal_gone_stops_the_cycle_and_says_so(terminal, mt5, api, peer, store, clock):
    mt5.shutdown()
    mt5.available = False
    feeder = _feeder(terminal, api, store, clock, symbols=("XAUUSD", "USDHUF"))
    assert feeder.cycle() == 0 and peer.calls("/ingest") == []
    assert {s.last_error for s in feeder.status.values()} == {"the terminal is not reachable"}


def test_auto_measures_the_servers_offset_and_waits_while_it_cannot(api, peer, store, clock, tmp_path):
    terminal = connected(FakeMT5(clock=clock, server_offset_hours=3), bridge_settings(tmp_path))
    feeder = BarFeeder(terminal, api, store, ("DE40",), ("M1",), 5, clock=clock)
    assert feeder.offset_seconds() == 3 * 3600 and feeder.zone().name == "UTC+3"
    terminal.mt5.server_offset_s = 3 * 3600 + 600  # a clock ten minutes off: no measure
    fresh = BarFeeder(terminal, api, store, ("DE40",), ("M1",), 5, clock=clock)
    assert fresh.cycle() == 0 and "waiting for a fresh tick" in fresh.status[("DE40", "M1")].last_error


@pytest.mark.parametrize(
    ("zone", "timeframes", "wait"),
    [
        ("UTC+2", ("H4",), timedelta(hours=3, minutes=59, seconds=30)),  # server 12:00:30: the H4 closes at 16:00
        ("UTC+3", ("H4",), timedelta(hours=2, minutes=59, seconds=30)),  # server 13:00:30
        ("UTC+2", ("H4", "M1"), timedelta(seconds=30)),
        ("UTC+2", ("W1",), timedelta(seconds=60)),  # checked every minute
    ],
)
def test_the_loop_wakes_at_the_next_close_on_the_servers_clock(terminal, api, store, clock, zone, timeframes, wait):
    feeder = _feeder(terminal, api, store, clock, timeframes=timeframes, zone=zone)
    assert feeder.seconds_to_next_close() == pytest.approx(wait.total_seconds() + CLOSE_GRACE_SECONDS)
