"""One model per timeframe: M1 and H1 together, each with its own features, model file,
registry rows, signals, sensor, schedule and checks, built by one factory."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import func, select

from mt5_pipeline.learning.model_registry import history
from mt5_pipeline.learning.model_store import current_model_info, load_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.orchestration.assets import timeframe_assets
from mt5_pipeline.orchestration.checks import checks_for
from mt5_pipeline.settings import SettingsError
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import features_m1 as features_table
from mt5_pipeline.storage.schema import signals_queue
from mt5_pipeline_tests.orchestration_support import ALWAYS_DECIDE, FAST_MODEL, defs_for, load_symbols, resources_for

BOTH = {"TIMEFRAMES": "M1,H1"}
# H1 bars close an hour after they open: a TTL of two hours lets this test queue one
# whatever minute of the hour it runs in.
H1_TTL = {"SIGNAL_TTL_SECONDS": 7200}


def h1_bars(hours: int, *, seed: int = 3) -> pd.DataFrame:
    """H1 bars aggregated from generated M1 bars; the newest one closed at the top of this hour."""
    last_open = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    m1 = generate_candles(
        hours * 60, end=last_open + timedelta(minutes=59), seed=seed, with_weekends=False, momentum=0.15
    )
    grouped = m1.set_index("time").resample("1h")
    frame = grouped.agg(
        {
            "open": "first",
            "high": "max",
            "low": "min",
            "close": "last",
            "tick_volume": "sum",
            "spread": "max",
            "real_volume": "sum",
        }
    )
    frame = frame.dropna().reset_index()
    assert frame["time"].iloc[-1] == last_open
    return frame


def test_timeframes_setting_is_checked(sqlite_url, settings_for):
    assert settings_for(sqlite_url).timeframes == ("M1",)
    assert settings_for(sqlite_url, TIMEFRAMES="m1, h1,H1").timeframes == ("M1", "H1")
    with pytest.raises(SettingsError, match="TIMEFRAMES"):
        settings_for(sqlite_url, TIMEFRAMES="M1,H2")


def test_the_factory_builds_the_same_graph_per_timeframe(sqlite_url, settings_for):
    defs = defs_for(settings_for(sqlite_url, **BOTH))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "candles",
        "features_m1",
        "rf_m1",
        "signals",
        "features_h1",
        "rf_h1",
        "signals_h1",
        "trades",
        "live_performance",
        "live_performance_h1",
    }
    edges = {
        (p.to_user_string(), k.to_user_string()) for k in graph.get_all_asset_keys() for p in graph.get(k).parent_keys
    }
    assert {
        ("candles", "features_h1"),
        ("features_h1", "rf_h1"),
        ("features_h1", "signals_h1"),
        ("rf_h1", "signals_h1"),
    } <= edges
    assert ("features_m1", "rf_h1") not in edges
    repo = defs.get_repository_def()
    assert {s.name for s in repo.sensor_defs} == {"new_candles_sensor", "new_candles_sensor_h1", "ea_push_sensor"}
    assert {s.name for s in repo.schedule_defs} == {
        "rf_m1_retrain_schedule",
        "rf_h1_retrain_schedule",
        "drift_checks_schedule",
        "live_performance_schedule",
    }
    assert repo.get_schedule_def("rf_h1_retrain_schedule").job_name == "rf_h1_train_job"
    assert {"predict_job", "predict_job_h1", "features_job_h1", "rf_h1_train_job", "drift_checks_job"} <= {
        j.name for j in repo.get_all_jobs()
    }
    names = {key.name for c in checks_for(["M1", "H1"]) for key in c.check_keys}
    assert {
        "features_h1_finite",
        "features_h1_matches_candles",
        "rf_h1_beats_baseline",
        "rf_h1_feature_set_matches",
        "features_h1_drift",
        "signals_h1_drift",
    } <= names
    assert {"features_m1_finite", "rf_m1_beats_baseline", "signals_drift"} <= names  # M1 keeps the seed's names


def _tick(defs, instance, name):
    sensor = defs.get_repository_def().get_sensor_def(name)
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        return sensor(context)


def test_h1_bars_make_h1_features_an_h1_model_and_an_h1_signal(sqlite_url, settings_for):
    overrides = {**FAST_MODEL, **ALWAYS_DECIDE, **BOTH, **H1_TTL}
    settings = settings_for(sqlite_url, **overrides)
    load_symbols(sqlite_url, {"EURUSD": 0})  # M1 bars
    ingest_candles(sqlite_url, "EURUSD", "H1", h1_bars(1_500))
    defs = defs_for(settings, **overrides)
    instance = dg.DagsterInstance.ephemeral()
    resources = resources_for(settings, **overrides)
    features_h1, rf_h1, signals_h1 = timeframe_assets("H1")

    # The H1 sensor sees the H1 bars only; no H1 model yet, so features only.
    tick = _tick(defs, instance, "new_candles_sensor_h1")
    assert [(r.partition_key, r.job_name) for r in tick.run_requests] == [("EURUSD", "features_job_h1")]
    instance.add_dynamic_partitions("symbols", ["EURUSD"])

    for features in (timeframe_assets("M1")[0], features_h1):
        assert dg.materialize([features], partition_key="EURUSD", instance=instance, resources=resources).success
    with get_engine(sqlite_url).connect() as conn:
        counts = dict(
            conn.execute(select(features_table.c.timeframe, func.count()).group_by(features_table.c.timeframe)).all()
        )
    assert counts == {"M1": 4000, "H1": 1500}  # one table, a timeframe column

    trained = dg.materialize([rf_h1], instance=instance, resources=resources)
    meta = trained.asset_materializations_for_node("rf_h1")[0].metadata
    assert meta["timeframe"].value == "H1" and meta["decision"].value in ("promoted", "forced")
    h1_file = settings.model_dir / "rf_h1.pkl"
    assert h1_file.exists() and not (settings.model_dir / "rf_m1.pkl").exists()
    h1_model = load_model(h1_file)
    assert h1_model.meta["timeframe"] == "H1" and h1_model.meta["model"] == "rf_h1"
    assert h1_model.meta["rows"] < 1500  # trained on the H1 rows, not the 4000 M1 rows
    assert current_model_info(settings, "H1")["version"] == h1_model.version and current_model_info(settings) is None
    assert [r["timeframe"] for r in history(settings, "H1")] == ["H1"] and history(settings, "M1") == []

    assert dg.materialize([timeframe_assets("M1")[1]], instance=instance, resources=resources).success
    assert load_model(settings.model_dir / "rf_m1.pkl").meta["timeframe"] == "M1"

    # With a model, the H1 sensor (a fresh cursor) asks for H1 predictions.
    tick = _tick(defs, instance, "new_candles_sensor_h1")
    assert [(r.partition_key, r.job_name) for r in tick.run_requests] == [("EURUSD", "predict_job_h1")]

    result = dg.materialize([signals_h1], partition_key="EURUSD", instance=instance, resources=resources)
    meta = result.asset_materializations_for_node("signals_h1")[0].metadata
    assert meta["decision"].value == "queued", meta["why"].value
    with get_engine(sqlite_url).connect() as conn:
        row = conn.execute(select(signals_queue)).mappings().one()
    assert row["timeframe"] == "H1"
    # Predicted by the H1 champion, not by rf_m1.
    assert (row["model"], row["model_version"]) == ("rf_h1", h1_model.version)
    bar = h1_bars(1_500).iloc[-1]
    assert row["ts"] == bar["time"].to_pydatetime() and row["price"] == pytest.approx(bar["close"])
    # Expired by H1 rules: the bar's close (open + one hour) plus the TTL.
    assert row["expires_at"] == bar["time"].to_pydatetime() + timedelta(hours=1, seconds=H1_TTL["SIGNAL_TTL_SECONDS"])
