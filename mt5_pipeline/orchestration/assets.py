"""The lineage graph: candles -> features_m1 -> rf_m1 -> signals, and the same per timeframe.

`candles` is written by the EA through the API, not by Dagster: it is an external asset
whose observations (bars, newest bar per symbol) come from `new_candles_sensor`.
`features_m1` and `signals` are partitioned by symbol so each market is materialized
and watched apart. `rf_m1` is one model shared by every symbol (see the README): the
features are scale-free, so one forest learns from all markets' bars at once.

One factory per asset builds them for each timeframe in TIMEFRAMES: M1 keeps the seed's
keys (features_m1, rf_m1, signals), H1 gets features_h1 -> rf_h1 -> signals_h1, and so on.
"""

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from mt5_pipeline.orchestration.partitions import symbols_partitions
from mt5_pipeline.orchestration.resources import PipelineResource
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals.generation import generate_signal

if TYPE_CHECKING:
    from mt5_pipeline.learning.promotion import Decision

GROUP = "mt5_pipeline"

candles = dg.AssetSpec(
    "candles",
    description=(
        "Bars of every timeframe posted by the EA to POST /ingest (or imported with `mt5-pipeline import-csv`)."
    ),
    partitions_def=symbols_partitions,
    group_name=GROUP,
    kinds={"sql"},
    metadata={"table": "candles"},
)


def asset_names(timeframe: str) -> dict[str, str]:
    """The asset keys of a timeframe: M1 keeps the seed's (features_m1, rf_m1, signals)."""
    tf = timeframe.lower()
    return {
        "features": f"features_{tf}",
        "model": f"rf_{tf}",
        "signals": "signals" if timeframe == "M1" else f"signals_{tf}",
    }


def build_features_asset(timeframe: str) -> dg.AssetsDefinition:
    """features_<tf>: the timeframe's rows of the features_m1 table (it holds every timeframe)."""

    @dg.asset(
        name=asset_names(timeframe)["features"],
        deps=[candles],
        partitions_def=symbols_partitions,
        group_name=GROUP,
        kinds={"pandas"},
        description=(
            f"Scale-free technical features per {timeframe} bar, computed incrementally for new or corrected bars "
            f"(table features_m1, timeframe {timeframe})."
        ),
    )
    def _features(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        # scipy and scikit-learn load in the run that needs them, not with the code location.
        from mt5_pipeline.learning.features import update_features
        from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION

        update = update_features(pipeline.database_url, context.partition_key, timeframe)
        return dg.MaterializeResult(
            metadata={
                "rows_written": update.rows_written,
                "newest_bar": update.newest_ts.isoformat() if update.newest_ts else "none",
                "recomputed_from": update.recomputed_from.isoformat() if update.recomputed_from else "none",
                "lookback_bars": update.lookback_bars,
                "full_recompute": update.full,
                "feature_set_version": FEATURE_SET_VERSION,
                **drift_metadata(context, pipeline.settings(), context.partition_key, timeframe, "features"),
            }
        )

    return _features


def drift_metadata(
    context: dg.AssetExecutionContext, settings: Settings, symbol: str, timeframe: str, which: str
) -> dict:
    """This symbol's drift figures as numeric metadata (``drift/...``): the Plots tab shows drift build up.

    Only once a champion exists; a failure here is logged, never fails the materialization.
    """
    # scipy and scikit-learn load in the run that needs them, not with the code location.
    from mt5_pipeline.learning import drift
    from mt5_pipeline.learning.model_store import current_model_path

    if not current_model_path(settings, timeframe).is_file():
        return {}
    try:
        report = (
            drift.feature_drift(settings, symbol, timeframe)
            if which == "features"
            else drift.signal_drift(settings, symbol, timeframe)
        )
    except Exception as exc:  # drift is information; the features and signals matter more
        context.log.warning(f"{which} drift not measured for {symbol}: {type(exc).__name__}: {exc}")
        return {}
    meta: dict = {f"drift/{k}": float(v) for k, v in report.values.items() if v == v}
    if report.worst:
        meta["drift/worst_features"] = ", ".join(f"{k} ({v:.3f})" for k, v in report.worst)
    if report.values:
        meta["drift/status"] = "ok" if report.passed else "warning"
        meta["drift/description"] = report.description
    return meta


def _equity_markdown(png_path: Path) -> str:
    data = base64.b64encode(png_path.read_bytes()).decode()
    return f"![equity curve](data:image/png;base64,{data})"


PROMOTION_CHECK = "candidate_promoted"
_SCORES = ("auc", "log_loss", "net_pips", "trades")


def _score_table(decision: "Decision") -> str:
    """Candidate, champion and baseline side by side, as the UI shows a markdown table."""

    def fmt(value: float | None) -> str:
        return (
            "—"
            if value is None or value != value
            else f"{value:.4f}"
            if isinstance(value, float) and abs(value) < 10
            else f"{value:,.1f}"
        )

    champion = decision.champion or {}
    lines = ["| metric | candidate | champion | baseline |", "| --- | --- | --- | --- |"]
    for key in _SCORES:
        base = decision.candidate.get(f"baseline_{key}")
        lines.append(f"| {key} | {fmt(decision.candidate.get(key))} | {fmt(champion.get(key))} | {fmt(base)} |")
    window = decision.window
    lines.append("")
    lines.append(
        f"Window: {window.get('start')} .. {window.get('end')} ({window.get('rows')} rows, out of sample for both)."
    )
    return "\n".join(lines)


def promotion_metadata(decision: "Decision") -> dict:
    """Numbers only under candidate/, champion/ and baseline/, so the UI plots them across retrains."""
    meta: dict = {
        "decision": decision.decision,
        "decision_reason": decision.reason,
        "promoted": 1.0 if decision.promoted else 0.0,
        "champion_version": decision.champion_version or "none",
        "scores": dg.MetadataValue.md(_score_table(decision)),
    }
    for key in _SCORES:
        value = decision.candidate.get(key)
        if value is not None and value == value:
            meta[f"candidate/{key}"] = float(value)
        base = decision.candidate.get(f"baseline_{key}")
        if base is not None and base == base:
            meta[f"baseline/{key}"] = float(base)
        if (
            decision.champion is not None
            and decision.champion.get(key) is not None
            and decision.champion[key] == decision.champion[key]
        ):
            meta[f"champion/{key}"] = float(decision.champion[key])
    return meta


def build_model_asset(timeframe: str, features_asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """rf_<tf>: a retrain produces a candidate; it replaces the champion only when promoted."""
    name = asset_names(timeframe)["model"]

    @dg.multi_asset(
        name=name,
        specs=[
            dg.AssetSpec(
                name,
                deps=[features_asset],
                group_name=GROUP,
                kinds={"scikitlearn"},
                description=(
                    f"Retrains the {timeframe} model on every symbol's usable features (MODEL_KIND): a candidate, "
                    "evaluated out of sample "
                    f"against naive baselines and the champion on the same window; {name}.pkl changes only when it is "
                    "promoted."
                ),
            )
        ],
        # Subsettable, so "re-run the checks" in the UI works: the promotion check alone
        # reports the registry's last decision without training again.
        can_subset=True,
        check_specs=[
            dg.AssetCheckSpec(
                PROMOTION_CHECK,
                asset=name,
                blocking=True,
                description=(
                    "the candidate was promoted (or forced); fails the run when it was rejected, so the run history "
                    "shows it"
                ),
            )
        ],
    )
    def _model(
        context: dg.AssetExecutionContext, pipeline: PipelineResource
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        # scipy and scikit-learn load in the run that needs them, not with the code location.
        from mt5_pipeline.learning.training import InsufficientDataError, train_model

        settings = pipeline.settings()
        check_key = dg.AssetCheckKey(dg.AssetKey(name), PROMOTION_CHECK)
        if dg.AssetKey(name) not in context.selected_asset_keys:
            if check_key in context.selected_asset_check_keys:
                yield _last_decision_check(settings, timeframe)
            return
        try:
            result = train_model(settings, timeframe=timeframe)
        except InsufficientDataError as exc:
            # Not a bug to retry: the run fails with the reason, and the champion stays.
            raise dg.Failure(description=f"{name} not trained: {exc}", allow_retries=False) from exc
        except Exception as exc:
            raise dg.Failure(description=f"{name} retrain failed: {type(exc).__name__}: {exc}") from exc
        importances = sorted(result.feature_importances.items(), key=lambda kv: -kv[1])
        decision = result.decision
        assert decision is not None, "train_model always decides"
        metadata: dict = {
            # Floats and ints only here, so the UI plots each across materializations.
            **{f"metric/{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
            **{f"backtest/{k}": float(v) for k, v in result.backtest.items() if isinstance(v, (int, float))},
            **promotion_metadata(decision),
            "model_version": result.version,
            "model_kind": result.kind,
            "timeframe": result.timeframe,
            "model_path": dg.MetadataValue.path(str(result.path)),
            "rows": result.rows,
            "symbols": ", ".join(result.symbols),
            "train_window": f"{result.window[0].isoformat()} .. {result.window[1].isoformat()}",
            "label_mode": result.label_mode,
            "feature_set_version": result.feature_set_version,
            "feature_importances": dg.MetadataValue.table(
                records=[dg.TableRecord({"feature": n, "importance": round(float(v), 6)}) for n, v in importances],
                schema=dg.TableSchema(
                    columns=[dg.TableColumn("feature", "string"), dg.TableColumn("importance", "float")]
                ),
            ),
            "walk_forward": dg.MetadataValue.json(result.walk_forward),
        }
        if result.equity_png is not None and result.equity_png.exists():
            metadata["equity_curve_path"] = dg.MetadataValue.path(str(result.equity_png))
            metadata["equity_curve"] = dg.MetadataValue.md(_equity_markdown(result.equity_png))
        context.log.info(
            f"trained {result.version} on {result.rows} rows; AUC {result.metrics.get('auc')}; {decision.reason}"
        )
        check = dg.AssetCheckResult(
            check_name=PROMOTION_CHECK,
            passed=decision.promoted,
            severity=dg.AssetCheckSeverity.ERROR,
            description=decision.reason,
            metadata={k: v for k, v in promotion_metadata(decision).items() if k != "scores"},
        )
        selected = check_key in context.selected_asset_check_keys
        yield dg.MaterializeResult(asset_key=name, metadata=metadata, check_results=[check] if selected else [])

    return _model


def _last_decision_check(settings: Settings, timeframe: str) -> dg.AssetCheckResult:
    # scipy and scikit-learn load in the run that needs them, not with the code location.
    from mt5_pipeline.learning.model_registry import PROMOTED, last_retrain

    last = last_retrain(settings, timeframe)
    if last is None:
        return dg.AssetCheckResult(
            check_name=PROMOTION_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description="no retrain recorded yet",
        )
    return dg.AssetCheckResult(
        check_name=PROMOTION_CHECK,
        passed=last["decision"] in PROMOTED,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"last retrain {last['version']}: {last['decision']} - {last['reason']}",
        metadata={"decision": str(last["decision"]), "version": str(last["version"])},
    )


def build_signals_asset(
    timeframe: str, features_asset: dg.AssetsDefinition, model_asset: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    """signals (M1) / signals_<tf>: predict the symbol's newest bar and queue at most one signal for it."""

    @dg.asset(
        name=asset_names(timeframe)["signals"],
        deps=[features_asset, model_asset],
        partitions_def=symbols_partitions,
        group_name=GROUP,
        kinds={"python"},
        description=(
            f"Predicts the newest {timeframe} bar of the symbol and queues at most one BUY/SELL signal for it "
            "in signals_queue."
        ),
    )
    def _signals(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        settings = pipeline.settings()
        result = generate_signal(settings, context.partition_key, timeframe)
        context.log.info(f"{context.partition_key} {timeframe}: {result.status} - {result.message}")
        metadata: dict = {
            "decision": result.status,
            "why": result.message,
        }
        if result.probability is not None:
            metadata["probability"] = float(result.probability)
        if result.confidence is not None:
            metadata["confidence"] = float(result.confidence)
        if result.figures and "retry_at" in result.figures:  # not_ready: when the bar is decided anyway
            metadata["retry_at"] = str(result.figures["retry_at"])
        metadata.update(drift_metadata(context, settings, context.partition_key, timeframe, "signals"))
        if result.signal:
            metadata["signal_id"] = result.signal.signal_id
            metadata["side"] = result.signal.side
            metadata["bar"] = result.signal.bar.isoformat()
        return dg.MaterializeResult(metadata=metadata)

    return _signals


features_m1 = build_features_asset("M1")
rf_m1 = build_model_asset("M1", features_m1)
signals = build_signals_asset("M1", features_m1, rf_m1)

_BUILT: dict[str, tuple[dg.AssetsDefinition, dg.AssetsDefinition, dg.AssetsDefinition]] = {
    "M1": (features_m1, rf_m1, signals)
}


def timeframe_assets(timeframe: str) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition, dg.AssetsDefinition]:
    """(features, model, signals) of a timeframe, built once per process so every caller shares them."""
    if timeframe not in _BUILT:
        features = build_features_asset(timeframe)
        model = build_model_asset(timeframe, features)
        _BUILT[timeframe] = (features, model, build_signals_asset(timeframe, features, model))
    return _BUILT[timeframe]
