"""The estimators a retrain can fit (``MODEL_KIND``): the seed's RandomForest, or
scikit-learn's HistGradientBoostingClassifier, built from the settings; and what is read
back from a fitted one (the probability of an up move, impurity importances)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from mt5_pipeline.learning.indicators import MODEL_FEATURES
from mt5_pipeline.settings import Settings


def make_forest(settings: Settings, **overrides: Any) -> RandomForestClassifier:
    params: dict[str, Any] = dict(
        n_estimators=settings.rf_n_estimators,
        max_depth=settings.rf_max_depth,
        min_samples_leaf=settings.rf_min_samples_leaf,
        max_samples=settings.rf_max_samples if settings.rf_max_samples < 1 else None,
        random_state=settings.rf_random_state,
        n_jobs=-1,  # all cores to train; predict_latest sets 1
    )
    params.update(overrides)
    return RandomForestClassifier(**params)


def make_hist_gradient_boosting(settings: Settings, **overrides: Any) -> HistGradientBoostingClassifier:
    params: dict[str, Any] = dict(
        max_iter=settings.hgb_max_iter,
        learning_rate=settings.hgb_learning_rate,
        min_samples_leaf=settings.rf_min_samples_leaf,
        # Early stopping would hold out a random (not time-ordered) tenth of the training
        # rows; a fixed number of rounds keeps the evaluation purely by time.
        early_stopping=False,
        random_state=settings.rf_random_state,
    )
    params.update(overrides)
    return HistGradientBoostingClassifier(**params)


def make_estimator(settings: Settings, **overrides: Any) -> Any:  # a scikit-learn classifier (untyped)
    """The MODEL_KIND estimator with its settings."""
    if settings.model_kind == "hist_gradient_boosting":
        return make_hist_gradient_boosting(settings, **overrides)
    return make_forest(settings, **overrides)


def probability(estimator: Any, X: np.ndarray) -> np.ndarray:
    """P(label = 1) per row; zeros when the estimator never saw a 1."""
    classes = list(estimator.classes_)
    return estimator.predict_proba(X)[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


def feature_importances(estimator: Any) -> dict[str, float]:
    """Impurity importances of a forest; empty for estimators without them (gradient boosting)."""
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        return {}
    return {name: float(v) for name, v in zip(MODEL_FEATURES, values, strict=True)}
