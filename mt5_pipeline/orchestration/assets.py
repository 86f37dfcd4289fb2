"""The lineage graph: candles -> features_m1 -> rf_m1 -> signals.

`candles` is written by the EA through the API, not by Dagster: it is an external asset
whose observations (bars, newest bar per symbol) come from `new_candles_sensor`.
`features_m1` and `signals` are partitioned by symbol so each market is materialized
and watched apart. `rf_m1` is one model shared by every symbol (see the README): the
features are scale-free, so one forest learns from all markets' bars at once.
"""


import base64

import dagster as dg

from mt5_pipeline.orchestration.partitions import symbols_partitions
from mt5_pipeline.orchestration.resources import DatabaseResource, ModelStoreResource, SettingsResource, pipeline_settings

GROUP = "mt5_pipeline"

candles = dg.AssetSpec(
    "candles",
    description="M1 bars posted by the EA to POST /ingest (or imported with `mt5-pipeline import-csv`).",
    partitions_def=symbols_partitions,
    group_name=GROUP,
    kinds={"sql"},
    metadata={"table": "candles"},
)


@dg.asset(
    deps=[candles],
    partitions_def=symbols_partitions,
    group_name=GROUP,
    kinds={"pandas"},
    description="Scale-free technical features per M1 bar, computed incrementally for new or corrected bars.",
)
def features_m1(context: dg.AssetExecutionContext, database: DatabaseResource) -> dg.MaterializeResult:
    from mt5_pipeline.features import update_features
    from mt5_pipeline.indicators import FEATURE_SET_VERSION

    update = update_features(database.database_url, context.partition_key, "M1")
    return dg.MaterializeResult(
        metadata={
            "rows_written": update.rows_written,
            "newest_bar": update.newest_ts.isoformat() if update.newest_ts else "none",
            "recomputed_from": update.recomputed_from.isoformat() if update.recomputed_from else "none",
            "lookback_bars": update.lookback_bars,
            "full_recompute": update.full,
            "feature_set_version": FEATURE_SET_VERSION,
        }
    )


def _equity_markdown(png_path) -> str:
    data = base64.b64encode(png_path.read_bytes()).decode()
    return f"![equity curve](data:image/png;base64,{data})"


@dg.asset(
    deps=[features_m1],
    group_name=GROUP,
    kinds={"scikitlearn"},
    description="RandomForest trained on every symbol's usable features; evaluated out of sample against naive baselines and backtested.",
)
def rf_m1(context: dg.AssetExecutionContext, config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.MaterializeResult:
    from mt5_pipeline.model import InsufficientDataError, train_model

    settings = pipeline_settings(config, database, models)
    try:
        result = train_model(settings)
    except InsufficientDataError as exc:
        # Not a bug to retry: the run fails with the reason, and the current model stays.
        raise dg.Failure(description=f"rf_m1 not trained: {exc}", allow_retries=False) from exc
    importances = sorted(result.feature_importances.items(), key=lambda kv: -kv[1])
    metadata: dict = {
        # Floats and ints only here, so the UI plots each across materializations.
        **{f"metric/{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        **{f"backtest/{k}": float(v) for k, v in result.backtest.items() if isinstance(v, (int, float))},
        "model_version": result.version,
        "model_path": dg.MetadataValue.path(str(result.path)),
        "rows": result.rows,
        "symbols": ", ".join(result.symbols),
        "train_window": f"{result.window[0].isoformat()} .. {result.window[1].isoformat()}",
        "label_mode": result.label_mode,
        "feature_set_version": result.feature_set_version,
        "feature_importances": dg.MetadataValue.table(
            records=[dg.TableRecord({"feature": name, "importance": round(float(value), 6)}) for name, value in importances],
            schema=dg.TableSchema(columns=[dg.TableColumn("feature", "string"), dg.TableColumn("importance", "float")]),
        ),
        "walk_forward": dg.MetadataValue.json(result.walk_forward),
    }
    if result.equity_png is not None and result.equity_png.exists():
        metadata["equity_curve_path"] = dg.MetadataValue.path(str(result.equity_png))
        metadata["equity_curve"] = dg.MetadataValue.md(_equity_markdown(result.equity_png))
    context.log.info(f"trained {result.version} on {result.rows} rows; AUC {result.metrics.get('auc')}")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=[features_m1, rf_m1],
    partitions_def=symbols_partitions,
    group_name=GROUP,
    kinds={"python"},
    description="Predicts the newest bar of the symbol and queues at most one BUY/SELL signal for it in signals_queue.",
)
def signals(context: dg.AssetExecutionContext, config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.MaterializeResult:
    from mt5_pipeline.signals import generate_signal

    settings = pipeline_settings(config, database, models)
    result = generate_signal(settings, context.partition_key, "M1")
    context.log.info(f"{context.partition_key}: {result.status} - {result.message}")
    metadata: dict = {
        "decision": result.status,
        "why": result.message,
    }
    if result.probability is not None:
        metadata["probability"] = float(result.probability)
    if result.confidence is not None:
        metadata["confidence"] = float(result.confidence)
    if result.signal:
        metadata["signal_id"] = result.signal.signal_id
        metadata["side"] = result.signal.side
        metadata["bar"] = result.signal.bar.isoformat()
    return dg.MaterializeResult(metadata=metadata)
