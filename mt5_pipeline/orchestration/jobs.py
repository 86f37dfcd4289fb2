"""Jobs: predict (features + signals for one symbol), features only, train, push.

The small, frequent jobs run in-process: a run's launch overhead is seconds, and a
multiprocess executor would double it for a step that takes milliseconds.
"""

from collections.abc import Iterable
from typing import Any

import dagster as dg

from mt5_pipeline.orchestration.resources import PipelineResource

# dagster.yaml limits runs carrying this tag to one at a time: two pushes never overlap,
# on top of the queue's own claim safety.
PUSH_CONCURRENCY_TAG = "mt5_pipeline/ea_push"


def _drift_checks(timeframes: Iterable[str]) -> dg.AssetSelection:
    keys = []
    for timeframe in timeframes:
        tf = timeframe.lower()
        signals = "signals" if timeframe == "M1" else f"signals_{tf}"
        keys += [
            dg.AssetCheckKey(dg.AssetKey(f"features_{tf}"), f"features_{tf}_drift"),
            dg.AssetCheckKey(dg.AssetKey(signals), f"{signals}_drift"),
        ]
    return dg.AssetSelection.checks(*keys)


def build_timeframe_jobs(timeframe: str) -> dict[str, Any]:
    """predict, features and train jobs of a timeframe; M1 keeps the seed's names
    (predict_job, features_job, rf_m1_train_job)."""
    tf = timeframe.lower()
    suffix = "" if timeframe == "M1" else f"_{tf}"
    features, model, signals = f"features_{tf}", f"rf_{tf}", "signals" if timeframe == "M1" else f"signals_{tf}"
    # The drift checks read a day of every symbol's rows: hourly (drift_checks_job), not on
    # every bar of every symbol. The per-symbol drift figures still ride on each materialization.
    drift = _drift_checks([timeframe])
    return {
        "predict": dg.define_asset_job(
            f"predict_job{suffix}",
            selection=dg.AssetSelection.assets(features, signals) - drift,
            executor_def=dg.in_process_executor,
            description=f"New {timeframe} bars of one symbol: compute their features, then predict and queue a signal.",
        ),
        "features": dg.define_asset_job(
            f"features_job{suffix}",
            selection=dg.AssetSelection.assets(features) - drift,
            executor_def=dg.in_process_executor,
            description=f"{timeframe} features only: what runs for new bars before any {model} exists.",
        ),
        "train": dg.define_asset_job(
            f"{model}_train_job",
            selection=dg.AssetSelection.assets(model),
            description=(
                f"Retrain {model} on the newest data: a candidate, evaluated, backtested and promoted only if better "
                "than the champion."
            ),
        ),
    }


_M1 = build_timeframe_jobs("M1")
predict_job = _M1["predict"]
features_job = _M1["features"]
train_job = _M1["train"]
_JOBS: dict[str, dict] = {"M1": _M1}


def timeframe_jobs(timeframe: str) -> dict[str, Any]:
    if timeframe not in _JOBS:
        _JOBS[timeframe] = build_timeframe_jobs(timeframe)
    return _JOBS[timeframe]


def build_drift_checks_job(timeframes: Iterable[str]) -> Any:
    return dg.define_asset_job(
        "drift_checks_job",
        selection=_drift_checks(timeframes),
        executor_def=dg.in_process_executor,
        description=(
            "Feature and signal drift of every symbol and timeframe against its champion "
            "(hourly, drift_checks_schedule)."
        ),
    )


candles_checks_job = dg.define_asset_job(
    "candles_checks_job",
    selection=dg.AssetSelection.checks_for_assets("candles"),
    executor_def=dg.in_process_executor,
    description="Data-quality checks on the ingested candles.",
)


@dg.op(description="One push cycle: expire stale signals, claim, send to the EA, record the outcome.")
def push_signals(context: dg.OpExecutionContext, pipeline: PipelineResource) -> dg.Output:
    # the HTTP client (httpx) loads in the push run, not with the code location.
    from mt5_pipeline.delivery.pusher import push_pending

    result = push_pending(pipeline.settings())
    context.log.info(
        f"pushed {result.sent} signals (claimed {result.claimed}, rejected {result.rejected}, retry {result.retried}, "
        f"failed {result.failed}, expired {result.expired})"
    )
    if result.auth_error:
        raise dg.Failure("the EA refused our key (401): check EA_API_KEY; no attempts were spent")
    if result.config_error:
        raise dg.Failure(
            f"EA configuration error, delivery stopped and signals kept PENDING (no attempts spent): {result.error}"
        )
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
