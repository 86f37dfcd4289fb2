"""Asset checks: thin wrappers over mt5_pipeline.monitoring.quality, which holds the logic."""

from collections.abc import Callable, Iterable

import dagster as dg

from mt5_pipeline.monitoring import quality
from mt5_pipeline.orchestration.assets import asset_names, signals, timeframe_assets
from mt5_pipeline.orchestration.resources import PipelineResource
from mt5_pipeline.settings import Settings


def _result(outcome: quality.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed,
        description=outcome.description,
        metadata=outcome.metadata,
        severity=dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
    )


@dg.asset_check(asset="candles", description="low > 0 and low <= open, close <= high on every bar")
def candles_ohlc_consistent(pipeline: PipelineResource) -> dg.AssetCheckResult:
    return _result(quality.candles_ohlc_consistent(pipeline.database_url))


@dg.asset_check(asset="candles", description="no bar stored twice for a symbol, timeframe and time")
def candles_no_duplicate_bars(pipeline: PipelineResource) -> dg.AssetCheckResult:
    return _result(quality.candles_no_duplicates(pipeline.database_url))


@dg.asset_check(asset="candles", description="gaps between bars: weekends expected, others counted, long ones warned")
def candles_gaps(pipeline: PipelineResource) -> dg.AssetCheckResult:
    return _result(quality.candles_gaps(pipeline.database_url))


@dg.asset_check(asset="candles", description="every symbol's newest bar is recent enough to trade on")
def candles_fresh(pipeline: PipelineResource) -> dg.AssetCheckResult:
    return _result(quality.candles_fresh(pipeline.database_url, pipeline.settings()))


@dg.asset_check(
    asset="candles",
    description=(
        "extreme bars (a move of 20+ standard deviations) confirmed by the bars after them; "
        "unconfirmed ones get no signal"
    ),
)
def candles_extreme_bars(pipeline: PipelineResource) -> dg.AssetCheckResult:
    return _result(quality.candles_extreme_bars(pipeline.database_url))


def build_checks(timeframe: str) -> list[dg.AssetChecksDefinition]:
    """The checks of a timeframe's features, model and signals (M1 keeps the seed's names)."""
    features, model, signals_asset = timeframe_assets(timeframe)
    names = asset_names(timeframe)
    f, m, s = names["features"], names["model"], names["signals"]
    only = None if timeframe == "M1" else timeframe  # M1's checks cover the whole table, as before

    @dg.asset_check(
        asset=features, name=f"{f}_finite", description="no NaN, null or infinite value in rows used for training"
    )
    def _finite(pipeline: PipelineResource) -> dg.AssetCheckResult:
        return _result(quality.features_finite(pipeline.database_url, only))

    @dg.asset_check(
        asset=features,
        name=f"{f}_matches_candles",
        description="one feature row per candle up to the newest feature row",
    )
    def _matches(pipeline: PipelineResource) -> dg.AssetCheckResult:
        return _result(quality.features_match_candles(pipeline.database_url, timeframe))

    def judged_on_settings(
        asset: dg.AssetsDefinition, name: str, description: str, judge: Callable[[Settings, str], quality.CheckOutcome]
    ) -> dg.AssetChecksDefinition:
        # The model and drift checks read the champion and the windows from Settings.
        @dg.asset_check(asset=asset, name=name, description=description)
        def _check(pipeline: PipelineResource) -> dg.AssetCheckResult:
            return _result(judge(pipeline.settings(), timeframe))

        return _check

    return [
        _finite,
        _matches,
        judged_on_settings(
            model,
            f"{m}_beats_baseline",
            "the champion's out-of-sample AUC not below the naive baseline beyond a margin (warning: markets are "
            "noisy)",
            quality.model_beats_baseline,
        ),
        judged_on_settings(
            model,
            f"{m}_feature_set_matches",
            "the model's feature set is the one features_m1 holds",
            quality.model_matches_features,
        ),
        judged_on_settings(
            features,
            f"{f}_drift",
            "feature drift: PSI of each feature per symbol over the last DRIFT_WINDOW_HOURS against the champion's "
            "training window (warning past DRIFT_PSI_WARN)",
            quality.features_drift,
        ),
        judged_on_settings(
            signals_asset,
            f"{s}_drift",
            "signal drift: live BUY/SELL/neutral shares and mean probability per symbol against the champion's "
            "backtest (warning past DRIFT_SIGNAL_SHARE_WARN)",
            quality.signals_drift,
        ),
    ]


def drift_check_keys(timeframes: Iterable[str]) -> list[dg.AssetCheckKey]:
    keys = []
    for timeframe in timeframes:
        names = asset_names(timeframe)
        keys += [
            dg.AssetCheckKey(dg.AssetKey(names["features"]), f"{names['features']}_drift"),
            dg.AssetCheckKey(dg.AssetKey(names["signals"]), f"{names['signals']}_drift"),
        ]
    return keys


@dg.asset_check(asset=signals, description="no PENDING signal past its expiry (the pusher expires them each cycle)")
def signals_none_pending_past_expiry(pipeline: PipelineResource) -> dg.AssetCheckResult:
    return _result(quality.no_pending_past_expiry(pipeline.settings()))


def checks_for(timeframes: Iterable[str]) -> list[dg.AssetChecksDefinition]:
    """Every check: the candles', each timeframe's, and the queue's (on M1's signals asset)."""
    out = [
        candles_ohlc_consistent,
        candles_no_duplicate_bars,
        candles_gaps,
        candles_fresh,
        candles_extreme_bars,
        signals_none_pending_past_expiry,
    ]
    for timeframe in timeframes:
        out += (
            _TIMEFRAME_CHECKS[timeframe]
            if timeframe in _TIMEFRAME_CHECKS
            else _TIMEFRAME_CHECKS.setdefault(timeframe, build_checks(timeframe))
        )
    return out


_TIMEFRAME_CHECKS: dict[str, list] = {"M1": build_checks("M1")}

# M1's, as before (tests and the demo materialize with these).
asset_checks = checks_for(["M1"])
