"""Retraining on a calendar: daily by default (RETRAIN_CRON), on the newest data."""

from __future__ import annotations

import dagster as dg

from mt5_pipeline.orchestration.jobs import drift_checks_job, train_job
from mt5_pipeline.settings import Settings


def build_retrain_schedule(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="rf_m1_retrain_schedule",
        job=train_job,
        cron_schedule=settings.retrain_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.dagster_autostart else dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain rf_m1 at '{settings.retrain_cron}' UTC (RETRAIN_CRON).",
    )


def build_drift_schedule(settings: Settings) -> dg.ScheduleDefinition:
    # Hourly: drift builds over days; the check's history (and the metadata on each
    # features_m1 and signals materialization) shows it build.
    return dg.ScheduleDefinition(
        name="drift_checks_schedule",
        job=drift_checks_job,
        cron_schedule="7 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.dagster_autostart else dg.DefaultScheduleStatus.STOPPED,
        description="Feature and signal drift against the champion, every hour.",
    )
