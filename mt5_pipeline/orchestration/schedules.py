"""The calendar: retraining daily by default (RETRAIN_CRON), on the newest data; drift checks
hourly; the schedule every timed job is built with."""

from __future__ import annotations

import dagster as dg

from mt5_pipeline.orchestration.jobs import timeframe_jobs
from mt5_pipeline.settings import Settings


def utc_schedule(
    settings: Settings, name: str, job: dg.UnresolvedAssetJobDefinition, cron: str, description: str
) -> dg.ScheduleDefinition:
    """A schedule on UTC cron times, running from the start where DAGSTER_AUTOSTART says so."""
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.dagster_autostart
        else dg.DefaultScheduleStatus.STOPPED,
        description=description,
    )


def build_retrain_schedule(settings: Settings, timeframe: str = "M1") -> dg.ScheduleDefinition:
    model = f"rf_{timeframe.lower()}"
    return utc_schedule(
        settings,
        f"{model}_retrain_schedule",
        timeframe_jobs(timeframe)["train"],
        settings.retrain_cron,
        f"Retrain {model} at '{settings.retrain_cron}' UTC (RETRAIN_CRON): a candidate, promoted only if better than "
        "the champion.",
    )


def build_drift_schedule(
    settings: Settings, drift_checks_job: dg.UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    # Hourly: drift builds over days; the check's history (and the metadata on each
    # features_m1 and signals materialization) shows it build.
    return utc_schedule(
        settings,
        "drift_checks_schedule",
        drift_checks_job,
        "7 * * * *",
        "Feature and signal drift against the champion, every hour.",
    )
