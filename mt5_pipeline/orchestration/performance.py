"""Live performance: what the traded signals earned, per timeframe and model version,
beside the same model's backtest, and a warning when live falls outside what that
backtest makes plausible (mt5_pipeline.monitoring.live_performance holds the logic).

`trades` is external, like `candles`: the bridge or the MQL5 EA writes it through
POST /ea/trades. `live_performance` (M1) / `live_performance_<tf>` read it hourly.
"""

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from mt5_pipeline.orchestration.assets import GROUP, _equity_markdown, asset_names, timeframe_assets
from mt5_pipeline.orchestration.resources import PipelineResource
from mt5_pipeline.orchestration.schedules import utc_schedule
from mt5_pipeline.settings import Settings

if TYPE_CHECKING:
    from mt5_pipeline.monitoring.live_performance import VersionPerformance

_FIGURES = ("trades", "hit_rate", "total_pips", "avg_pips", "profit_factor", "max_drawdown_pips")


def live_asset_name(timeframe: str) -> str:
    return "live_performance" if timeframe == "M1" else f"live_performance_{timeframe.lower()}"


def plausible_check_name(timeframe: str) -> str:
    return f"{live_asset_name(timeframe)}_plausible"


def trades_spec(timeframes: Iterable[str]) -> dg.AssetSpec:
    return dg.AssetSpec(
        "trades",
        deps=[asset_names(tf)["signals"] for tf in timeframes],
        description=(
            "Positions the signals opened, reported back by the bridge or the MQL5 EA (POST /ea/trades, table trades)."
        ),
        group_name=GROUP,
        kinds={"sql"},
        metadata={"table": "trades"},
    )


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—" if value is None or value != value else ("∞" if value > 0 else "-∞")
    return f"{value:,.3f}" if isinstance(value, float) and abs(value) < 10 else f"{value:,.1f}"


def _table(perfs: Iterable["VersionPerformance"]) -> str:
    lines = ["| model version | figure | live | backtest |", "| --- | --- | --- | --- |"]
    for p in perfs:
        for key in _FIGURES:
            lines.append(f"| {p.model_version} | {key} | {_fmt(p.live.get(key))} | {_fmt(p.backtest.get(key))} |")
    return "\n".join(lines)


def build_live_performance_asset(timeframe: str) -> dg.AssetsDefinition:
    name = live_asset_name(timeframe)
    check = plausible_check_name(timeframe)
    model_asset = timeframe_assets(timeframe)[1]

    @dg.asset(
        name=name,
        deps=["trades", model_asset],
        group_name=GROUP,
        kinds={"pandas"},
        description=(
            f"Live results of the {timeframe} signals from the trades table, per model version: trades, hit rate, net "
            "pips, "
            "profit factor, maximum drawdown and the live equity curve, beside the model's backtest."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                check,
                asset=name,
                description=(
                    "the newest model's live net pips and drawdown lie within the bootstrap band of its own backtest "
                    "trades (a warning when not)"
                ),
            )
        ],
    )
    def _live(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        # scikit-learn and matplotlib load in the run, not with the code location.
        from mt5_pipeline.monitoring.live_performance import performance, plot_live_equity

        settings: Settings = pipeline.settings()
        perfs = performance(settings, timeframe)
        metadata: dict = {"model_versions": len(perfs)}
        if not perfs:
            context.log.info(f"no closed {timeframe} trades with a known signal yet")
            result = dg.AssetCheckResult(
                check_name=check, passed=True, severity=dg.AssetCheckSeverity.WARN, description="no live trades yet"
            )
            return dg.MaterializeResult(metadata=metadata, check_results=[result])
        newest = perfs[-1]
        metadata["model_version"] = newest.model_version
        for key in _FIGURES:
            for side, figures in (("live", newest.live), ("backtest", newest.backtest)):
                value = figures.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    metadata[f"{side}/{key}"] = float(value)
        metadata["figures"] = dg.MetadataValue.md(_table(perfs))
        png = Path(settings.model_dir) / "live" / f"{name}-{newest.model_version}.png"
        try:
            plot_live_equity(newest, png, title=f"{timeframe} {newest.model_version}: live equity")
            metadata["equity_curve_path"] = dg.MetadataValue.path(str(png))
            metadata["equity_curve"] = dg.MetadataValue.md(_equity_markdown(png))
        except Exception as exc:  # a picture must not cost the figures
            context.log.warning(f"live equity curve not drawn: {exc}")
        p = newest.plausibility
        check_meta: dict[str, bool | float] = {"judged": p.judged}
        for key in ("band_low", "band_high", "drawdown_limit"):
            if math.isfinite(getattr(p, key)):
                check_meta[key] = float(getattr(p, key))
        result = dg.AssetCheckResult(
            check_name=check,
            passed=p.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=p.description,
            metadata=check_meta,
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[result])

    return _live


_BUILT: dict[str, dg.AssetsDefinition] = {}


def live_performance_asset(timeframe: str) -> dg.AssetsDefinition:
    if timeframe not in _BUILT:
        _BUILT[timeframe] = build_live_performance_asset(timeframe)
    return _BUILT[timeframe]


def build_live_performance_schedule(settings: Settings, timeframes: Iterable[str]) -> dg.ScheduleDefinition:
    job = dg.define_asset_job(
        "live_performance_job",
        selection=dg.AssetSelection.assets(*[live_performance_asset(tf) for tf in timeframes]),
        description="Live performance of every timeframe.",
    )
    return utc_schedule(
        settings, "live_performance_schedule", job, "17 * * * *", "Live performance against the backtest, every hour."
    )
