"""The Dagster code location: `defs`, loaded by workspace.yaml and `dagster ... -m mt5_pipeline`."""

from __future__ import annotations

import warnings

import dagster as dg

from mt5_pipeline.orchestration.assets import candles, features_m1, rf_m1, signals
from mt5_pipeline.orchestration.checks import asset_checks
from mt5_pipeline.orchestration.jobs import candles_checks_job, drift_checks_job, ea_push_job, features_job, predict_job, train_job
from mt5_pipeline.orchestration.resources import default_resources
from mt5_pipeline.orchestration.schedules import build_drift_schedule, build_retrain_schedule
from mt5_pipeline.orchestration.sensors import build_ea_push_sensor, build_new_candles_sensor
from mt5_pipeline.settings import Settings, load_settings

# Dagster's own sensor decorator passes the beta `owners` parameter on every load; the
# warning is about Dagster's internals, not this code location.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)


def build_defs(settings: Settings | None = None, resources: dict | None = None) -> dg.Definitions:
    """The whole graph; tests pass their own settings and resources."""
    settings = settings or load_settings()
    return dg.Definitions(
        assets=[candles, features_m1, rf_m1, signals],
        asset_checks=asset_checks,
        jobs=[predict_job, features_job, train_job, ea_push_job, candles_checks_job, drift_checks_job],
        sensors=[build_new_candles_sensor(settings), build_ea_push_sensor(settings)],
        schedules=[build_retrain_schedule(settings), build_drift_schedule(settings)],
        resources=resources if resources is not None else default_resources(),
    )


defs = build_defs()
