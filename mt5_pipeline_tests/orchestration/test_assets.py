"""Materializing the real asset graph with Dagster's machinery, on both backends."""

import time
from datetime import datetime, timedelta, timezone

import dagster as dg
from sqlalchemy import func, select

from mt5_pipeline.clock import parse_iso
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.orchestration.assets import features_m1, rf_m1, signals
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import features_m1 as features_table
from mt5_pipeline.storage.schema import signals_queue
from mt5_pipeline_tests.orchestration_support import ALWAYS_DECIDE, FAST_MODEL, load_symbols, minute_now, resources_for


def _count(url, table, *where):
    with get_engine(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_graph_materializes_features_model_and_one_signal_per_symbol(db_url, settings_for):
    settings = settings_for(db_url, **FAST_MODEL, **ALWAYS_DECIDE)
    load_symbols(db_url, {"EURUSD": 0, "GBPUSD": 1})
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD", "GBPUSD"])
    resources = resources_for(settings, **FAST_MODEL, **ALWAYS_DECIDE)

    for symbol in ("EURUSD", "GBPUSD"):
        result = dg.materialize([features_m1], partition_key=symbol, instance=instance, resources=resources)
        assert result.success
        meta = result.asset_materializations_for_node("features_m1")[0].metadata
        assert meta["rows_written"].value == 4000
    assert _count(db_url, features_table) == 8000

    trained = dg.materialize([rf_m1], instance=instance, resources=resources)
    assert trained.success
    meta = trained.asset_materializations_for_node("rf_m1")[0].metadata
    assert "metric/auc" in meta and "metric/baseline_auc" in meta
    assert isinstance(meta["metric/auc"].value, float)  # plotted by the UI across runs
    assert meta["feature_importances"].value.records
    assert meta["model_version"].value
    assert (settings.model_dir / "rf_m1.pkl").exists()

    for symbol in ("EURUSD", "GBPUSD"):
        result = dg.materialize([signals], partition_key=symbol, instance=instance, resources=resources)
        meta = result.asset_materializations_for_node("signals")[0].metadata
        assert meta["decision"].value == "queued", meta["why"].value
        assert 0.0 <= meta["probability"].value <= 1.0
    assert _count(db_url, signals_queue) == 2

    # The same bar predicted again (a sensor tick and a manual run) queues nothing new.
    again = dg.materialize([signals], partition_key="EURUSD", instance=instance, resources=resources)
    assert again.asset_materializations_for_node("signals")[0].metadata["decision"].value == "duplicate"
    assert _count(db_url, signals_queue) == 2

    # A bar stored while it was forming and asked for after its close, before its final
    # version came or the grace ran out: not_ready, with the time it is decided anyway
    # (what `make demo` waits for when its training runs past a minute's end).
    if datetime.now(timezone.utc).second >= 40:  # the grace (55 s) must outlast the two runs below
        time.sleep(61 - datetime.now(timezone.utc).second)
    close = minute_now()
    bars = generate_candles(600, end=close - timedelta(minutes=1), seed=9, with_weekends=False)
    ingest_candles(db_url, "USDJPY", "M1", bars, now=close - timedelta(seconds=5))
    instance.add_dynamic_partitions("symbols", ["USDJPY"])
    # The bar before it is past its 30 s TTL: the answer is "ask again when the new one is ready".
    patient = resources_for(
        settings, **FAST_MODEL, **{**ALWAYS_DECIDE, "SIGNAL_TTL_SECONDS": 30}, LIVE_CLOSE_GRACE_SECONDS=55
    )
    assert dg.materialize([features_m1], partition_key="USDJPY", instance=instance, resources=patient).success
    waiting = dg.materialize([signals], partition_key="USDJPY", instance=instance, resources=patient)
    meta = waiting.asset_materializations_for_node("signals")[0].metadata
    assert meta["decision"].value == "not_ready", meta["why"].value
    assert parse_iso(meta["retry_at"].value) == close + timedelta(seconds=55)
    assert "retry_at" not in again.asset_materializations_for_node("signals")[0].metadata


def test_features_asset_is_incremental(sqlite_url, settings_for):
    settings = settings_for(sqlite_url)
    load_symbols(sqlite_url, {"EURUSD": 0}, bars=3000)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    resources = resources_for(settings)
    first = dg.materialize([features_m1], partition_key="EURUSD", instance=instance, resources=resources)
    second = dg.materialize([features_m1], partition_key="EURUSD", instance=instance, resources=resources)
    assert first.asset_materializations_for_node("features_m1")[0].metadata["rows_written"].value == 3000
    assert second.asset_materializations_for_node("features_m1")[0].metadata["rows_written"].value == 0


def test_training_without_enough_data_fails_the_run_with_the_reason(sqlite_url, settings_for):
    settings = settings_for(sqlite_url)
    load_symbols(sqlite_url, {"EURUSD": 0}, bars=200)  # not even past the feature warm-up
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    resources = resources_for(settings)
    dg.materialize([features_m1], partition_key="EURUSD", instance=instance, resources=resources)
    result = dg.materialize([rf_m1], instance=instance, resources=resources, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("rf_m1")
    assert "rf_m1 not trained" in failure.user_failure_data.description
    assert not (settings.model_dir / "rf_m1.pkl").exists()
