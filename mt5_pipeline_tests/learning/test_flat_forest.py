"""The flat forest's one-row probability is scikit-learn's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from mt5_pipeline.learning.flat_forest import FlatForest
from mt5_pipeline.learning.model_store import LoadedModel, forest_probability_up

RNG = np.random.default_rng(7)
X = RNG.normal(size=(2500, 14))
Y = (X[:, 0] - 0.5 * X[:, 3] + RNG.normal(size=len(X)) > 0).astype(int)


@pytest.mark.parametrize(
    "params",
    [
        {"n_estimators": 100, "max_depth": 12, "min_samples_leaf": 50},  # the defaults
        {"n_estimators": 30, "max_depth": 8, "min_samples_leaf": 20},
        {"n_estimators": 5, "max_depth": None, "min_samples_leaf": 1},  # deep, uneven trees
        {"n_estimators": 1, "max_depth": 3, "min_samples_leaf": 1},
    ],
)
def test_the_same_numbers_as_the_trees_one_by_one_and_predict_proba(params):
    forest = RandomForestClassifier(random_state=3, **params).fit(X, Y)
    flat = FlatForest(forest)
    # Fresh rows, and training rows (their values sit right beside the split thresholds).
    rows = np.vstack([RNG.normal(size=(300, 14)) * 2, X[:200], np.zeros((1, 14))])
    ours = np.array([flat.probability_up(r) for r in rows])
    per_tree = np.array([forest_probability_up(forest, r[None, :])[0] for r in rows])
    sklearn = forest.predict_proba(rows)[:, 1]
    assert np.array_equal(ours, per_tree)
    assert np.array_equal(ours, sklearn)
    assert ours.min() < 0.5 < ours.max()  # the rows reach both sides


def test_a_forest_that_never_saw_class_1():
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X[:50], np.zeros(50, dtype=int))
    assert FlatForest(forest).probability_up(X[0]) == 0.0


def test_the_loaded_model_uses_it_for_one_row_only(tmp_path):
    forest = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=1).fit(X, Y)
    loaded = LoadedModel(forest, {"version": "v"}, tmp_path / "m.joblib")
    one = loaded.probability_up(X[:1])
    assert isinstance(loaded._flat, FlatForest)
    assert np.array_equal(one, forest.predict_proba(X[:1])[:, 1])
    assert np.array_equal(loaded.probability_up(X[:40]), forest.predict_proba(X[:40])[:, 1])
