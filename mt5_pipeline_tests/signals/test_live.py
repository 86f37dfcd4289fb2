"""The live-signal worker on real parts: the ingest core, features, a trained forest, the
queue and (for the loop) LISTEN/NOTIFY on PostgreSQL or polling on SQLite.

Times are pinned where the rule is about time (forming vs closed, the grace timer); the
loop tests run on the real clock with a wide TTL.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from mt5_pipeline.learning.features import update_features
from mt5_pipeline.learning.training import train_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.live import LiveWorker, parse_notification
from mt5_pipeline_tests.ea_server import wait_for
from mt5_pipeline_tests.orchestration_support import ALWAYS_DECIDE, FAST_MODEL

END = datetime(2025, 10, 27, 11, 29, tzinfo=timezone.utc)  # a Monday; the bar that will form
LIVE = {**FAST_MODEL, **ALWAYS_DECIDE, "SIGNAL_TTL_SECONDS": 60, "LIVE_CLOSE_GRACE_SECONDS": 2}


def _history(end: datetime, n: int = 3000) -> pd.DataFrame:
    return generate_candles(n, end=end, seed=5, with_weekends=False)


def _trained(db_url, settings_for, *, end: datetime = END, now: datetime | None = None, **overrides):
    """A model trained on closed bars up to (not including) `end`; the bar at `end` is held back."""
    settings = settings_for(db_url, **{**LIVE, **overrides})
    history = _history(end)
    now = now or end
    ingest_candles(db_url, "EURUSD", "M1", history.iloc[:-1], now=now)
    update_features(db_url, "EURUSD", "M1", now=now)
    train_model(settings, ["EURUSD"], now=now)
    return settings, history.iloc[[-1]].reset_index(drop=True)


def _partial(bar: pd.DataFrame) -> pd.DataFrame:
    """The same bar 45 s into its minute: a different close, high and volume."""
    partial = bar.copy()
    partial["close"] = partial["open"]
    partial["high"] = partial[["open", "close"]].max(axis=1)
    partial["low"] = partial[["open", "close"]].min(axis=1)
    partial["tick_volume"] = 3
    return partial


def _bar_signal(url: str, bar: datetime):
    return queue.find_bar_signal(url, "EURUSD", "M1", bar)


def test_the_forming_bar_never_becomes_a_signal_and_its_final_version_does(db_url, settings_for):
    settings, final = _trained(db_url, settings_for)
    worker = LiveWorker(settings)
    worker.handle([("EURUSD", "M1")], now=END, trigger="start")  # the bar before END
    before = END - timedelta(minutes=1)
    assert worker.decided[("EURUSD", "M1")] == before

    ingest_candles(db_url, "EURUSD", "M1", _partial(final), now=END + timedelta(seconds=45))
    assert worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=45), trigger="notify") == []
    assert _bar_signal(db_url, END) is None

    ingest_candles(db_url, "EURUSD", "M1", final, now=END + timedelta(seconds=60, milliseconds=300))
    [decision] = worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=60, milliseconds=400), trigger="notify")
    assert decision.bar == END and decision.status == "queued", decision
    signal = _bar_signal(db_url, END)
    assert signal.signal_id == decision.signal_id
    assert signal.price == pytest.approx(float(final["close"].iloc[0]))  # the final close, not the partial one
    # Once per bar: a second wake-up for the same bar does nothing.
    assert worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=61), trigger="timer") == []


def test_the_minute_timer_signals_a_bar_only_ever_sent_while_forming(db_url, settings_for):
    settings, final = _trained(db_url, settings_for)
    worker = LiveWorker(settings)
    worker.handle([("EURUSD", "M1")], now=END, trigger="start")
    partial = _partial(final)
    ingest_candles(db_url, "EURUSD", "M1", partial, now=END + timedelta(seconds=45))
    # Closed by the clock, but its final version may still come within the grace.
    assert worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=61), trigger="poll") == []
    tick = worker.next_tick(END + timedelta(seconds=45))
    assert tick == END + timedelta(seconds=62)  # the close + LIVE_CLOSE_GRACE_SECONDS
    [decision] = worker.handle([("EURUSD", "M1")], now=tick, trigger="timer")
    assert decision.bar == END and decision.status == "queued"
    assert _bar_signal(db_url, END).price == pytest.approx(float(partial["close"].iloc[0]))


def test_a_series_whose_newest_closable_bar_is_decided_is_not_read(db_url, settings_for, monkeypatch):
    # The minute timer's pass goes over every series; the ones the notified pass already
    # decided cannot have a newer closed bar until a whole bar later, and cost no read.
    from mt5_pipeline.signals import live

    settings, final = _trained(db_url, settings_for)
    reads: list[tuple[str, str]] = []
    real = live.read_snapshot

    def counted(url, symbol, timeframe, *args, **kwargs):
        reads.append((symbol, timeframe))
        return real(url, symbol, timeframe, *args, **kwargs)

    monkeypatch.setattr(live, "read_snapshot", counted)
    worker = LiveWorker(settings)
    worker.handle([("EURUSD", "M1")], now=END, trigger="start")
    assert worker.decided[("EURUSD", "M1")] == END - timedelta(minutes=1) and len(reads) == 1
    # Until END + 1 min the bar at END is forming: nothing to read.
    for seconds in (1, 30, 59.9):
        assert worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=seconds), trigger="timer") == []
    assert len(reads) == 1
    ingest_candles(db_url, "EURUSD", "M1", final, now=END + timedelta(seconds=60, milliseconds=200))
    [decision] = worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=60, milliseconds=300))
    assert decision.bar == END and decision.status == "queued" and len(reads) == 2
    assert worker.handle([("EURUSD", "M1")], now=END + timedelta(seconds=62), trigger="timer") == []
    assert len(reads) == 2
    # An H4 series gets no such shortcut (its bars' UTC length changes with the broker's DST).
    worker.decided[("EURUSD", "H4")] = END
    assert not worker._decided_newest(("EURUSD", "H4"), END + timedelta(minutes=1))
    assert worker._decided_newest(("EURUSD", "M1"), END + timedelta(seconds=119))
    assert not worker._decided_newest(("EURUSD", "M1"), END + timedelta(seconds=120))


def test_a_bar_whose_ttl_has_passed_gets_no_signal(db_url, settings_for):
    settings, final = _trained(db_url, settings_for)
    ingest_candles(db_url, "EURUSD", "M1", final, now=END + timedelta(seconds=61))
    [decision] = LiveWorker(settings).handle([("EURUSD", "M1")], now=END + timedelta(seconds=121))
    assert decision.status == "too_late" and "too late" in decision.message
    assert queue.status_counts(db_url)["PENDING"] == 0


def test_a_timeframe_without_model_is_left_alone(db_url, settings_for):
    settings, _ = _trained(db_url, settings_for)
    h1 = generate_candles(400, end=END - timedelta(hours=1), seed=3, with_weekends=False)
    h1 = h1[h1["time"].dt.minute == 0]
    ingest_candles(db_url, "EURUSD", "H1", h1, now=END)
    worker = LiveWorker(settings)
    assert worker.timeframes() == ["M1"]
    assert worker.handle([("EURUSD", "H1")], now=END) == []
    assert queue.status_counts(db_url)["PENDING"] == 0


def test_notification_payloads():
    assert parse_notification("EURUSD M1 1761564540") == (
        ("EURUSD", "M1"),
        datetime(2025, 10, 27, 11, 29, tzinfo=timezone.utc),
    )
    assert parse_notification("XAUUSD.m H1") == (("XAUUSD.m", "H1"), None)
    assert parse_notification("junk") is None and parse_notification("EURUSD X9 1") is None


# ---- the loop, on the real clock ----------------------------------------------------------------


@pytest.mark.slow
def test_the_running_worker_signals_a_closed_bar_as_soon_as_it_is_ingested(db_url, settings_for):
    """PostgreSQL: woken by the ingest's NOTIFY. SQLite: by its poll. Same result."""
    last_closed = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    settings, final = _trained(
        db_url, settings_for, end=last_closed, now=datetime.now(timezone.utc), SIGNAL_TTL_SECONDS=600
    )
    stop = threading.Event()
    worker = LiveWorker(settings)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # The bar before `last_closed` is decided at start; then the bar just ingested.
        assert wait_for(lambda: worker.decided.get(("EURUSD", "M1")) == last_closed - timedelta(minutes=1))
        ingest_candles(db_url, "EURUSD", "M1", final)
        signal = wait_for(lambda: _bar_signal(db_url, last_closed))
        assert signal is not None and signal.price == pytest.approx(float(final["close"].iloc[0]))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def _race_live(url: str, model_dir: str, start_at: float, out) -> None:
    from mt5_pipeline.settings import Settings
    from mt5_pipeline.signals.live import LiveWorker

    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "MODEL_DIR": model_dir,
            **{k: str(v) for k, v in LIVE.items()},
            "SIGNAL_TTL_SECONDS": "600",
        },
        env_file=None,
    )
    worker = LiveWorker(settings)
    worker.timeframes()  # warm: load the sidecar before the start line
    time.sleep(max(0.0, start_at - time.time()))
    out.put(("live", [d.status for d in worker.handle([("EURUSD", "M1")], trigger="notify")]))


def _race_dagster(url: str, model_dir: str, start_at: float, out) -> None:
    import dagster as dg

    from mt5_pipeline.orchestration.assets import signals
    from mt5_pipeline.orchestration.resources import resources_for
    from mt5_pipeline.settings import Settings

    env = {**{k: str(v) for k, v in LIVE.items()}, "SIGNAL_TTL_SECONDS": "600"}
    settings = Settings.from_env({"DATABASE_URL": url, "MODEL_DIR": model_dir, **env}, env_file=None)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    time.sleep(max(0.0, start_at - time.time()))
    result = dg.materialize(
        [signals], partition_key="EURUSD", instance=instance, resources=resources_for(settings, **env)
    )
    out.put(("dagster", [result.asset_materializations_for_node("signals")[0].metadata["decision"].value]))


@pytest.mark.slow
def test_the_hot_path_and_the_sensor_path_racing_on_one_bar_leave_one_signal(pg_url, settings_for):
    last_closed = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    settings, final = _trained(
        pg_url, settings_for, end=last_closed, now=datetime.now(timezone.utc), SIGNAL_TTL_SECONDS=600
    )
    ingest_candles(pg_url, "EURUSD", "M1", final)
    update_features(pg_url, "EURUSD", "M1")  # both processes then only predict and queue
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 8.0  # after both processes have imported what they need
    procs = [
        ctx.Process(target=f, args=(pg_url, str(settings.model_dir), start_at, out))
        for f in (_race_live, _race_dagster)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    statuses = sorted(results["live"] + results["dagster"])
    assert statuses == ["duplicate", "queued"], results
    assert queue.status_counts(pg_url)["PENDING"] == 1
    assert _bar_signal(pg_url, last_closed) is not None


def test_processes_split_the_symbols_between_them_without_overlap(sqlite_url, settings_for):
    settings = settings_for(sqlite_url)
    symbols = [f"{a}{b}" for a in ("EUR", "GBP", "AUD", "NZD", "USD") for b in ("CAD", "CHF", "JPY", "SEK")]
    shards = [LiveWorker(settings, shard=(i, 2)) for i in range(2)]
    owned = [{s for s in symbols if w.owns((s, "M1"))} for w in shards]
    assert owned[0] | owned[1] == set(symbols) and not owned[0] & owned[1]
    assert owned[0] and owned[1]  # both do some of the work
    assert all(LiveWorker(settings).owns((s, "M1")) for s in symbols)


def test_the_prediction_from_the_tails_row_is_the_one_read_back_from_the_database(db_url, settings_for):
    from mt5_pipeline.learning.model import predict_latest, predict_row
    from mt5_pipeline.market.extremes import EXTREME_CHECK_WINDOW, unconfirmed_extreme_in
    from mt5_pipeline.storage.candles import read_candles

    settings, final = _trained(db_url, settings_for)
    worker = LiveWorker(settings)
    key = ("EURUSD", "M1")
    worker.handle([key], now=END, trigger="start")
    ingest_candles(db_url, "EURUSD", "M1", final, now=END + timedelta(seconds=60, milliseconds=300))
    at = END + timedelta(seconds=60, milliseconds=400)
    [decision] = worker.handle([key], now=at, trigger="notify")
    assert decision.feature_path == "tail" and decision.status == "queued", decision

    row = worker.tails.feature_row(key, END)
    assert row is not None  # the decision above was predicted from it, not read back
    from_memory = predict_row(settings, "EURUSD", "M1", row)
    from_database = predict_latest(settings, "EURUSD", "M1", now=at, bar=END)
    assert from_memory == from_database
    assert _bar_signal(db_url, END).meta["probability"] == pytest.approx(round(from_database.probability, 6), abs=0)

    # The extreme-bar guard's window from the tail is the stored candles' window.
    window = worker.tails.bars_until(key, END, EXTREME_CHECK_WINDOW)
    stored = read_candles(db_url, "EURUSD", "M1", end=END, last_n=EXTREME_CHECK_WINDOW)
    assert len(window) == len(stored) == EXTREME_CHECK_WINDOW
    for column in ("ts", "high", "low", "close"):
        assert (window[column].to_numpy() == stored[column].to_numpy()).all(), column
    assert unconfirmed_extreme_in(window, "EURUSD", "M1") is None
    # A bar the tail does not end at, or does not hold, is left to the database read.
    assert worker.tails.bars_until(key, END + timedelta(minutes=1), EXTREME_CHECK_WINDOW) is None
    assert worker.tails.feature_row(key, END + timedelta(minutes=1)) is None


def test_a_series_taken_over_or_restarted_does_not_decide_its_bar_again(db_url, settings_for):
    """The kill run's extra run-less events: a worker taking a series over re-decided the
    bar the dead worker had decided ("duplicate", a second `signals` event for the bar).
    Seeded from live_decisions, it leaves that bar alone and decides the next one."""
    settings, final = _trained(db_url, settings_for)
    key = ("EURUSD", "M1")
    before = END - timedelta(minutes=1)
    [first] = LiveWorker(settings).handle([key], now=END, trigger="start")
    assert first.bar == before and first.status == "queued", first

    # Without the seed the bar is decided again: the queue's index answers "duplicate".
    [again] = LiveWorker(settings).handle([key], now=END, trigger="takeover")
    assert again.bar == before and again.status == "duplicate", again

    heir = LiveWorker(settings)
    heir.seed_decided([key, ("GBPUSD", "M1")])
    assert heir.decided == {key: before}
    assert heir.handle([key], now=END, trigger="takeover") == []
    # Nothing to decide, but the tail is built now: the next bar is one row, not the batch path.
    assert heir.tails.window(key) is not None
    ingest_candles(db_url, "EURUSD", "M1", final, now=END + timedelta(seconds=60, milliseconds=300))
    [next_bar] = heir.handle([key], now=END + timedelta(seconds=60, milliseconds=400), trigger="notify")
    assert next_bar.bar == END and next_bar.status == "queued", next_bar
    assert next_bar.feature_path == "tail", next_bar
