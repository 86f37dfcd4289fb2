"""Sensors: new candles trigger features and prediction; pending signals trigger a push.

`@asset_sensor` watches Dagster's own event log, not a table, so both are plain sensors
that read the database. Each says why it skipped, so the sensor history explains itself.
"""


import json

import dagster as dg

from mt5_pipeline.orchestration.jobs import ea_push_job, timeframe_jobs
from mt5_pipeline.orchestration.partitions import symbols_partitions
from mt5_pipeline.orchestration.resources import PipelineResource
from mt5_pipeline.settings import Settings

SYMBOL_TAG = "mt5_pipeline/symbol"

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _status(settings: Settings) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if settings.dagster_autostart else dg.DefaultSensorStatus.STOPPED


def build_new_candles_sensor(settings: Settings, timeframe: str = "M1") -> dg.SensorDefinition:
    # One sensor per timeframe (TIMEFRAMES): M1's keeps the seed's name.
    jobs = timeframe_jobs(timeframe)
    predict_job, features_job = jobs["predict"], jobs["features"]

    @dg.sensor(
        name="new_candles_sensor" if timeframe == "M1" else f"new_candles_sensor_{timeframe.lower()}",
        jobs=[predict_job, features_job],
        minimum_interval_seconds=10,
        default_status=_status(settings),
        description="Watches the newest ingested bar per symbol; requests features and a prediction for symbols with new or corrected bars.",
    )
    def new_candles_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        from mt5_pipeline.model import current_model_info
        from mt5_pipeline.storage.candles import newest_bars

        bars = [b for b in newest_bars(pipeline.database_url) if b["timeframe"] == timeframe]
        if not bars:
            return dg.SkipReason(f"no {timeframe} candles ingested yet: POST /ingest or `mt5-pipeline import-csv`")
        cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(symbols_partitions.name))
        has_model = current_model_info(pipeline.settings(), timeframe) is not None
        job = predict_job if has_model else features_job

        run_requests, observations = [], []
        for bar in bars:
            symbol = bar["symbol"]
            # The newest ingested_at changes when a bar is corrected, not only when a
            # new one arrives: either way the features from it onward are stale.
            stamp = f"{bar['newest_ts'].isoformat()}|{bar['newest_ingested_at'].isoformat()}"
            if cursor.get(symbol) == stamp:
                continue
            cursor[symbol] = stamp
            observations.append(
                dg.AssetObservation(
                    asset_key="candles",
                    partition=symbol,
                    metadata={"bars": int(bar["bars"]), "newest_bar": bar["newest_ts"].isoformat()},
                )
            )
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{job.name}:{symbol}:{stamp}",
                    job_name=job.name,
                    partition_key=symbol,
                    # dagster.yaml runs one run per symbol at a time (the features lock
                    # would make a second one wait anyway, holding a run slot).
                    tags={"mt5_pipeline/newest_bar": bar["newest_ts"].isoformat(), SYMBOL_TAG: symbol},
                )
            )
        new_symbols = sorted({b["symbol"] for b in bars} - known)
        if not run_requests:
            return dg.SkipReason(f"no new bars for {len(bars)} symbol(s) since the last evaluation")
        if not has_model:
            context.log.info("no model yet: requesting features only, no signals (materialize rf_m1 to start predicting)")
        return dg.SensorResult(
            run_requests=run_requests,
            asset_events=observations,
            dynamic_partitions_requests=[symbols_partitions.build_add_request(new_symbols)] if new_symbols else [],
            cursor=json.dumps(cursor, sort_keys=True),
        )

    return new_candles_sensor


def build_ea_push_sensor(settings: Settings) -> dg.SensorDefinition:
    # With a worker running, a configuration error's state is refreshed by its probes every
    # few seconds and the sensor only reports it; with no worker, a push run probes this often.
    reprobe_seconds = 120.0

    def delivery_blocked(context: dg.SensorEvaluationContext, settings: Settings, database_url: str) -> dg.SkipReason | None:
        """A skip, with the reason, while the pushers hold back (mt5_pipeline.breaker)."""
        from datetime import timedelta

        from mt5_pipeline.breaker import delivery_status
        from mt5_pipeline.clock import utcnow

        d = delivery_status(database_url, settings.ea_server_url)
        now = utcnow()
        if d["state"] == "config_error":
            message = f"EA configuration error (HTTP {d['status_code']}): {d['error']}. Delivery stopped; signals stay PENDING until it is fixed"
            context.log.error(message)
            fresh = d["updated_at"] is not None and now - d["updated_at"] < timedelta(seconds=reprobe_seconds)
            return dg.SkipReason(message) if fresh else None
        if d["state"] == "outage" and d["next_probe_at"] is not None and d["next_probe_at"] > now:
            return dg.SkipReason(f"EA outage since {(d['since'] or now):%H:%M:%S} UTC ({d['error']}); signals held, next probe at {d['next_probe_at']:%H:%M:%S} UTC")
        return None

    # A cron schedule cannot fire more often than once a minute; a sensor honours a
    # 30-second minimum interval and can skip when there is nothing to send.
    @dg.sensor(
        name="ea_push_sensor",
        job=ea_push_job,
        minimum_interval_seconds=max(1, int(round(settings.ea_push_interval))),
        default_status=_status(settings),
        description=f"Every {settings.ea_push_interval:g} s (EA_PUSH_INTERVAL): requests a push run when deliverable signals are pending.",
    )
    def ea_push_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        from mt5_pipeline.queue import count_deliverable

        current = pipeline.settings()
        if not current.ea_push_enabled:
            return dg.SkipReason("EA_PUSH_ENABLED=false: pull mode, the EA polls GET /ea/signals")
        in_flight = context.instance.get_runs_count(dg.RunsFilter(job_name=ea_push_job.name, statuses=_IN_FLIGHT))
        if in_flight:
            return dg.SkipReason("a push run is already queued or running")
        blocked = delivery_blocked(context, current, pipeline.database_url)
        if blocked is not None:
            return blocked
        pending = count_deliverable(pipeline.database_url)
        if pending == 0:
            return dg.SkipReason("no pending signals due for delivery")
        return dg.RunRequest(tags={"mt5_pipeline/pending": str(pending)})

    return ea_push_sensor
