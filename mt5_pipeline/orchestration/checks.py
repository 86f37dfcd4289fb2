"""Asset checks: thin wrappers over mt5_pipeline.quality, which holds the logic."""


import dagster as dg

from mt5_pipeline import quality
from mt5_pipeline.orchestration.assets import features_m1, rf_m1, signals
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


@dg.asset_check(asset=features_m1, description="no NaN, null or infinite value in rows used for training")
def features_m1_finite(database: DatabaseResource) -> dg.AssetCheckResult:
    return _result(quality.features_finite(database.database_url))


@dg.asset_check(asset=features_m1, description="one feature row per candle up to the newest feature row")
def features_m1_matches_candles(database: DatabaseResource) -> dg.AssetCheckResult:
    return _result(quality.features_match_candles(database.database_url))


@dg.asset_check(asset=rf_m1, description="out-of-sample AUC not below the naive baseline beyond a margin (warning: markets are noisy)")
def rf_m1_beats_baseline(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.model_beats_baseline(pipeline_settings(config, database, models)))


@dg.asset_check(asset=rf_m1, description="the model's feature set is the one features_m1 holds")
def rf_m1_feature_set_matches(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.model_matches_features(pipeline_settings(config, database, models)))


@dg.asset_check(
    asset=features_m1,
    description="feature drift: PSI of each feature per symbol over the last DRIFT_WINDOW_HOURS against the champion's training window (warning past DRIFT_PSI_WARN)",
)
def features_m1_drift(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.features_drift(pipeline_settings(config, database, models), "M1"))


@dg.asset_check(
    asset=signals,
    description="signal drift: live BUY/SELL/neutral shares and mean probability per symbol against the champion's backtest (warning past DRIFT_SIGNAL_SHARE_WARN)",
)
def signals_drift(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.signals_drift(pipeline_settings(config, database, models), "M1"))


@dg.asset_check(asset=signals, description="no PENDING signal past its expiry (the pusher expires them each cycle)")
def signals_none_pending_past_expiry(config: SettingsResource, database: DatabaseResource, models: ModelStoreResource) -> dg.AssetCheckResult:
    return _result(quality.no_pending_past_expiry(pipeline_settings(config, database, models)))


asset_checks = [
    candles_ohlc_consistent,
    candles_no_duplicate_bars,
    candles_gaps,
    candles_fresh,
    features_m1_finite,
    features_m1_matches_candles,
    rf_m1_beats_baseline,
    rf_m1_feature_set_matches,
    signals_none_pending_past_expiry,
    features_m1_drift,
    signals_drift,
]
