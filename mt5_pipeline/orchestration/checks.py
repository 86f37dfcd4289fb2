"""Asset checks: thin wrappers over mt5_pipeline.quality, which holds the logic."""


import dagster as dg

from mt5_pipeline import quality
from mt5_pipeline.orchestration.assets import asset_names, signals, timeframe_assets
from mt5_pipeline.orchestration.resources import DatabaseResource, ModelStoreResource, SettingsResource, pipeline_settings


def _result(outcome: quality.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed,
        description=outcome.description,
        metadata=outcome.metadata,
        severity=dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
    )


@dg.asset_check(asset="candles", description="low > 0 and low <= open, close <= high on every bar")
def candles_ohlc_consistent(database: DatabaseResource) -> dg.AssetCheckResult:
    return _result(quality.candles_ohlc_consistent(database.database_url))


@dg.asset_check(asset="candles", description="no bar stored twice for a symbol, timeframe and time")
def candles_no_duplicate_bars(database: DatabaseResource) -> dg.AssetCheckResult:
    return _result(quality.candles_no_duplicates(database.database_url))


@dg.asset_check(asset="candles", description="gaps between bars: weekends expected, others counted, long ones warned")
def candles_gaps(database: DatabaseResource) -> dg.AssetCheckResult:
    return _result(quality.candles_gaps(database.database_url))


@dg.asset_check(asset="candles", description="every symbol's newest bar is recent enough to trade on")
def candles_fresh(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.candles_fresh(database.database_url, pipeline_settings(config, database, models)))


@dg.asset_check(asset="candles", description="extreme bars (a move of 20+ standard deviations) confirmed by the bars after them; unconfirmed ones get no signal")
def candles_extreme_bars(database: DatabaseResource) -> dg.AssetCheckResult:
    return _result(quality.candles_extreme_bars(database.database_url))


def build_checks(timeframe: str) -> list[dg.AssetChecksDefinition]:
    """The checks of a timeframe's features, model and signals (M1 keeps the seed's names)."""
    features, model, signals_asset = timeframe_assets(timeframe)
    names = asset_names(timeframe)
    f, m, s = names["features"], names["model"], names["signals"]
    only = None if timeframe == "M1" else timeframe  # M1's checks cover the whole table, as before

    @dg.asset_check(asset=features, name=f"{f}_finite", description="no NaN, null or infinite value in rows used for training")
    def _finite(database: DatabaseResource) -> dg.AssetCheckResult:
        return _result(quality.features_finite(database.database_url, only))

    @dg.asset_check(asset=features, name=f"{f}_matches_candles", description="one feature row per candle up to the newest feature row")
    def _matches(database: DatabaseResource) -> dg.AssetCheckResult:
        return _result(quality.features_match_candles(database.database_url, timeframe))

    @dg.asset_check(
        asset=model,
        name=f"{m}_beats_baseline",
        description="the champion's out-of-sample AUC not below the naive baseline beyond a margin (warning: markets are noisy)",
    )
    def _beats(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
        return _result(quality.model_beats_baseline(pipeline_settings(config, database, models), timeframe))

    @dg.asset_check(asset=model, name=f"{m}_feature_set_matches", description="the model's feature set is the one features_m1 holds")
    def _feature_set(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
        return _result(quality.model_matches_features(pipeline_settings(config, database, models), timeframe))

    @dg.asset_check(
        asset=features,
        name=f"{f}_drift",
        description="feature drift: PSI of each feature per symbol over the last DRIFT_WINDOW_HOURS against the champion's training window (warning past DRIFT_PSI_WARN)",
    )
    def _feature_drift(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
        return _result(quality.features_drift(pipeline_settings(config, database, models), timeframe))

    @dg.asset_check(
        asset=signals_asset,
        name=f"{s}_drift",
        description="signal drift: live BUY/SELL/neutral shares and mean probability per symbol against the champion's backtest (warning past DRIFT_SIGNAL_SHARE_WARN)",
    )
    def _signal_drift(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
        return _result(quality.signals_drift(pipeline_settings(config, database, models), timeframe))

    return [_finite, _matches, _beats, _feature_set, _feature_drift, _signal_drift]


def drift_check_keys(timeframes) -> list[dg.AssetCheckKey]:
    keys = []
    for timeframe in timeframes:
        names = asset_names(timeframe)
        keys += [
            dg.AssetCheckKey(dg.AssetKey(names["features"]), f"{names['features']}_drift"),
            dg.AssetCheckKey(dg.AssetKey(names["signals"]), f"{names['signals']}_drift"),
        ]
    return keys


@dg.asset_check(asset=signals, description="no PENDING signal past its expiry (the pusher expires them each cycle)")
def signals_none_pending_past_expiry(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.no_pending_past_expiry(pipeline_settings(config, database, models)))


def checks_for(timeframes) -> list[dg.AssetChecksDefinition]:
    """Every check: the candles', each timeframe's, and the queue's (on M1's signals asset)."""
    out = [candles_ohlc_consistent, candles_no_duplicate_bars, candles_gaps, candles_fresh, candles_extreme_bars, signals_none_pending_past_expiry]
    for timeframe in timeframes:
        out += _TIMEFRAME_CHECKS[timeframe] if timeframe in _TIMEFRAME_CHECKS else _TIMEFRAME_CHECKS.setdefault(timeframe, build_checks(timeframe))
    return out


_TIMEFRAME_CHECKS: dict[str, list] = {"M1": build_checks("M1")}

# M1's, as before (tests and the demo materialize with these).
asset_checks = checks_for(["M1"])
