"""rf_m1: time splits that keep the embargo, honest metrics, persistence that refuses a
mismatch, and training end to end on synthetic bars on both backends."""

import json
import math
from datetime import datetime, timedelta, timezone

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sqlalchemy import select

from mt5_pipeline.learning.evaluation import classification_metrics, time_split, walk_forward_folds
from mt5_pipeline.learning.features import update_features
from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.learning.labels import LabelSpec, make_labels
from mt5_pipeline.learning.model import ModelTimeframeError, NoFeaturesError, predict_latest
from mt5_pipeline.learning.model_store import (
    ModelMismatchError,
    NoModelError,
    current_model_info,
    load_model,
    save_model,
)
from mt5_pipeline.learning.training import train_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import model_registry

END = datetime(2024, 6, 12, 12, 0, tzinfo=timezone.utc)


# ---- splits ---------------------------------------------------------------------------------


def _labelled_rows(horizon: int) -> pd.DataFrame:
    """Two symbols' labelled bars (with a weekend), sorted by time as training sees them."""
    parts = []
    for i, symbol in enumerate(("EURUSD", "USDJPY")):
        bars = generate_candles(4_000 + 500 * i, end=END, seed=i).rename(columns={"time": "ts"})
        labels = make_labels(bars, LabelSpec("horizon", horizon, 60, 20, 40, 0.0001))
        labels["symbol"] = symbol
        labels["bar"] = np.arange(len(labels))
        parts.append(labels.dropna(subset=["label"]))
    return pd.concat(parts).sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("horizon", [5, 60])
def test_time_split_and_walk_forward_leave_the_embargo(horizon):
    rows = _labelled_rows(horizon)
    folds = walk_forward_folds(rows["ts"].to_numpy(), rows["label_end_ts"].to_numpy(), n_folds=4)
    assert len(folds) == 4
    previous_train = np.array([], dtype=int)
    for fold in folds:
        train, test = rows.iloc[fold.train], rows.iloc[fold.test]
        assert len(train) and len(test)
        assert np.all(np.diff(fold.train) > 0) and np.all(np.diff(fold.test) > 0)  # never shuffled
        test_start = test["ts"].min()
        assert train["ts"].max() < test_start
        assert train["label_end_ts"].max() < test_start  # no label straddles the split
        for symbol in ("EURUSD", "USDJPY"):
            last_train_bar = train.loc[train["symbol"] == symbol, "bar"].max()
            first_test_bar = test.loc[test["symbol"] == symbol, "bar"].min()
            assert first_test_bar - last_train_bar > horizon  # the gap is at least the look-ahead, in bars
        assert set(previous_train) <= set(fold.train)  # expanding windows
        previous_train = fold.train
    # The test blocks follow each other; the last one is the main split.
    for a, b in zip(folds, folds[1:], strict=False):
        assert rows["ts"].iloc[a.test].max() < rows["ts"].iloc[b.test].min()
    main = time_split(rows["ts"].to_numpy(), rows["label_end_ts"].to_numpy())
    assert list(main.test) == list(folds[-1].test) and list(main.train) == list(folds[-1].train)
    assert len(main.test) == pytest.approx(0.2 * len(rows), abs=2)


def test_walk_forward_refuses_unsorted_rows():
    ts = np.array([3, 1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="sorted"):
        walk_forward_folds(ts, ts)


# ---- metrics ---------------------------------------------------------------------------------


def test_metrics_beside_baselines():
    y = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    perfect = classification_metrics(
        y, y.astype(float), train_positive_rate=0.6, buy_threshold=0.55, sell_threshold=0.45
    )
    assert perfect["auc"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["signal_hit_rate"] == 1.0
    assert perfect["baseline_majority_accuracy"] == pytest.approx(5 / 8)  # the train majority is 1
    assert perfect["baseline_always_buy_hit_rate"] == pytest.approx(5 / 8)
    assert perfect["baseline_auc"] == 0.5

    p = np.array([0.9, 0.6, 0.5, 0.4, 0.3, 0.56, 0.52, 0.44])
    m = classification_metrics(y, p, train_positive_rate=0.4, buy_threshold=0.55, sell_threshold=0.45)
    # BUY at 0.9, 0.6, 0.56 (hits: y=1, 1, 0); SELL at 0.4, 0.3, 0.44 (hits: y=0, no, no).
    assert m["signal_share"] == pytest.approx(6 / 8)
    assert m["buy_share"] == pytest.approx(3 / 8) and m["sell_share"] == pytest.approx(3 / 8)
    assert m["buy_hit_rate"] == pytest.approx(2 / 3) and m["sell_hit_rate"] == pytest.approx(1 / 3)
    assert m["signal_hit_rate"] == pytest.approx(3 / 6)
    assert m["baseline_majority_class"] == 0.0 and m["baseline_majority_accuracy"] == pytest.approx(3 / 8)
    constant = classification_metrics(
        y, np.full(8, 0.4), train_positive_rate=0.4, buy_threshold=0.55, sell_threshold=0.45
    )
    assert constant["auc"] == pytest.approx(constant["baseline_auc"])
    assert constant["log_loss"] == pytest.approx(constant["baseline_majority_log_loss"])
    one_class = classification_metrics(
        np.ones(4), np.full(4, 0.7), train_positive_rate=0.5, buy_threshold=0.55, sell_threshold=0.45
    )
    assert math.isnan(one_class["auc"])  # undefined, not zero
    assert all(isinstance(v, float) for v in m.values())


# ---- persistence ---------------------------------------------------------------------------


def _tiny_forest() -> tuple[RandomForestClassifier, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(MODEL_FEATURES)))
    y = (X[:, 0] + 0.3 * rng.normal(size=300) > 0).astype(int)
    return RandomForestClassifier(n_estimators=5, random_state=0, n_jobs=2).fit(X, y), X


def _meta(**changes) -> dict:
    meta = {
        "version": "test-1",
        "trained_at": "2024-06-12T12:00:00Z",
        "feature_names": list(MODEL_FEATURES),
        "feature_set_version": FEATURE_SET_VERSION,
        "sklearn_version": sklearn.__version__,
        "label_mode": "horizon",
        "label_horizon": 5,
        "metrics": {"auc": 0.51, "undefined": float("nan")},
    }
    meta.update(changes)
    return meta


def test_model_round_trips_through_save_and_load(tmp_path):
    forest, X = _tiny_forest()
    path = save_model(forest, _meta(), tmp_path / "rf_m1-test-1.pkl")
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.forest.predict_proba(X), forest.predict_proba(X))
    # The one-row fast path of predict_latest gives predict_proba's numbers.
    np.testing.assert_allclose(loaded.probability_up(X[:1]), forest.predict_proba(X[:1])[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(loaded.probability_up(X), forest.predict_proba(X)[:, 1], rtol=0, atol=1e-12)
    assert loaded.forest.n_jobs == 1  # one row at a time at inference
    assert loaded.version == "test-1" and loaded.trained_at == END
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["feature_names"] == list(MODEL_FEATURES)
    assert sidecar["metrics"]["undefined"] is None  # JSON has no NaN
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"feature_names": [*MODEL_FEATURES[:-1], "spread_ratio"]}, r"missing \['dow'\], unknown \['spread_ratio'\]"),
        ({"feature_names": list(reversed(MODEL_FEATURES))}, "another order"),
        ({"feature_set_version": "0"}, "feature set version 0"),
        ({"sklearn_version": "0.24.2"}, "scikit-learn 0.24.2"),
    ],
)
def test_a_mismatched_model_is_refused_with_what_differs_and_how_to_retrain(tmp_path, change, message):
    forest, _ = _tiny_forest()
    path = save_model(forest, _meta(**change), tmp_path / "rf_m1.pkl")
    with pytest.raises(ModelMismatchError, match=message) as info:
        load_model(path)
    assert "Retrain" in str(info.value) and "rf_m1" in str(info.value)


def test_an_unusable_current_model_is_reported_and_refused(sqlite_url, settings_for):
    settings = settings_for(sqlite_url)
    forest, _ = _tiny_forest()
    save_model(forest, _meta(sklearn_version="0.24.2"), settings.model_dir / "rf_m1.pkl")
    info = current_model_info(settings)
    assert info["version"] == "test-1" and "scikit-learn 0.24.2" in info["error"]  # /health shows it
    with pytest.raises(ModelMismatchError, match="scikit-learn 0.24.2"):
        predict_latest(settings, "EURUSD")
    save_model(forest, _meta(), settings.model_dir / "rf_m1.pkl")  # replaced: the cached refusal is not kept
    assert "error" not in current_model_info(settings)
    with pytest.raises(NoFeaturesError):
        predict_latest(settings, "EURUSD")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(NoModelError, match="rf_m1"):
        load_model(tmp_path / "rf_m1.pkl")
    joblib.dump({"something": "else"}, tmp_path / "other.pkl")
    with pytest.raises(ModelMismatchError, match="not an rf_m1 bundle"):
        load_model(tmp_path / "other.pkl")
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ModelMismatchError, match="cannot be loaded"):
        load_model(tmp_path / "broken.pkl")


# ---- end to end ------------------------------------------------------------------------------


def _load_market(url: str, bars: int = 10_000) -> None:
    for i, (symbol, price, digits) in enumerate((("EURUSD", 1.08, 5), ("USDJPY", 150.0, 3))):
        frame = generate_candles(bars, end=END, start_price=price, seed=20 + i, digits=digits, momentum=0.15)
        ingest_candles(url, symbol, "M1", frame, now=END)
        update_features(url, symbol, now=END + timedelta(minutes=1))  # the END bar has closed


def test_train_evaluate_persist_register_and_predict(db_url, settings_for):
    # SL/TP 10/20: the first model is promoted on its scores with a wide margin (test_promotion.py's MODEL says why).
    settings = settings_for(db_url, RF_N_ESTIMATORS=20, DEFAULT_SL_PIPS=10, DEFAULT_TP_PIPS=20)
    with pytest.raises(NoModelError, match="rf_m1"):
        predict_latest(settings, "EURUSD")
    assert current_model_info(settings) is None
    _load_market(db_url)

    result = train_model(settings, now=END + timedelta(hours=1))
    assert result.symbols == ["EURUSD", "USDJPY"]
    assert result.rows == result.metrics["train_rows"] > 10_000
    assert result.window[1] < result.evaluation_window[0]
    assert result.label_mode == "horizon" and result.feature_set_version == FEATURE_SET_VERSION
    assert all(isinstance(v, float) for v in result.metrics.values())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "auc",
        "log_loss",
        "brier",
        "signal_share",
        "signal_hit_rate",
        "baseline_majority_accuracy",
        "baseline_always_buy_hit_rate",
        "wf_auc_mean",
    ):
        assert key in result.metrics
    assert 0.3 < result.metrics["auc"] < 0.8  # synthetic data: a faint edge at most
    assert len(result.walk_forward) == 4 and all(f.get("auc") is not None for f in result.walk_forward)
    assert set(result.feature_importances) == set(MODEL_FEATURES)
    assert sum(result.feature_importances.values()) == pytest.approx(1.0)
    # Same bars, same execution policy: with other sides the exits differ, and so which
    # later signals find their symbol free (one position per symbol and timeframe).
    assert abs(result.backtest["trades"] - result.backtest["baseline_random_trades"]) <= 0.2 * result.backtest["trades"]

    model_dir = settings.model_dir
    assert result.path == model_dir / f"rf_m1-{result.version}.pkl" and result.path.exists()
    assert (model_dir / "rf_m1.pkl").read_bytes() == result.path.read_bytes()
    assert (
        result.equity_png == model_dir / f"rf_m1-{result.version}-equity.png"
        and result.equity_png.read_bytes()[:4] == b"\x89PNG"
    )
    sidecar = json.loads(result.path.with_suffix(".json").read_text())
    for key in (
        "version",
        "trained_at",
        "symbols",
        "train_window",
        "rows",
        "feature_names",
        "feature_set_version",
        "label_mode",
        "label_horizon",
        "metrics",
        "library_versions",
        "data_hash",
    ):
        assert key in sidecar, key
    assert sidecar["library_versions"]["sklearn"] == sklearn.__version__
    # What live trades are judged against (live_performance), and under which policy.
    assert len(sidecar["backtest_trade_pips"]) == result.backtest["trades"]
    assert sum(sidecar["backtest_trade_pips"]) == pytest.approx(
        result.backtest["total_pips"], abs=0.01 * result.backtest["trades"]
    )
    assert sidecar["execution_policy"] == {
        "entry": "one_per_symbol_timeframe",
        "max_hold_bars": settings.label_max_hold_bars,
    }
    assert load_model(result.path).forest.get_params()["max_depth"] == settings.rf_max_depth

    info = current_model_info(settings)
    assert info["version"] == result.version and info["trained_at"] == END + timedelta(hours=1)
    assert info["metrics"]["auc"] == pytest.approx(result.metrics["auc"])

    prediction = predict_latest(settings, "USDJPY")
    newest = generate_candles(10_000, end=END, start_price=150.0, seed=21, digits=3, momentum=0.15).iloc[-1]
    assert prediction.ts == newest["time"].to_pydatetime() and prediction.close == pytest.approx(newest["close"])
    assert 0.0 <= prediction.probability <= 1.0
    assert prediction.model_version == result.version and prediction.label_horizon == 5
    # A model only predicts the timeframe it was trained on.
    with pytest.raises(ModelTimeframeError, match="no model for H1") as refused:
        predict_latest(settings, "USDJPY", "H1")
    assert refused.value.available == ["M1"]
    # The forming bar is never predicted: at END + 30 s the END bar is still forming.
    assert predict_latest(settings, "USDJPY", now=END + timedelta(seconds=30)).ts == END - timedelta(minutes=1)
    with pytest.raises(NoFeaturesError, match="GBPUSD"):
        predict_latest(settings, "GBPUSD")

    # A retrain on the same data: a new version becomes current, and the cached model is replaced.
    again = train_model(settings, now=END + timedelta(hours=2))
    assert again.version != result.version and again.data_hash == result.data_hash
    assert again.metrics["auc"] == pytest.approx(result.metrics["auc"])  # fixed seed: the same forest
    assert predict_latest(settings, "USDJPY").model_version == again.version
    with get_engine(db_url).connect() as conn:
        rows = conn.execute(
            select(model_registry.c.version, model_registry.c.is_current).order_by(model_registry.c.trained_at)
        ).all()
    assert [(r.version, bool(r.is_current)) for r in rows] == [(result.version, False), (again.version, True)]


def test_triple_barrier_training_and_warm_up_symbols(pg_url, settings_for):
    settings = settings_for(
        pg_url,
        RF_N_ESTIMATORS=10,
        LABEL_MODE="triple_barrier",
        DEFAULT_SL_PIPS=5,
        DEFAULT_TP_PIPS=10,
        LABEL_MAX_HOLD_BARS=30,
    )
    _load_market(pg_url, bars=6_000)
    # Forced: this short, weak sample need not beat the baselines; the test is about the labels.
    result = train_model(settings, now=END, force=True)
    assert result.decision.decision == "forced" and "would have been" in result.decision.reason
    assert result.label_mode == "triple_barrier" and result.metrics["embargo_bars"] == 30
    assert 0.2 < result.metrics["test_positive_rate"] < 0.8
    # A symbol still in its warm-up has features but no usable row to predict from.
    young = generate_candles(100, end=END, seed=5)
    ingest_candles(pg_url, "GBPUSD", "M1", young, now=END)
    update_features(pg_url, "GBPUSD", now=END)
    with pytest.raises(NoFeaturesError, match="warm-up"):
        predict_latest(settings, "GBPUSD")


def test_hist_gradient_boosting_under_the_same_interface(sqlite_url, settings_for):
    from sklearn.ensemble import HistGradientBoostingClassifier

    settings = settings_for(sqlite_url, MODEL_KIND="hist_gradient_boosting", HGB_MAX_ITER=20)
    _load_market(sqlite_url, bars=6_000)
    result = train_model(settings, now=END, force=True)
    assert result.kind == "hist_gradient_boosting" and result.decision.decision == "forced"
    assert result.feature_importances == {}  # no impurity importances for boosting; the table is empty
    loaded = load_model(settings.model_dir / "rf_m1.pkl")
    assert isinstance(loaded.forest, HistGradientBoostingClassifier) and loaded.meta["kind"] == "hist_gradient_boosting"
    assert loaded.meta["params"]["max_iter"] == 20 and loaded.meta["params"]["early_stopping"] is False
    assert 0.3 < result.metrics["auc"] < 0.8 and "wf_auc_mean" in result.metrics
    X = np.random.default_rng(0).normal(size=(5, len(MODEL_FEATURES)))
    np.testing.assert_allclose(loaded.probability_up(X), loaded.forest.predict_proba(X)[:, 1])
    prediction = predict_latest(settings, "EURUSD")
    assert prediction.model_version == result.version and 0.0 <= prediction.probability <= 1.0
