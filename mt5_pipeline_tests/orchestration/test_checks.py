"""Asset checks run by Dagster: pass on good data, fail on data built to break them."""

import dagster as dg
from sqlalchemy import update

from mt5_pipeline.orchestration.assets import rf_m1
from mt5_pipeline.orchestration.checks import asset_checks
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import features_m1 as features_table
from mt5_pipeline_tests.orchestration_support import (
    FAST_MODEL,
    defs_for,
    load_symbols,
    materialize_features,
    minute_now,
    raw_bar,
    resources_for,
)


def _evaluations(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_checks_pass_on_good_data_and_fail_on_broken_data(sqlite_url, settings_for):
    settings = settings_for(sqlite_url, **FAST_MODEL)
    load_symbols(sqlite_url, {"EURUSD": 0}, bars=3000)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    resources = resources_for(settings, **FAST_MODEL)

    feats = materialize_features(instance, resources)
    evaluations = _evaluations(feats)
    assert evaluations["features_m1_finite"].passed
    assert evaluations["features_m1_matches_candles"].passed

    model = dg.materialize([rf_m1, *asset_checks], instance=instance, resources=resources, selection=[rf_m1])
    evaluations = _evaluations(model)
    assert evaluations["rf_m1_feature_set_matches"].passed
    assert "rf_m1_beats_baseline" in evaluations  # a warning either way: markets are noisy

    defs = defs_for(settings, **FAST_MODEL)
    good = defs.resolve_job_def("candles_checks_job").execute_in_process(instance=instance)
    assert all(e.passed for e in _evaluations(good).values()), {k: v.description for k, v in _evaluations(good).items()}

    now = minute_now()
    with get_engine(sqlite_url).begin() as conn:
        conn.execute(raw_bar("EURUSD", now.replace(year=2000), (1.0, 0.9, 1.1, 1.0), ingested_at=now, spread=0))
        conn.execute(update(features_table).values(feature_set_version="0"))
    bad = _evaluations(
        defs.resolve_job_def("candles_checks_job").execute_in_process(instance=instance, raise_on_error=False)
    )
    assert not bad["candles_ohlc_consistent"].passed
    recheck = _evaluations(
        dg.materialize(
            [rf_m1, *asset_checks],
            instance=instance,
            resources=resources,
            selection=dg.AssetSelection.checks_for_assets(rf_m1),
        )
    )
    assert not recheck["rf_m1_feature_set_matches"].passed
