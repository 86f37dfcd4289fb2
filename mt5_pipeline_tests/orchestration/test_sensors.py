"""Sensors and the schedule evaluated with Dagster's own contexts against a real database."""

import json
import time
from datetime import timedelta

import dagster as dg

from mt5_pipeline.learning.training import train_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.orchestration.sensors import RECORD_QUIET
from mt5_pipeline.signals.queue import enqueue
from mt5_pipeline_tests.orchestration_support import FAST_MODEL, defs_for, load_symbols, minute_now


def _tick(defs, instance, name, cursor=None):
    sensor = defs.get_repository_def().get_sensor_def(name)
    with dg.build_sensor_context(
        instance=instance, definitions=defs, cursor=cursor, resources=defs.resources
    ) as context:
        result = sensor(context)
        return result, result.cursor if isinstance(result, dg.SensorResult) else context.cursor


def _tick_without_instance(defs, name, cursor=None):
    """A tick whose context has no Dagster instance: touching ``context.instance`` raises. In the
    code server each tick that touches it builds a whole instance (a connection per storage)."""
    sensor = defs.get_repository_def().get_sensor_def(name)
    with dg.build_sensor_context(definitions=defs, cursor=cursor, resources=defs.resources) as context:
        result = sensor(context)
        return result, result.cursor if isinstance(result, dg.SensorResult) else context.cursor


def test_new_candles_sensor_requests_only_new_bars_and_never_twice(db_url, settings_for):
    settings = settings_for(db_url, **FAST_MODEL)
    defs = defs_for(settings, **FAST_MODEL)
    instance = dg.DagsterInstance.ephemeral()

    empty, _ = _tick(defs, instance, "new_candles_sensor")
    assert isinstance(empty, dg.SkipReason) and "no M1 candles" in empty.skip_message

    now = minute_now()
    load_symbols(db_url, {"EURUSD": 0}, end=now, bars=3000)
    result, cursor = _tick(defs, instance, "new_candles_sensor")
    assert [r.partition_key for r in result.run_requests] == ["EURUSD"]
    # No model yet: features only, never signals from nothing.
    assert result.run_requests[0].job_name == "features_job"
    assert result.dynamic_partitions_requests[0].partition_keys == ["EURUSD"]
    assert result.asset_events[0].metadata["bars"].value == 3000
    assert json.loads(cursor)["bars"]["EURUSD"].startswith(now.isoformat())
    assert result.run_requests[0].tags["mt5_pipeline/symbol"] == "EURUSD"

    again, _ = _tick(defs, instance, "new_candles_sensor", cursor)
    assert isinstance(again, dg.SkipReason) and "no new bars" in again.skip_message

    # A new symbol arrives, and the model now exists: a prediction run for it alone.
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    ingest_candles(db_url, "GBPUSD", "M1", generate_candles(3000, end=now, seed=7, with_weekends=False))
    from mt5_pipeline.learning.features import update_features

    for symbol in ("EURUSD", "GBPUSD"):
        update_features(db_url, symbol)
    train_model(settings)
    result, cursor2 = _tick(defs, instance, "new_candles_sensor", cursor)
    assert [(r.partition_key, r.job_name) for r in result.run_requests] == [("GBPUSD", "predict_job")]
    assert result.dynamic_partitions_requests[0].partition_keys == ["GBPUSD"]
    keys = {r.run_key for r in result.run_requests}

    # The EA re-sends the newest EURUSD bar with a corrected close: features go stale.
    last = generate_candles(1, end=now, seed=99, with_weekends=False)
    ingest_candles(db_url, "EURUSD", "M1", last)
    result, _ = _tick(defs, instance, "new_candles_sensor", cursor2)
    assert [r.partition_key for r in result.run_requests] == ["EURUSD"]
    assert not keys & {r.run_key for r in result.run_requests}


def _signal(now, bar_offset_min=1, **extra):
    import uuid

    bar = now - timedelta(minutes=bar_offset_min)
    body = {
        "signal_id": str(uuid.uuid4()),
        "timestamp": bar.isoformat().replace("+00:00", "Z"),
        "symbol": "EURUSD",
        "timeframe": "M1",
        "side": "BUY",
        "confidence": 0.61,
        "sl_pips": 20,
        "tp_pips": 40,
        "price": 1.0801,
        "meta": {"model": "rf_m1", "label": 1, "model_version": "test-v1", "probability": 0.61},
        "expires_at": (bar + timedelta(seconds=60 + 600)).isoformat().replace("+00:00", "Z"),
    }
    body.update(extra)
    return body


def test_ea_push_sensor_skips_on_empty_queue_and_requests_a_run_otherwise(db_url, settings_for):
    settings = settings_for(db_url)
    defs = defs_for(settings)
    instance = dg.DagsterInstance.ephemeral()
    skipped, _ = _tick(defs, instance, "ea_push_sensor")
    assert isinstance(skipped, dg.SkipReason) and "no pending signals" in skipped.skip_message
    # The usual tick (nothing to push) does not need the instance.
    skipped, _ = _tick_without_instance(defs, "ea_push_sensor")
    assert isinstance(skipped, dg.SkipReason) and "no pending signals" in skipped.skip_message

    assert enqueue(db_url, _signal(minute_now()))
    requested, _ = _tick(defs, instance, "ea_push_sensor")
    assert isinstance(requested, dg.RunRequest)
    assert requested.tags["mt5_pipeline/pending"] == "1"

    pull_mode = defs_for(settings, EA_PUSH_ENABLED="false")
    skipped, _ = _tick(pull_mode, instance, "ea_push_sensor")
    assert isinstance(skipped, dg.SkipReason) and "pull mode" in skipped.skip_message


def test_push_job_delivers_to_the_reference_ea(pg_url, settings_for, reference_ea):
    settings = reference_ea.settings(settings_for(pg_url))
    defs = defs_for(settings)
    body = _signal(minute_now())
    assert enqueue(pg_url, body)
    result = defs.resolve_job_def("ea_push_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert reference_ea.signal_ids() == [body["signal_id"]]
    headers, _ = reference_ea.received[0]
    assert headers["idempotency-key"] == body["signal_id"]
    assert headers["x-api-key"] == reference_ea.api_key


def test_retrain_schedule_requests_a_training_run(sqlite_url, settings_for):
    defs = defs_for(settings_for(sqlite_url, RETRAIN_CRON="15 4 * * *"))
    schedule = defs.get_repository_def().get_schedule_def("rf_m1_retrain_schedule")
    with dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral()) as context:
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert len(requests) == 1
    assert schedule.job_name == "rf_m1_train_job"
    assert schedule.cron_schedule == "15 4 * * *"


def test_push_sensor_and_job_are_loud_about_a_configuration_error(pg_url, settings_for, reference_ea):
    from mt5_pipeline.signals import queue

    settings = reference_ea.settings(settings_for(pg_url)).replace(
        ea_server_url_override=reference_ea.base_url + "/signal"
    )
    defs = defs_for(settings, EA_SERVER_URL=reference_ea.base_url + "/signal", EA_API_KEY=reference_ea.api_key)
    instance = dg.DagsterInstance.ephemeral()
    assert enqueue(pg_url, _signal(minute_now()))
    run = defs.resolve_job_def("ea_push_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not run.success
    [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "configuration error" in str(failure.event_specific_data.error) and "(404)" in str(
        failure.event_specific_data.error
    )
    skipped, _ = _tick(defs, instance, "ea_push_sensor")
    assert isinstance(skipped, dg.SkipReason)
    assert "EA configuration error (HTTP 404)" in skipped.skip_message and "EA_SERVER_URL" in skipped.skip_message
    assert queue.status_counts(pg_url)["PENDING"] == 1


def test_push_sensor_waits_out_an_ea_outage(pg_url, settings_for, reference_ea):
    from mt5_pipeline.delivery import breaker
    from mt5_pipeline.delivery.pusher import push_pending

    settings = reference_ea.settings(settings_for(pg_url))
    defs = defs_for(settings, EA_SERVER_URL=reference_ea.url, EA_API_KEY=reference_ea.api_key)
    assert enqueue(pg_url, _signal(minute_now()))
    reference_ea.stop()
    try:
        assert push_pending(settings).retried == 1
        for _ in range(5):  # a few failed probes: the next one is seconds away (capped at 5 s)
            breaker.record_failure(
                pg_url, breaker.ea_key(reference_ea.url), kind=breaker.OUTAGE, signal_row_id=None, chargeable=False,
                error="cannot connect", status_code=None, ttl_seconds=60,
            )  # fmt: skip
        skipped, _ = _tick(defs, dg.DagsterInstance.ephemeral(), "ea_push_sensor")
    finally:
        reference_ea.start()
    assert (
        isinstance(skipped, dg.SkipReason)
        and "EA outage" in skipped.skip_message
        and "next probe" in skipped.skip_message
    )


def _report(instance, result) -> None:
    """What the sensor daemon does with a SensorResult's asset events (dagster/_daemon/sensor.py)."""
    for event in result.asset_events:
        instance.report_runless_asset_event(event)


def test_with_a_live_worker_the_sensor_records_every_bar_run_less(db_url, settings_for):
    from mt5_pipeline.signals.live import LiveWorker

    live = {**FAST_MODEL, "SIGNAL_BUY_THRESHOLD": 0.5, "SIGNAL_SELL_THRESHOLD": 0.4999, "SIGNAL_TTL_SECONDS": 600}
    settings = settings_for(db_url, **live)
    defs = defs_for(settings, **live)
    instance = dg.DagsterInstance.ephemeral()
    now = minute_now()
    symbols = {"EURUSD": 0, "GBPUSD": 1}
    load_symbols(db_url, symbols, end=now - timedelta(minutes=2), bars=3000)
    from mt5_pipeline.learning.features import update_features

    for symbol in symbols:
        update_features(db_url, symbol)
    train_model(settings)
    _, cursor = _tick(defs, instance, "new_candles_sensor")  # no worker yet: runs requested, as before

    worker = LiveWorker(settings)
    worker.presence.tick()  # the heartbeat the sensor looks for
    try:
        decided = worker.handle([(s, "M1") for s in symbols], trigger="notify")
        assert sorted(d.symbol for d in decided) == ["EURUSD", "GBPUSD"]
        for offset in (1,):  # a new closed bar for each symbol, decided by the worker
            for seed, symbol in enumerate(symbols):
                bar = generate_candles(
                    1,
                    end=now - timedelta(minutes=offset),
                    seed=50 + seed,
                    with_weekends=False,
                    start_price=1.1 + seed * 0.2,
                )
                ingest_candles(db_url, symbol, "M1", bar, max_jump=None)
            decided += worker.handle([(s, "M1") for s in symbols], trigger="notify")
        assert len(decided) == 4

        # A tick while the worker is deciding a bar close records nothing: the next one does.
        result, cursor = _tick(defs, instance, "new_candles_sensor", cursor)
        assert isinstance(result, dg.SensorResult) and not result.asset_events and not result.run_requests
        assert "deciding a bar close" in (result.skip_reason.skip_message or "")
        time.sleep(RECORD_QUIET.total_seconds())
        result, cursor = _tick(defs, instance, "new_candles_sensor", cursor)
        assert isinstance(result, dg.SensorResult) and not result.run_requests  # no run for a live bar
        _report(instance, result)
        assert instance.get_runs_count() == 0
        materialized = [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]
        by_asset: dict[str, list] = {}
        for event in materialized:
            by_asset.setdefault(event.asset_key.to_user_string(), []).append(event)
        assert sorted(e.partition for e in by_asset["signals"]) == [
            "EURUSD",
            "EURUSD",
            "GBPUSD",
            "GBPUSD",
        ]  # every decision
        # The new bar's feature rows (the first decisions wrote none: the batch had computed them).
        assert sorted(e.partition for e in by_asset["features_m1"]) == ["EURUSD", "GBPUSD"]
        newest = now - timedelta(minutes=1)
        for symbol in symbols:
            event = instance.get_latest_materialization_event(dg.AssetKey("signals"))
            assert event is not None
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("signals"), asset_partitions=[symbol]), limit=10
            ).records
            assert len(records) == 2
            meta = records[0].asset_materialization.metadata
            assert meta["bar"].value == newest.isoformat()
            worker_said = next(d for d in decided[2:] if d.symbol == symbol)
            assert meta["decision"].value == worker_said.status and meta["why"].value == worker_said.message
            assert meta["recorded_by"].value.startswith("live worker")
        features_meta = by_asset["features_m1"][-1].metadata
        assert features_meta["rows_written"].value == 1 and features_meta["feature_path"].value == "tail"
        assert instance.get_materialized_partitions(dg.AssetKey("features_m1")) == set(symbols)

        again, cursor = _tick(defs, instance, "new_candles_sensor", cursor)
        assert not getattr(again, "run_requests", None) and not getattr(
            again, "asset_events", None
        )  # nothing recorded twice
        # The symbols' partitions are known from the cursor: the usual tick, and one observing a
        # new bar of a known symbol, need no Dagster instance.
        assert sorted(json.loads(cursor)["partitions"]) == sorted(symbols)
        idle, _ = _tick_without_instance(defs, "new_candles_sensor", cursor)
        assert isinstance(idle, dg.SkipReason)
        bar = generate_candles(1, end=now, seed=78, with_weekends=False, start_price=1.1)
        ingest_candles(db_url, "EURUSD", "M1", bar, max_jump=None)
        observed, _ = _tick_without_instance(defs, "new_candles_sensor", cursor)
        assert isinstance(observed, dg.SensorResult) and not observed.dynamic_partitions_requests
        assert [(e.asset_key.to_user_string(), e.partition) for e in observed.asset_events] == [("candles", "EURUSD")]

        # DAGSTER_LIVE_RUNS=true: the old path, a run per symbol per bar, worker or not.
        runs = settings_for(db_url, **live, DAGSTER_LIVE_RUNS="true")
        bar = generate_candles(1, end=now, seed=77, with_weekends=False)
        ingest_candles(db_url, "EURUSD", "M1", bar, max_jump=None)
        result, _ = _tick(defs_for(runs, **live, DAGSTER_LIVE_RUNS="true"), instance, "new_candles_sensor", cursor)
        assert [r.partition_key for r in result.run_requests] == ["EURUSD"]
    finally:
        worker.presence.stop()
    # No worker alive: nobody else decides the bars, so the sensor requests runs again.
    result, _ = _tick(defs, instance, "new_candles_sensor", cursor)
    assert [(r.partition_key, r.job_name) for r in result.run_requests] == [("EURUSD", "predict_job")]
