"""Drift: PSI of the live features against the champion's training window, live signal shares
against its backtest, as checks and as numeric metadata on the materializations."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mt5_pipeline.learning import drift
from mt5_pipeline.learning.features import update_features
from mt5_pipeline.learning.indicators import MODEL_FEATURES
from mt5_pipeline.learning.training import build_training_set, train_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.monitoring import quality
from mt5_pipeline.orchestration.assets import signals
from mt5_pipeline.orchestration.checks import asset_checks
from mt5_pipeline.orchestration.resources import resources_for
from mt5_pipeline_tests.orchestration_support import materialize_features

END = datetime(2024, 6, 12, 12, 0, tzinfo=timezone.utc)
MODEL = {"RF_N_ESTIMATORS": 10, "PROMOTION_FORCE": "true"}
# Every probability becomes a BUY or a SELL: the live shares cannot match a backtest run
# with the default band, whatever the market does.
ALWAYS_DECIDE = {"SIGNAL_BUY_THRESHOLD": 0.5, "SIGNAL_SELL_THRESHOLD": 0.4999}


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20_000, 2))
    reference = drift.reference_histograms(train, ["a", "b"])
    assert sum(reference["a"]["shares"]) == pytest.approx(1.0) and len(reference["a"]["edges"]) == drift.BINS - 1
    assert drift.psi(reference["a"], rng.normal(size=2_000)) < 0.02
    assert drift.psi(reference["a"], rng.normal(loc=1.0, size=2_000)) > 0.25  # a shift of one standard deviation
    assert drift.psi(reference["a"], rng.normal(scale=3.0, size=2_000)) > 0.25  # three times the volatility
    assert np.isnan(drift.psi(reference["a"], np.array([np.nan])))
    # Calendar features are left out: a one-day window holds one weekday by construction.
    frame = pd.DataFrame({"a": rng.normal(size=100), "dow": np.full(100, 3.0)})
    assert set(drift.feature_psi({"a": reference["a"], "dow": reference["b"]}, frame)) == {"a"}


def test_decision_shares():
    shares = drift.decision_shares(np.array([0.6, 0.4, 0.5, 0.55]), 0.55, 0.45)
    assert shares == pytest.approx(
        {"buy_share": 0.5, "sell_share": 0.25, "neutral_share": 0.25, "mean_probability": 0.5125}
    )


def test_the_signal_reference_is_kept_per_symbol():
    """A symbol whose normal mix is mostly BUY is compared with its own mix, not the pool's
    (half SELL): against the pool it would warn forever."""
    symbols = np.array(["EURUSD"] * 100 + ["USDJPY"] * 100 + ["XAUUSD"] * 5)
    probability = np.concatenate([np.full(100, 0.7), np.full(100, 0.3), np.full(5, 0.5)])
    reference = drift.signal_reference(symbols, probability, 0.55, 0.45)
    assert (
        reference["by_symbol"]["EURUSD"]["buy_share"] == 1.0 and reference["by_symbol"]["USDJPY"]["sell_share"] == 1.0
    )
    assert reference["all"]["buy_share"] == pytest.approx(100 / 205) and reference["all"]["rows"] == 205
    assert "XAUUSD" not in reference["by_symbol"]  # 5 evaluation rows are no reference
    assert drift._signal_reference_for(reference, "EURUSD") == (reference["by_symbol"]["EURUSD"], "EURUSD")
    assert drift._signal_reference_for(reference, "XAUUSD") == (reference["all"], "all symbols")
    legacy = drift.decision_shares(probability, 0.55, 0.45)  # a champion from before: one pooled dict
    assert drift._signal_reference_for(legacy, "EURUSD") == (legacy, "all symbols")


def _load(url: str) -> None:
    for i, (symbol, price, digits) in enumerate((("EURUSD", 1.08, 5), ("USDJPY", 150.0, 3))):
        frame = generate_candles(8_000, end=END, start_price=price, seed=20 + i, digits=digits, momentum=0.15)
        ingest_candles(url, symbol, "M1", frame, now=END)
        update_features(url, symbol, now=END)


def _wild_day(url: str) -> None:
    """A day of EURUSD bars six times as volatile as anything the model saw."""
    later = END + timedelta(days=1)
    frame = generate_candles(1_440, end=later, start_price=1.09, seed=99, digits=5, momentum=0.15)
    base = frame["open"].iloc[0]
    for column in ("open", "high", "low", "close"):
        frame[column] = (base + (frame[column] - base) * 6).round(5)
    ingest_candles(url, "EURUSD", "M1", frame, now=later)


def test_feature_and_signal_drift_against_the_champion(db_url, settings_for):
    settings = settings_for(db_url, **MODEL)
    assert not drift.feature_drift(settings, "EURUSD").passed  # no champion yet: said, not crashed
    _load(db_url)
    champion = train_model(settings, now=END)
    training = build_training_set(settings).frame
    # Rows drawn across the whole training window: its distribution, so no drift. (One day
    # of it would differ already: the sample's volatility comes in clusters, as markets' does.)
    in_sample = training[(training["symbol"] == "EURUSD") & (training["ts"] <= champion.window[1])].sample(
        1_440, random_state=0
    )

    calm = drift.feature_drift(settings, "EURUSD", rows=in_sample)
    assert calm.passed and calm.values["max_psi"] < 0.1, calm.description
    assert set(k for k in calm.values if k.startswith("psi/")) == {
        f"psi/{f}" for f in MODEL_FEATURES if f not in drift.CALENDAR_FEATURES
    }

    _wild_day(db_url)
    update_features(db_url, "EURUSD", now=END + timedelta(days=1))
    wild = drift.feature_drift(settings, "EURUSD")
    assert not wild.passed and wild.rows == 1_440
    assert wild.values["max_psi"] > settings.drift_psi_warn
    assert wild.worst[0][0].startswith("std_") and "worst: std_" in wild.description
    outcome = quality.features_drift(settings)
    assert not outcome.passed and outcome.severity == "WARN"
    assert outcome.metadata["worst_features"].startswith("EURUSD std_") and outcome.metadata["EURUSD/max_psi"] > 0.25

    steady = drift.signal_drift(settings, "EURUSD", rows=in_sample)
    assert set(steady.values) >= {"live/buy_share", "reference/buy_share", "gap/neutral_share", "live/mean_probability"}
    from mt5_pipeline.learning.model_store import load_current

    own = load_current(settings, "M1").meta["signal_reference"]["by_symbol"]["EURUSD"]
    assert steady.values["reference_is_symbol"] == 1.0 and steady.values["reference/buy_share"] == own["buy_share"]
    assert "(EURUSD)" in steady.description
    assert (
        abs(steady.values["live/mean_probability"] - steady.values["reference/mean_probability"])
        < drift.MEAN_PROBABILITY_WARN
    )
    parted = drift.signal_drift(settings_for(db_url, **MODEL, **ALWAYS_DECIDE), "USDJPY")
    assert not parted.passed and parted.values["live/neutral_share"] < 0.01
    assert "neutral_share 0.00" in parted.description


def test_drift_shows_in_the_dagster_checks_and_the_materializations(sqlite_url, settings_for):
    settings = settings_for(sqlite_url, **MODEL)
    _load(sqlite_url)
    train_model(settings, now=END)
    _wild_day(sqlite_url)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD", "USDJPY"])
    resources = resources_for(settings, **MODEL, **ALWAYS_DECIDE)

    result = materialize_features(instance, resources)
    meta = result.asset_materializations_for_node("features_m1")[0].metadata
    assert meta["drift/max_psi"].value > 0.25 and isinstance(
        meta["drift/psi/std_20"].value, float
    )  # plotted per symbol over time
    assert meta["drift/status"].value == "warning" and "std_" in meta["drift/worst_features"].value
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["features_m1_drift"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "EURUSD std_" in evaluation.metadata["worst_features"].value

    result = dg.materialize(
        [signals, *asset_checks], partition_key="USDJPY", instance=instance, resources=resources, selection=[signals]
    )
    meta = result.asset_materializations_for_node("signals")[0].metadata
    assert meta["drift/live/neutral_share"].value < 0.01 and meta["drift/reference/neutral_share"].value > 0.2
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["signals_drift"]
    assert not evaluation.passed and "neutral_share" in evaluation.description


def test_drift_checks_run_hourly_not_on_every_bar(sqlite_url, settings_for):
    from mt5_pipeline_tests.orchestration_support import defs_for

    defs = defs_for(settings_for(sqlite_url))
    repo = defs.get_repository_def()
    assert repo.get_schedule_def("drift_checks_schedule").cron_schedule == "7 * * * *"

    def steps(job: str) -> set[str]:
        return {node.name for node in defs.resolve_job_def(job).graph.nodes}

    assert steps("drift_checks_job") == {"features_m1_features_m1_drift", "signals_signals_drift"}
    for job in ("predict_job", "features_job"):
        assert not {s for s in steps(job) if s.endswith("_drift")}, job
    assert "features_m1_features_m1_finite" in steps("predict_job")  # the cheap checks still run per bar
