"""Jobs: predict (features + signals for one symbol), features only, train, push.

The small, frequent jobs run in-process: a run's launch overhead is seconds, and a
multiprocess executor would double it for a step that takes milliseconds.
"""


import dagster as dg

from mt5_pipeline.orchestration.resources import DatabaseResource, EAResource, ModelStoreResource, SettingsResource, pipeline_settings

# dagster.yaml limits runs carrying this tag to one at a time: two pushes never overlap,
# on top of the queue's own claim safety.
PUSH_CONCURRENCY_TAG = "mt5_pipeline/ea_push"

# The drift checks read a day of every symbol's rows: hourly (drift_checks_job), not on
# every bar of every symbol. The per-symbol drift figures still ride on each materialization.
DRIFT_CHECKS = dg.AssetSelection.checks(
    dg.AssetCheckKey(dg.AssetKey("features_m1"), "features_m1_drift"),
    dg.AssetCheckKey(dg.AssetKey("signals"), "signals_drift"),
)

predict_job = dg.define_asset_job(
    "predict_job",
    selection=dg.AssetSelection.assets("features_m1", "signals") - DRIFT_CHECKS,
    executor_def=dg.in_process_executor,
    description="New bars of one symbol: compute their features, then predict and queue a signal.",
)

features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.assets("features_m1") - DRIFT_CHECKS,
    executor_def=dg.in_process_executor,
    description="Features only: what runs for new bars before any model exists.",
)

train_job = dg.define_asset_job(
    "rf_m1_train_job",
    selection=dg.AssetSelection.assets("rf_m1"),
    description="Retrain rf_m1 on the newest data, evaluate it and backtest it.",
)

drift_checks_job = dg.define_asset_job(
    "drift_checks_job",
    selection=DRIFT_CHECKS,
    executor_def=dg.in_process_executor,
    description="Feature and signal drift of every symbol against the champion (hourly, drift_checks_schedule).",
)

candles_checks_job = dg.define_asset_job(
    "candles_checks_job",
    selection=dg.AssetSelection.checks_for_assets("candles"),
    executor_def=dg.in_process_executor,
    description="Data-quality checks on the ingested candles.",
)


@dg.op(description="One push cycle: expire stale signals, claim, send to the EA, record the outcome.")
def push_signals(context: dg.OpExecutionContext, config: SettingsResource, database: DatabaseResource, models: ModelStoreResource, ea: EAResource) -> dg.Output:
    from mt5_pipeline.pusher import push_pending

    result = push_pending(pipeline_settings(config, database, models, ea))
    context.log.info(
        f"pushed {result.sent} signals (claimed {result.claimed}, rejected {result.rejected}, retry {result.retried}, "
        f"failed {result.failed}, expired {result.expired})"
    )
    if result.auth_error:
        raise dg.Failure("the EA refused our key (401): check EA_API_KEY; no attempts were spent")
    return dg.Output(
        None,
        metadata={
            "claimed": result.claimed,
            "sent": result.sent,
            "rejected": result.rejected,
            "retried": result.retried,
            "failed": result.failed,
            "expired": result.expired,
            "duration_s": float(result.duration_s),
        },
    )


@dg.job(
    name="ea_push_job",
    executor_def=dg.in_process_executor,
    tags={PUSH_CONCURRENCY_TAG: "push"},
    description="Deliver pending signals to the EA (the 30-second safety net beside the LISTEN/NOTIFY worker).",
)
def ea_push_job() -> None:
    push_signals()
