"""Sensors: new candles trigger features and prediction; pending signals trigger a push.

`@asset_sensor` watches Dagster's own event log, not a table, so both are plain sensors
that read the database. Each says why it skipped, so the sensor history explains itself.

**The live record costs no run.** While a live worker is alive (its heartbeat in
``live_workers``) and the timeframe has a model, the worker has already computed each
bar's features and decided it; ``new_candles_sensor`` then turns the worker's
``live_decisions`` rows into run-less asset events (a features and a signals
materialization per symbol partition and bar, with the decision as metadata), batched per
tick. It requests runs only when no worker is alive, for a timeframe without a model
(features only), or with ``DAGSTER_LIVE_RUNS=true`` (the old run per symbol per bar).
"""

import json
from datetime import timedelta

import dagster as dg

from mt5_pipeline.clock import utcnow
from mt5_pipeline.delivery.breaker import delivery_status
from mt5_pipeline.orchestration.assets import asset_names
from mt5_pipeline.orchestration.jobs import ea_push_job, timeframe_jobs
from mt5_pipeline.orchestration.partitions import SYMBOLS_PARTITIONS, symbols_partitions
from mt5_pipeline.orchestration.resources import PipelineResource
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals.queue import count_deliverable
from mt5_pipeline.storage import decisions as live_decisions
from mt5_pipeline.storage.candles import newest_bars

SYMBOL_TAG = "mt5_pipeline/symbol"
# Decisions recorded per tick at most (the rest on the next tick); a day of them is kept.
DECISIONS_PER_TICK = 5000
DECISIONS_KEPT = timedelta(days=1)
# The record yields to the trade: a tick that lands while the live worker is deciding a bar
# close (its newest decision this recent) records nothing and leaves it all to the next
# tick, so the events' writes (several statements each) do not compete with the signals
# still on their way. At most this many ticks in a row.
RECORD_QUIET = timedelta(seconds=2)
RECORD_DEFERRED_TICKS = 3

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
        description=(
            "Watches the newest ingested bar per symbol; requests features and a prediction for symbols with new "
            "or corrected bars."
        ),
    )
    def new_candles_sensor(
        context: dg.SensorEvaluationContext, pipeline: PipelineResource
    ) -> dg.SensorResult | dg.SkipReason:
        # scikit-learn loads with the first tick, not with the code location.
        from mt5_pipeline.learning.model_store import current_model_info

        url = pipeline.database_url
        bars = [b for b in newest_bars(url) if b["timeframe"] == timeframe]
        if not bars:
            return dg.SkipReason(f"no {timeframe} candles ingested yet: POST /ingest or `mt5-pipeline import-csv`")
        state = json.loads(context.cursor) if context.cursor else {}
        if "bars" not in state:  # a cursor from before the run-less record: the stamps alone
            state = {"bars": state}
        deferred = _deferred(url, state)
        if deferred is not None:
            return deferred
        cursor: dict[str, str] = state["bars"]
        settings = pipeline.settings()
        has_model = current_model_info(settings, timeframe) is not None
        job = predict_job if has_model else features_job
        run_less = has_model and not settings.dagster_live_runs and live_decisions.workers_alive(url, utcnow()) > 0
        if "decision_id" not in state or not run_less:
            # Record from now on: decisions made while runs were requested are in those runs.
            state["decision_id"] = live_decisions.newest_id(url)

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
            if run_less:
                continue
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
        add = _new_partitions(context, state, {b["symbol"] for b in bars})
        state.pop("deferred", None)
        if run_less:
            recorded, last_id = live_record(url, timeframe, state["decision_id"])
            state["decision_id"] = last_id
            live_decisions.prune(url, utcnow() - DECISIONS_KEPT)
            if not recorded and not observations and not add:
                return dg.SkipReason(f"no new bars for {len(bars)} symbol(s) since the last evaluation")
            return dg.SensorResult(
                asset_events=[*observations, *recorded],
                dynamic_partitions_requests=add,
                cursor=json.dumps(state, sort_keys=True),
                skip_reason=None
                if recorded
                else "a live worker decides the bars; nothing decided since the last evaluation",
            )
        if not run_requests:
            return dg.SkipReason(f"no new bars for {len(bars)} symbol(s) since the last evaluation")
        if not has_model:
            context.log.info(
                "no model yet: requesting features only, no signals (materialize rf_m1 to start predicting)"
            )
        return dg.SensorResult(
            run_requests=run_requests,
            asset_events=observations,
            dynamic_partitions_requests=add,
            cursor=json.dumps(state, sort_keys=True),
        )

    return new_candles_sensor


def _deferred(url: str, state: dict) -> dg.SensorResult | None:
    """This tick's answer when the live worker is busy with a bar close (see RECORD_QUIET):
    nothing recorded, the cursor as it was but for the count of ticks deferred; else None."""
    if state.get("deferred", 0) >= RECORD_DEFERRED_TICKS or "decision_id" not in state:
        return None
    newest = live_decisions.newest_decided_at(url)
    now = utcnow()
    if newest is None or now - newest >= RECORD_QUIET or newest > now:
        return None
    waited = {**state, "deferred": state.get("deferred", 0) + 1}
    return dg.SensorResult(
        cursor=json.dumps(waited, sort_keys=True),
        skip_reason=(
            f"the live worker is deciding a bar close (its newest decision {(now - newest).total_seconds():.1f} s "
            "ago): recorded on the next tick"
        ),
    )


def _new_partitions(context: dg.SensorEvaluationContext, state: dict, symbols: set[str]) -> list:
    """The request adding the symbols that have no partition yet (none: an empty list).

    The symbols already added are remembered in the cursor: the instance is asked only when a
    symbol is new to the cursor. A tick that touches ``context.instance`` builds a whole instance
    in the code server (a connection per storage, each a PostgreSQL backend), every 10 s."""
    known = set(state.get("partitions", ()))
    if symbols <= known:
        return []
    known |= set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS))
    new_symbols = sorted(symbols - known)
    state["partitions"] = sorted(known | symbols)
    return [symbols_partitions.build_add_request(new_symbols)] if new_symbols else []


def live_record(database_url: str, timeframe: str, after_id: int) -> tuple[list[dg.AssetMaterialization], int]:
    """The live worker's decisions since ``after_id`` as run-less materializations: per bar,
    ``features_<tf>`` (when it wrote feature rows) and ``signals`` of the symbol's partition."""
    # scipy loads with the first tick, not with the code location.
    from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION

    names = asset_names(timeframe)
    rows = live_decisions.since(database_url, after_id, limit=DECISIONS_PER_TICK)
    events: list[dg.AssetMaterialization] = []
    for row in rows:
        if row["timeframe"] != timeframe:
            continue
        symbol = row["symbol"]
        bar = row["bar"].isoformat() if row["bar"] is not None else "none"
        common = {
            "bar": bar,
            "recorded_by": "live worker (run-less event)",
            "worker": row["worker"],
            "trigger": row["trigger"],
        }
        if row["feature_rows"]:
            events.append(
                dg.AssetMaterialization(
                    asset_key=names["features"],
                    partition=symbol,
                    description=(
                        f"{row['feature_rows']} feature row(s) up to {bar}, computed by the live worker "
                        f"({row['feature_path']} path)"
                    ),
                    metadata={
                        **common,
                        "rows_written": int(row["feature_rows"]),
                        "newest_bar": bar,
                        "feature_path": row["feature_path"],
                        "feature_set_version": FEATURE_SET_VERSION,
                    },
                )
            )
        metadata: dict = {**common, "decision": row["status"], "why": row["message"], "seconds": float(row["seconds"])}
        for key in ("probability", "confidence"):
            if row[key] is not None:
                metadata[key] = float(row[key])
        if row["signal_id"]:
            metadata["signal_id"] = row["signal_id"]
            metadata["side"] = row["side"] or ""
        events.append(
            dg.AssetMaterialization(
                asset_key=names["signals"],
                partition=symbol,
                description=f"{row['status']}: {row['message']}"[:500],
                metadata=metadata,
            )
        )
    return events, (rows[-1]["id"] if rows else after_id)


def build_ea_push_sensor(settings: Settings) -> dg.SensorDefinition:
    # With a worker running, a configuration error's state is refreshed by its probes every
    # few seconds and the sensor only reports it; with no worker, a push run probes this often.
    reprobe_seconds = 120.0

    def delivery_blocked(
        context: dg.SensorEvaluationContext, settings: Settings, database_url: str
    ) -> dg.SkipReason | None:
        """A skip, with the reason, while the pushers hold back (mt5_pipeline.delivery.breaker)."""
        from datetime import timedelta

        d = delivery_status(database_url, settings.ea_server_url)
        now = utcnow()
        if d["state"] == "config_error":
            message = (
                f"EA configuration error (HTTP {d['status_code']}): {d['error']}. Delivery stopped; signals stay "
                "PENDING until it is fixed"
            )
            context.log.error(message)
            fresh = d["updated_at"] is not None and now - d["updated_at"] < timedelta(seconds=reprobe_seconds)
            return dg.SkipReason(message) if fresh else None
        if d["state"] == "outage" and d["next_probe_at"] is not None and d["next_probe_at"] > now:
            return dg.SkipReason(
                f"EA outage since {(d['since'] or now):%H:%M:%S} UTC ({d['error']}); signals held, next probe at "
                f"{d['next_probe_at']:%H:%M:%S} UTC"
            )
        return None

    # A cron schedule cannot fire more often than once a minute; a sensor honours a
    # 30-second minimum interval and can skip when there is nothing to send.
    @dg.sensor(
        name="ea_push_sensor",
        job=ea_push_job,
        minimum_interval_seconds=max(1, int(round(settings.ea_push_interval))),
        default_status=_status(settings),
        description=(
            f"Every {settings.ea_push_interval:g} s (EA_PUSH_INTERVAL): requests a push run when deliverable signals "
            "are pending."
        ),
    )
    def ea_push_sensor(
        context: dg.SensorEvaluationContext, pipeline: PipelineResource
    ) -> dg.RunRequest | dg.SkipReason:
        current = pipeline.settings()
        if not current.ea_push_enabled:
            return dg.SkipReason("EA_PUSH_ENABLED=false: pull mode, the EA polls GET /ea/signals")
        blocked = delivery_blocked(context, current, pipeline.database_url)
        if blocked is not None:
            return blocked
        pending = count_deliverable(pipeline.database_url)
        if pending == 0:
            return dg.SkipReason("no pending signals due for delivery")
        # Asked last: the run storage is the Dagster instance, which a tick builds anew (a
        # connection per storage); with the queue empty, as the pusher keeps it, it is not needed.
        in_flight = context.instance.get_runs_count(dg.RunsFilter(job_name=ea_push_job.name, statuses=_IN_FLIGHT))
        if in_flight:
            return dg.SkipReason("a push run is already queued or running")
        return dg.RunRequest(tags={"mt5_pipeline/pending": str(pending)})

    return ea_push_sensor
