"""The Dagster code location: `defs`, loaded by workspace.yaml and `dagster ... -m mt5_pipeline`."""

from __future__ import annotations

import warnings

import dagster as dg

from mt5_pipeline.orchestration.assets import candles, timeframe_assets
from mt5_pipeline.orchestration.checks import checks_for
from mt5_pipeline.orchestration.jobs import build_drift_checks_job, candles_checks_job, ea_push_job, timeframe_jobs
from mt5_pipeline.orchestration.performance import build_live_performance_schedule, live_performance_asset, trades_spec
from mt5_pipeline.orchestration.resources import default_resources
from mt5_pipeline.orchestration.schedules import build_drift_schedule, build_retrain_schedule
from mt5_pipeline.orchestration.sensors import build_ea_push_sensor, build_new_candles_sensor
from mt5_pipeline.settings import Settings, load_settings

# Dagster's own sensor decorator passes the beta `owners` parameter on every load; the
# warning is about Dagster's internals, not this code location.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)


def build_defs(settings: Settings | None = None, resources: dict | None = None) -> dg.Definitions:
    """The whole graph, one set of assets, checks, jobs, sensors and schedules per timeframe
    in TIMEFRAMES; tests pass their own settings and resources."""
    settings = settings or load_settings()
    timeframes = list(settings.timeframes)
    assets: list = [candles]
    jobs: list = [ea_push_job, candles_checks_job]
    sensors = [build_ea_push_sensor(settings)]
    schedules = []
    for timeframe in timeframes:
        assets += list(timeframe_assets(timeframe))
        jobs += list(timeframe_jobs(timeframe).values())
        sensors.append(build_new_candles_sensor(settings, timeframe))
        schedules.append(build_retrain_schedule(settings, timeframe))
    assets += [trades_spec(timeframes), *(live_performance_asset(tf) for tf in timeframes)]
    schedules.append(build_live_performance_schedule(settings, timeframes))
    drift_job = build_drift_checks_job(timeframes)
    jobs.append(drift_job)
    schedules.append(build_drift_schedule(settings, drift_job))
    return dg.Definitions(
        assets=assets,
        asset_checks=checks_for(timeframes),
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources if resources is not None else default_resources(),
    )


defs = build_defs()
