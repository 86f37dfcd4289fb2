"""Evaluation by time: fit and score every walk-forward fold (``evaluation.py`` cuts them,
with a purge), keep the estimator fit on the main split's training part, and summarise
the folds. The metrics in a model's sidecar describe exactly the estimator that trades
(the cost: the newest ``TEST_FRACTION`` is only evaluated on, not learnt from)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mt5_pipeline.clock import iso_z
from mt5_pipeline.learning.estimators import make_estimator, probability
from mt5_pipeline.learning.evaluation import Fold, classification_metrics
from mt5_pipeline.learning.labels import lookahead_bars
from mt5_pipeline.learning.training_set import MIN_TRAIN_ROWS, ns_to_datetime
from mt5_pipeline.settings import Settings


def _fold_record(fold: Fold, ts_ns: np.ndarray, metrics: dict) -> dict:
    record: dict[str, Any] = {
        "fold": fold.number,
        "train_rows": int(len(fold.train)),
        "test_rows": int(len(fold.test)),
        "train_end": iso_z(ns_to_datetime(ts_ns[fold.train[-1]])) if len(fold.train) else None,
        "test_start": iso_z(ns_to_datetime(ts_ns[fold.test[0]])) if len(fold.test) else None,
        "test_end": iso_z(ns_to_datetime(ts_ns[fold.test[-1]])) if len(fold.test) else None,
    }
    for key in (
        "auc",
        "accuracy",
        "balanced_accuracy",
        "log_loss",
        "brier",
        "signal_share",
        "signal_hit_rate",
        "baseline_majority_accuracy",
        "baseline_majority_log_loss",
        "baseline_always_buy_hit_rate",
    ):
        value = metrics.get(key, math.nan)
        record[key] = float(value) if value is not None and math.isfinite(value) else None
    return record


@dataclass
class CrossValidation:
    estimator: Any  # fit on the main split's training part
    metrics: dict  # the main split's, plus wf_* summaries and row counts
    test_probability: np.ndarray  # the estimator's on the main split's evaluation part
    folds: list[dict]
    fit_s: float


def cross_validate(
    settings: Settings, X: np.ndarray, y: np.ndarray, ts_ns: np.ndarray, folds: list[Fold]
) -> CrossValidation:
    """Fit and score every walk-forward fold; the last one is the main split."""
    main = folds[-1]
    records: list[dict] = []
    kept = None
    fit_s = 0.0
    for fold in folds:
        if fold is not main and (
            len(fold.train) < MIN_TRAIN_ROWS or len(np.unique(y[fold.train])) < 2 or len(fold.test) == 0
        ):
            records.append(
                {
                    "fold": fold.number,
                    "skipped": True,
                    "train_rows": int(len(fold.train)),
                    "test_rows": int(len(fold.test)),
                }
            )
            continue
        estimator = make_estimator(settings)
        t0 = time.perf_counter()
        estimator.fit(X[fold.train], y[fold.train])
        fit_s += time.perf_counter() - t0
        p = probability(estimator, X[fold.test])
        fold_metrics = classification_metrics(
            y[fold.test],
            p,
            train_positive_rate=float(y[fold.train].mean()),
            buy_threshold=settings.signal_buy_threshold,
            sell_threshold=settings.signal_sell_threshold,
        )
        records.append(_fold_record(fold, ts_ns, fold_metrics))
        if fold is main:
            kept = (estimator, fold_metrics, p)
    assert kept is not None
    estimator, metrics, test_p = kept
    evaluated = [r for r in records if r.get("auc") is not None]
    aucs = np.array([r["auc"] for r in evaluated], dtype=float)
    accs = np.array([r["accuracy"] for r in evaluated], dtype=float)
    metrics = dict(metrics)
    metrics.update(
        {
            "train_rows": float(len(main.train)),
            "test_rows": float(len(main.test)),
            "embargo_bars": float(lookahead_bars(settings)),
            "train_positive_rate": float(y[main.train].mean()),
            "mean_probability": float(np.mean(test_p)) if len(test_p) else math.nan,
            "wf_folds": float(len(evaluated)),
            "wf_auc_mean": float(aucs.mean()) if len(aucs) else math.nan,
            "wf_auc_min": float(aucs.min()) if len(aucs) else math.nan,
            "wf_auc_std": float(aucs.std()) if len(aucs) else math.nan,
            "wf_accuracy_mean": float(accs.mean()) if len(accs) else math.nan,
        }
    )
    return CrossValidation(estimator, metrics, test_p, records, fit_s)
