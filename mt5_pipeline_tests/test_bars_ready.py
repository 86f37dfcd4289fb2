"""One rule for which bar is ready, on every path: the newest closed bar whose final
version is in, or whose LIVE_CLOSE_GRACE_SECONDS have passed (mt5_pipeline.storage.candles.ready_bar).

Each path is shown a bar's forming version stored before its close, asked inside the
grace (it must decide the bar before, never lock in the forming one: the database keeps
one signal per bar), then the final version arriving inside the grace (it must decide the
bar from that). The live worker and generate_signal run on a pinned clock; the API and
the Dagster predict job read the real one, so their bars are placed around it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from mt5_pipeline.bars import ready_among
from mt5_pipeline.clock import iso_z
from mt5_pipeline.learning.features import update_features
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.signals.generation import generate_signal
from mt5_pipeline.signals.live import LiveWorker
from mt5_pipeline_tests.api_support import KEYS, api_client
from mt5_pipeline_tests.orchestration_support import resources_for
from mt5_pipeline_tests.signals.test_live import END, LIVE, _bar_signal, _history, _partial, _trained

BEFORE = END - timedelta(minutes=1)


def test_the_rule():
    close = END + timedelta(minutes=1)
    forming = (END, END + timedelta(seconds=45))
    final = (END, close + timedelta(milliseconds=300))
    rule = dict(grace_seconds=2)
    assert (
        ready_among(forming, BEFORE, "M1", now=END + timedelta(seconds=50), **rule).bar == BEFORE
    )  # forming by the clock
    waiting = ready_among(forming, BEFORE, "M1", now=close + timedelta(seconds=1), **rule)
    assert (waiting.bar, waiting.waiting, waiting.until) == (BEFORE, END, close + timedelta(seconds=2))
    assert ready_among(forming, BEFORE, "M1", now=close + timedelta(seconds=2), **rule).bar == END  # the grace ran out
    assert ready_among(final, BEFORE, "M1", now=close + timedelta(seconds=1), **rule).bar == END  # sent after its close
    assert (
        ready_among(forming, BEFORE, "M1", now=close + timedelta(seconds=1), final=END, **rule).bar == END
    )  # NOTIFY said so
    assert ready_among(forming, None, "M1", now=close + timedelta(seconds=1), **rule).bar is None
    assert not ready_among(None, None, "M1", **rule).stored


@pytest.mark.parametrize("path", ["generate_signal", "worker"])
def test_a_final_version_inside_the_grace_wins_on_the_pinned_paths(db_url, settings_for, path):
    settings, final = _trained(db_url, settings_for, SIGNAL_TTL_SECONDS=120)
    partial = _partial(final)
    ingest_candles(db_url, "EURUSD", "M1", partial, now=END + timedelta(seconds=45))
    worker = LiveWorker(settings)

    def decide(at: datetime):
        if path == "worker":
            decisions = worker.handle([("EURUSD", "M1")], now=at, trigger="notify")
            return [(d.bar, d.status) for d in decisions]
        result = generate_signal(settings, "EURUSD", "M1", now=at, refresh_features=True)
        return [(result.bar, result.status)]

    # Inside the grace, with the bar before undecided (a start): that bar, not the newer one.
    assert decide(END + timedelta(seconds=61)) == [(BEFORE, "queued")]
    assert _bar_signal(db_url, END) is None
    ingest_candles(db_url, "EURUSD", "M1", final, now=END + timedelta(seconds=61, milliseconds=500))
    assert decide(END + timedelta(seconds=61, milliseconds=600)) == [(END, "queued")]
    assert _bar_signal(db_url, END).price == pytest.approx(float(final["close"].iloc[0]))  # the final close


def test_generate_signal_answers_not_ready_when_nothing_before_is_stored(db_url, settings_for):
    settings = settings_for(db_url, **LIVE)
    bar = _partial(_history(END, n=2).iloc[[-1]].reset_index(drop=True))
    ingest_candles(db_url, "EURUSD", "M1", bar, now=END + timedelta(seconds=45))
    result = generate_signal(settings, "EURUSD", "M1", now=END + timedelta(seconds=61))
    assert result.status == "not_ready" and result.bar == END and result.signal is None
    assert iso_z(END + timedelta(seconds=62)) in result.message and "LIVE_CLOSE_GRACE_SECONDS" in result.message


def test_inside_the_grace_a_bar_before_past_its_deadline_is_not_ready_not_too_late(db_url, settings_for):
    """The demo met this when a minute turned as it asked: the bar before is past its TTL,
    the newest closed bar is seconds from ready. "Ask again at retry_at" is the honest
    answer; "too late" reads as a dead feed. Once the grace has passed, the newest bar is
    decided."""
    settings, _final = _trained(db_url, settings_for, SIGNAL_TTL_SECONDS=30)
    ingest_candles(db_url, "EURUSD", "M1", _partial(_final), now=END + timedelta(seconds=45))
    result = generate_signal(settings, "EURUSD", "M1", True, now=END + timedelta(seconds=61), refresh_features=True)
    assert (result.status, result.bar, result.signal) == ("not_ready", END, None)
    assert result.figures == {"retry_at": iso_z(END + timedelta(seconds=62))}
    after = generate_signal(
        settings, "EURUSD", "M1", True, now=END + timedelta(seconds=62, milliseconds=100), refresh_features=True
    )
    assert (after.status, after.bar) == ("queued", END)


def _real_clock_bars(db_url, settings_for):
    """A model, and the bar that closed at the last minute boundary stored only as its
    forming version, with a grace long enough to act inside it."""
    if datetime.now(timezone.utc).second >= 40:  # leave the minute's first 40 s for the test
        time.sleep(61 - datetime.now(timezone.utc).second)
    close = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    end = close - timedelta(minutes=1)
    settings, final = _trained(
        db_url,
        settings_for,
        end=end,
        now=end,
        LIVE_CLOSE_GRACE_SECONDS=59,
        SIGNAL_TTL_SECONDS=600,
        SIGNAL_MAX_BAR_AGE_SECONDS=600,
    )
    ingest_candles(db_url, "EURUSD", "M1", _partial(final), now=end + timedelta(seconds=45))
    update_features(db_url, "EURUSD", "M1")
    assert datetime.now(timezone.utc) < close + timedelta(seconds=59), "the set-up took longer than the grace"
    return settings, final, end


@pytest.mark.anyio
async def test_a_final_version_inside_the_grace_wins_on_the_api(db_url, settings_for):
    settings, final, end = _real_clock_bars(db_url, settings_for)
    settings = settings_for(
        db_url,
        **{
            **LIVE,
            "LIVE_CLOSE_GRACE_SECONDS": 59,
            "SIGNAL_TTL_SECONDS": 600,
            "SIGNAL_MAX_BAR_AGE_SECONDS": 600,
            "API_KEYS": KEYS,
        },
    )
    async with api_client(settings) as client:
        first = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "timeframe": "M1"})
        assert first.status_code == 200 and first.json()["signal"]["timestamp"] == iso_z(end - timedelta(minutes=1)), (
            first.text
        )
        ingest_candles(db_url, "EURUSD", "M1", final)  # stamped by the database clock: after the close
        second = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "timeframe": "M1"})
        body = second.json()
        assert second.status_code == 200 and body["signal"]["timestamp"] == iso_z(end), second.text
        assert body["signal"]["price"] == pytest.approx(float(final["close"].iloc[0]))


def test_a_final_version_inside_the_grace_wins_on_the_dagster_predict_job(db_url, settings_for):
    from mt5_pipeline.orchestration.assets import signals

    settings, final, end = _real_clock_bars(db_url, settings_for)
    overrides = {**LIVE, "LIVE_CLOSE_GRACE_SECONDS": 59, "SIGNAL_TTL_SECONDS": 600, "SIGNAL_MAX_BAR_AGE_SECONDS": 600}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    resources = resources_for(settings_for(db_url, **overrides), **overrides)

    def run():
        result = dg.materialize([signals], partition_key="EURUSD", instance=instance, resources=resources)
        meta = result.asset_materializations_for_node("signals")[0].metadata
        return meta["decision"].value, meta["bar"].value if "bar" in meta else None

    assert run() == ("queued", (end - timedelta(minutes=1)).isoformat())
    ingest_candles(db_url, "EURUSD", "M1", final)
    update_features(db_url, "EURUSD", "M1")  # the features asset's part
    assert run() == ("queued", end.isoformat())
    assert _bar_signal(db_url, end).price == pytest.approx(float(final["close"].iloc[0]))


@pytest.mark.slow
def test_the_grace_timer_fires_while_other_eas_post_every_second(pg_url, settings_for):
    """EURUSD's EA sends only forming bars (no notification of a closed bar ever comes for
    it); three others post their closed bar back to back, so the worker is woken all the
    time (a pass always in flight when the grace runs out). The minute's grace pass must
    still decide EURUSD's bar: before, a tick passed during a notified pass was dropped."""
    if datetime.now(timezone.utc).second >= 40:
        time.sleep(61 - datetime.now(timezone.utc).second)
    close = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    end = close - timedelta(minutes=1)
    settings, final = _trained(pg_url, settings_for, end=end, now=end, SIGNAL_TTL_SECONDS=600)
    ingest_candles(pg_url, "EURUSD", "M1", _partial(final), now=end + timedelta(seconds=45))
    # The grace runs out a few seconds from now, while the others keep posting.
    grace = (datetime.now(timezone.utc) - close).total_seconds() + 4
    assert grace < 60, "the set-up took longer than a minute"
    settings = settings_for(pg_url, **{**LIVE, "SIGNAL_TTL_SECONDS": 600, "LIVE_CLOSE_GRACE_SECONDS": grace})
    others = {s: _history(end, n=5).reset_index(drop=True) for s in ("GBPUSD", "USDJPY", "AUDUSD")}
    stop = threading.Event()

    def post_every_second():
        n = 0
        while not stop.is_set():
            for symbol, bars in others.items():
                bars = bars.copy()
                bars["tick_volume"] = bars["tick_volume"] + n  # a new version each time
                ingest_candles(pg_url, symbol, "M1", bars)
            n += 1

    def repeat_the_news():
        # Besides the ingests' own notifications, the same news repeated back to back (as
        # many EAs re-sending their closed bars would): the worker never waits for one.
        import psycopg2

        from mt5_pipeline.storage.candles import CANDLES_CHANNEL

        conn = psycopg2.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    for symbol in others:
                        cur.execute(
                            "SELECT pg_notify(%s, %s)", (CANDLES_CHANNEL, f"{symbol} M1 {int(end.timestamp())}")
                        )
                    time.sleep(0.001)
        finally:
            conn.close()

    worker = LiveWorker(settings)
    threads = [
        threading.Thread(target=post_every_second, daemon=True),
        threading.Thread(target=repeat_the_news, daemon=True),
        threading.Thread(target=worker.run, args=(stop,), kwargs={"listen": True}, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _bar_signal(pg_url, end) is None:
            time.sleep(0.1)
        signal = _bar_signal(pg_url, end)
        assert signal is not None, "the grace pass never ran while notifications streamed in"
        assert signal.price == pytest.approx(float(_partial(final)["close"].iloc[0]))  # the stored (forming) version
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
