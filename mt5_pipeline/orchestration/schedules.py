"""Retraining on a calendar: daily by default (RETRAIN_CRON), on the newest data."""

from __future__ import annotations

import dagster as dg

from mt5_pipeline.orchestration.jobs import timeframe_jobs
from mt5_pipeline.settings import Settings


def build_retrain_schedule(settings: Settings, timeframe: str = "M1") -> dg.ScheduleDefinition:
    model = f"rf_{timeframe.lower()}"
    return dg.ScheduleDefinition(
        name=f"{model}_retrain_schedule",
        job=timeframe_jobs(timeframe)["train"],
        cron_schedule=settings.retrain_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.dagster_autostart
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain {model} at '{settings.retrain_cron}' UTC (RETRAIN_CRON): a candidate, promoted only if better than the champion.",
    )


def build_drift_schedule(
    settings: Settings, drift_checks_job: dg.UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    # Hourly: drift builds over days; the check's history (and the metadata on each
    # features_m1 and signals materialization) shows it build.
    return dg.ScheduleDefinition(
        name="drift_checks_schedule",
        job=drift_checks_job,
        cron_schedule="7 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.dagster_autostart
        else dg.DefaultScheduleStatus.STOPPED,
        description="Feature and signal drift against the champion, every hour.",
    )
