"""Retraining on a calendar: daily by default (RETRAIN_CRON), on the newest data."""

from __future__ import annotations

import dagster as dg

from mt5_pipeline.orchestration.jobs import train_job
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
