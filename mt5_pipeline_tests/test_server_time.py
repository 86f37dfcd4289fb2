"""The trade server's clock: zones with daylight saving, per-bar conversion, the offset a
bar was stored with, and a refused bar that stalls nothing (partial ingest).

The bridge tests run the real API on loopback and the real bridge on a stand-in terminal
whose server runs at UTC+2 in winter and UTC+3 in summer (US dates) and has no bars at
weekends (mt5_pipeline.bridge.fake_zone)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pytest

from mt5_pipeline.bridge.fake_zone import ZonedFakeMT5
from mt5_pipeline.market.ingest import CandleValidationError, ingest_candles
from mt5_pipeline.server_time import ZoneError, parse_zone
from mt5_pipeline.storage.candles import read_candles
from mt5_pipeline.storage.offsets import offset_runs
from mt5_pipeline_tests.api_support import KEYS, api_client, bars
from mt5_pipeline_tests.bridge_support import ManualClock, build_rig

H = 3600
# The US switched to summer time on Sunday 2025-03-09: the server went from UTC+2 to UTC+3.
WINTER_THU = datetime(2025, 3, 6, 12, 0, 5, tzinfo=timezone.utc)
SUMMER_WED = datetime(2025, 3, 12, 10, 0, 5, tzinfo=timezone.utc)


def epoch(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


# ---- the zone -------------------------------------------------------------------------------


def test_a_broker_convention_converts_each_bar_with_its_own_offset():
    zone = parse_zone("UTC+2/+3@US")
    server = np.array([epoch(2025, 3, 7, 10), epoch(2025, 3, 10, 10), epoch(2025, 10, 31, 10), epoch(2025, 11, 3, 10)])
    utc, ok = zone.to_utc(server)
    assert ok.all()
    assert (server - utc).tolist() == [2 * H, 3 * H, 3 * H, 2 * H]  # US dates: Mar 9 and Nov 2, 2025
    assert (zone.to_server(utc) == server).all()
    athens = parse_zone("Europe/Athens")  # EU dates: Mar 30 and Oct 26, 2025
    assert (
        np.array([epoch(2025, 3, 28, 10), epoch(2025, 3, 31, 10)])
        - athens.to_utc(np.array([epoch(2025, 3, 28, 10), epoch(2025, 3, 31, 10)]))[0]
    ).tolist() == [2 * H, 3 * H]
    assert parse_zone("utc+3").name == "UTC+3" and parse_zone("UTC+2/+3@EU").to_utc(np.array([epoch(2025, 7, 1)]))[0][
        0
    ] == epoch(2025, 6, 30, 21)


def test_a_skipped_server_time_is_not_converted():
    # Europe/Athens skips 03:00-04:00 on 2025-03-30.
    _, ok = parse_zone("Europe/Athens").to_utc(np.array([epoch(2025, 3, 30, 3, 30), epoch(2025, 3, 30, 4, 30)]))
    assert ok.tolist() == [False, True]


@pytest.mark.parametrize("text", ["Mars/Olympus", "UTC+15", "UTC+2/+4@US", "UTC+2/+3@XX", "", "x" * 100])
def test_an_unreadable_zone_says_what_is_accepted(text):
    with pytest.raises(ZoneError, match="UTC|zone|offset"):
        parse_zone(text)


# ---- ingest ----------------------------------------------------------------------------------


def h1_server_bars(server_opens: list[int]) -> list[dict]:
    return [{"time": t, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15, "tick_volume": 5} for t in server_opens]


def test_ingest_converts_server_times_bar_by_bar_and_checks_the_servers_day(db_url):
    # D1 bars open at 00:00 server time: 22:00 UTC in winter, 21:00 UTC in summer.
    server = [epoch(2025, 3, 6), epoch(2025, 3, 7), epoch(2025, 3, 10), epoch(2025, 3, 11)]
    result = ingest_candles(db_url, "EURUSD", "D1", h1_server_bars(server), server_time_zone="UTC+2/+3@US")
    assert result.inserted == 4
    stored = [int(t.timestamp()) for t in read_candles(db_url, "EURUSD", "D1")["ts"]]
    assert stored == [server[0] - 2 * H, server[1] - 2 * H, server[2] - 3 * H, server[3] - 3 * H]
    assert offset_runs(db_url, "EURUSD", "D1") == [(stored[0], stored[1], 2 * H), (stored[2], stored[3], 3 * H)]
    # A UTC-midnight time is not a day of this server, whichever offset is in force.
    with pytest.raises(CandleValidationError, match=r"D1 bars open at 00:00 server time \(UTC\+2/\+3@US\)"):
        ingest_candles(db_url, "EURUSD", "D1", h1_server_bars([epoch(2025, 3, 12, 3)]), server_time_zone="UTC+2/+3@US")


def test_a_bar_resent_with_another_offset_is_refused_and_the_stored_one_kept(db_url):
    # Stored from a +2 server in winter: server 13:00 is 11:00 UTC.
    first = ingest_candles(
        db_url, "EURUSD", "H1", h1_server_bars([epoch(2025, 3, 6, 13), epoch(2025, 3, 6, 14)]), server_time_zone="UTC+2"
    )
    assert first.inserted == 2
    before = read_candles(db_url, "EURUSD", "H1")
    # After the change a bridge with a measured +3 re-sends server 14:00 as 11:00 UTC: another bar.
    moved = [{**b, "open": 1.12} for b in h1_server_bars([epoch(2025, 3, 6, 14), epoch(2025, 3, 6, 16)])]
    with pytest.raises(
        CandleValidationError,
        match=r"candles\[0\]\.time: the bar at 2025-03-06T11:00:00Z was stored converted .* UTC\+2; .* UTC\+3",
    ):
        ingest_candles(db_url, "EURUSD", "H1", moved, server_time_zone="UTC+3")
    partial = ingest_candles(db_url, "EURUSD", "H1", moved, server_time_zone="UTC+3", partial=True)
    assert partial.rejected == 1 and partial.inserted == 1 and partial.errors[0].loc == "candles[0].time"
    after = read_candles(db_url, "EURUSD", "H1")
    assert after.iloc[:2].equals(before)  # nothing stored changed, not even ingested_at
    # The same offset again (a retry) is fine; and a client that names no conversion is not checked.
    assert (
        ingest_candles(
            db_url, "EURUSD", "H1", h1_server_bars([epoch(2025, 3, 6, 13)]), server_time_zone="UTC+2"
        ).unchanged
        == 1
    )
    assert ingest_candles(db_url, "EURUSD", "H1", h1_server_bars([epoch(2025, 3, 6, 11)])).unchanged == 1


@pytest.mark.anyio
async def test_the_api_takes_a_zone_and_partial_batches(db_url, settings_for):
    settings = settings_for(db_url, api_keys=KEYS)
    good = bars(5, timeframe_seconds=60)
    spike = [dict(b) for b in good]
    spike[2] = {**spike[2], "high": spike[2]["high"] * 100}
    async with api_client(settings) as client:
        whole = await client.post("/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": spike})
        assert whole.status_code == 422  # the seed's reject-all stays the default
        assert read_candles(db_url, "EURUSD", "M1").empty
        answer = await client.post(
            "/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": spike, "partial": True}
        )
        body = answer.json()
        assert answer.status_code == 200, body
        assert body["inserted"] == 4 and body["rejected"] == 1 and body["errors"][0]["loc"] == "candles[2].high"
        bad_zone = await client.post(
            "/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": good, "server_time_zone": "Mars/Olympus"}
        )
        assert bad_zone.status_code == 422 and bad_zone.json()["details"][0]["loc"] == "server_time_zone"
        both = await client.post(
            "/ingest",
            json={
                "symbol": "EURUSD",
                "timeframe": "M1",
                "candles": good,
                "server_time_zone": "UTC+2",
                "utc_offset_hours": 2,
            },
        )
        assert both.status_code == 422 and "not both" in both.text
        metrics = (await client.get("/metrics")).text
        assert "mt5_candles_rejected_total 1.0" in metrics
        schema = (await client.get("/openapi.json")).json()
        ingest_schema = schema["components"]["schemas"]["IngestRequest"]["properties"]
        assert "server_time_zone" in ingest_schema and "partial" in ingest_schema
        assert "rejected" in schema["components"]["schemas"]["IngestResponse"]["properties"]


def test_a_bad_row_in_a_partial_batch_keeps_every_other_rule():
    # A batch-level problem (an unknown timeframe) still refuses everything.
    with pytest.raises(CandleValidationError, match="timeframe"):
        ingest_candles("sqlite:///:memory:", "EURUSD", "M7", bars(2), partial=True)


# ---- the bridge on a server with daylight saving and weekends ---------------------------------------


def zoned_rig(url, tmp_path, start: datetime, **env):
    clock = ManualClock(start)
    mt5 = ZonedFakeMT5(clock=clock, history_minutes=60 * 24 * 60)
    env = {"BRIDGE_TIMEFRAMES": "H1", "BRIDGE_SYMBOLS": "EURUSD", "BRIDGE_HISTORY_BARS": "400", **env}
    return build_rig(url, tmp_path, clock=clock, mt5=mt5, **env)


def assert_true_bars(rig, frame):
    for row in frame.itertuples():
        ts = int(row.ts.timestamp())
        assert (row.open, row.high, row.low, row.close) == rig.mt5.true_bar("EURUSD", ts, 60), (
            f"bar at {row.ts} holds another hour's prices"
        )


def test_history_across_a_change_lands_every_bar_at_its_true_utc_time(db_url, tmp_path):
    rig = zoned_rig(db_url, tmp_path, SUMMER_WED, BRIDGE_SERVER_TIME_ZONE="UTC+2/+3@US")
    try:
        assert rig.bridge.bars.cycle() == 400
        frame = read_candles(rig.url, "EURUSD", "H1")
        assert len(frame) == 400 and frame["ts"].min() < datetime(
            2025, 3, 7, tzinfo=timezone.utc
        )  # the history crosses the change
        assert_true_bars(rig, frame)
        server_days = [rig.mt5.zone.to_server(int(t.timestamp()))[0] // 86400 for t in frame["ts"]]
        assert all((d + 3) % 7 < 5 for d in server_days)  # no bar at a weekend
        _, health = rig.bridge.health()
        assert health["server_time_zone"] == "UTC+2/+3@US" and health["bars_skipped"] == 0
    finally:
        rig.close()


@pytest.mark.parametrize("zone", ["auto", "UTC+2/+3@US"])
def test_a_catch_up_across_a_change_overwrites_nothing(sqlite_url, tmp_path, zone, caplog):
    caplog.set_level(logging.WARNING, logger="mt5_pipeline")
    rig = zoned_rig(sqlite_url, tmp_path, WINTER_THU, BRIDGE_SERVER_TIME_ZONE=zone)
    try:
        assert rig.bridge.bars.cycle() == 400  # winter: +2, measured or from the zone, is right
        before = read_candles(rig.url, "EURUSD", "H1")
        assert_true_bars(rig, before)
        rig.clock.now = SUMMER_WED  # an outage over the weekend of the change
        rig.bridge.bars.cycle()
        after = read_candles(rig.url, "EURUSD", "H1")
        kept = after[after["ts"] <= before["ts"].max()].iloc[: len(before)]
        assert kept.reset_index(drop=True).equals(before)  # every bar stored before: untouched
        newest = after[after["ts"] >= datetime(2025, 3, 10, tzinfo=timezone.utc)]
        assert len(newest) > 30
        assert_true_bars(rig, newest)  # summer bars converted with +3 either way
        _, health = rig.bridge.health()
        if zone == "auto":
            assert "BRIDGE_SERVER_TIME_ZONE is auto" in caplog.text
            # The first re-sent winter bar, converted with +3, would have replaced the last bar
            # stored with +2: refused, counted, and the feed went on.
            assert health["bars_skipped"] >= 1 and "stored converted" in health["bars"]["EURUSD H1"]["last_skipped"]
        else:
            assert health["bars_skipped"] == 0
            assert_true_bars(rig, after)
    finally:
        rig.close()


def test_a_bad_tick_is_skipped_and_reported_and_the_feed_goes_on(sqlite_url, tmp_path):
    rig = zoned_rig(sqlite_url, tmp_path, SUMMER_WED, BRIDGE_SERVER_TIME_ZONE="UTC+2/+3@US", BRIDGE_HISTORY_BARS="50")
    try:
        bad_minute = (epoch(2025, 3, 11, 15) // 60) + 30
        rig.mt5.spikes.add(("EURUSD", bad_minute))
        assert rig.bridge.bars.cycle() == 49
        stored = {int(t.timestamp()) for t in read_candles(rig.url, "EURUSD", "H1")["ts"]}
        assert epoch(2025, 3, 11, 15) not in stored and len(stored) == 49
        status, health = rig.bridge.health()
        assert health["bars_skipped"] == 1 and "PRICE_MAX_JUMP" in health["bars"]["EURUSD H1"]["last_skipped"]
        assert health["bars"]["EURUSD H1"]["last_bar"] == "2025-03-12T09:00:00Z"  # advanced past it
        rig.clock.advance(H)
        assert rig.bridge.bars.cycle() == 1  # the next bar comes as usual
    finally:
        rig.close()


def test_an_mt5_export_is_imported_bar_by_bar_with_the_zone(db_url, settings_for, tmp_path):
    from mt5_pipeline.market.mt5_csv import import_file

    # "Export Bars" lines in server time, on both sides of the US change (9 March 2025).
    lines = ["<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"]
    for day, hour in ((7, 10), (7, 11), (10, 10), (10, 11)):
        lines.append(f"2025.03.{day:02d}\t{hour:02d}:00:00\t1.1\t1.2\t1.0\t1.15\t5\t0\t1")
    path = tmp_path / "EURUSD_H1.csv"
    path.write_text("\n".join(lines) + "\n")
    settings = settings_for(db_url)
    report = import_file(
        settings, path, symbol="EURUSD", timeframe="H1", server_time_zone="UTC+2/+3@US", progress=False
    )
    assert report.inserted == 4
    stored = [int(t.timestamp()) for t in read_candles(db_url, "EURUSD", "H1")["ts"]]
    assert stored == [epoch(2025, 3, 7, 8), epoch(2025, 3, 7, 9), epoch(2025, 3, 10, 7), epoch(2025, 3, 10, 8)]
