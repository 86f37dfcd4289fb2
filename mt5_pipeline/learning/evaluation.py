"""Honest evaluation: time splits with a purge, walk-forward folds, metrics beside naive baselines.

- **Split by time only.** Rows (all symbols together) are ordered by bar time; the
  evaluation part is the last ``TEST_FRACTION`` of the rows and the model trains on
  what comes before. Nothing is shuffled across time.
- **Embargo.** A training row whose label reads a bar at or after the first evaluation
  bar (``label_end_ts >= test_start``) is dropped, so no label straddles the split: the
  gap between the last training bar and the evaluation part is at least the label's
  look-ahead (``LABEL_HORIZON_BARS``, or ``LABEL_MAX_HOLD_BARS`` for triple-barrier
  labels), counted in each symbol's own bars.
- **Walk-forward.** Expanding windows: fold k evaluates the k-th of the last
  ``n_folds`` blocks of ``TEST_FRACTION`` of the rows and trains on everything before
  it (purged the same way). The last fold is the main split.
- **Baselines** beside every metric: the majority class of the training labels (as a
  constant probability, the training base rate) and always-BUY, so nobody mistakes
  noise for skill.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, brier_score_loss, log_loss, roc_auc_score

TEST_FRACTION = 0.2
DEFAULT_FOLDS = 4


@dataclass(frozen=True)
class Fold:
    number: int  # 1-based; the last fold is the main split
    train: np.ndarray  # row positions
    test: np.ndarray
    test_start_ns: int
    test_end_ns: int  # exclusive; the last fold's is past the data


# Row times: int64 nanoseconds, datetime64, or timezone-aware times.
Times = np.ndarray | pd.Series | pd.DatetimeIndex


def _ns(values: Times) -> np.ndarray:
    """Int64 nanoseconds from int64 ns, datetime64, or timezone-aware times."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return values.astype(np.int64)
    return pd.DatetimeIndex(values).as_unit("ns").asi8


def walk_forward_folds(
    ts: Times, label_end_ts: Times, n_folds: int = DEFAULT_FOLDS, test_fraction: float = TEST_FRACTION
) -> list[Fold]:
    """Expanding-window folds over rows sorted by ``ts`` (int64 ns or datetime64).

    ``label_end_ts`` is the time of the last bar each row's label reads (NaT/None is not
    allowed: unlabelled rows must be dropped first).
    """
    ts_ns, end_ns = _ns(ts), _ns(label_end_ts)
    n = len(ts_ns)
    if n and np.any(np.diff(ts_ns) < 0):
        raise ValueError("rows must be sorted by ts")
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    max_folds = max(1, int(round(1 / test_fraction)) - 1)
    if not 1 <= n_folds <= max_folds:
        raise ValueError(f"n_folds must be between 1 and {max_folds} with test_fraction {test_fraction}")
    positions = np.arange(n)
    folds: list[Fold] = []
    if n == 0:
        return folds
    big = np.iinfo(np.int64).max
    for k in range(1, n_folds + 1):
        blocks_after = n_folds - k  # evaluation blocks that follow this fold's
        start_row = int(n * (1 - test_fraction * (blocks_after + 1)))
        end_row = int(n * (1 - test_fraction * blocks_after))
        start_ns = int(ts_ns[min(start_row, n - 1)])
        end_ns_ = int(ts_ns[end_row]) if end_row < n else big
        test = positions[(ts_ns >= start_ns) & (ts_ns < end_ns_)]
        train = positions[(ts_ns < start_ns) & (end_ns < start_ns)]
        folds.append(Fold(k, train, test, start_ns, end_ns_))
    return folds


def time_split(ts: Times, label_end_ts: Times, test_fraction: float = TEST_FRACTION) -> Fold:
    """The main split: train on the earlier part, evaluate on the last ``test_fraction``."""
    return walk_forward_folds(ts, label_end_ts, 1, test_fraction)[0]


def _safe(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """The metric, or NaN where it is undefined (e.g. one class only), not zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn(*args, **kwargs))
        except ValueError:
            return math.nan
    return value


def classification_metrics(
    y_true: np.ndarray,
    probability: np.ndarray,
    *,
    train_positive_rate: float,
    buy_threshold: float,
    sell_threshold: float,
) -> dict[str, float]:
    """Out-of-sample metrics of probabilities of class 1, next to the naive baselines'."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    n = len(y)
    if n == 0:
        raise ValueError("no rows to evaluate")
    predicted = (p >= 0.5).astype(np.int64)
    buy = p >= buy_threshold
    sell = p <= sell_threshold
    signal = buy | sell
    correct = (buy & (y == 1)) | (sell & (y == 0))

    majority = 1 if train_positive_rate >= 0.5 else 0
    base_p = np.full(n, min(max(train_positive_rate, 1e-6), 1 - 1e-6))

    def share(mask: np.ndarray) -> float:
        return float(mask.mean())

    def rate(hits: np.ndarray, among: np.ndarray) -> float:
        return float(hits[among].mean()) if among.any() else math.nan

    return {
        "accuracy": _safe(accuracy_score, y, predicted),
        "balanced_accuracy": _safe(balanced_accuracy_score, y, predicted),
        "auc": _safe(roc_auc_score, y, p),
        "log_loss": _safe(log_loss, y, p, labels=[0, 1]),
        "brier": float(brier_score_loss(y, p, pos_label=1)) if n else math.nan,
        "signal_share": share(signal),
        "buy_share": share(buy),
        "sell_share": share(sell),
        "signal_hit_rate": rate(correct, signal),
        "buy_hit_rate": rate(y == 1, buy),
        "sell_hit_rate": rate(y == 0, sell),
        "test_positive_rate": float(y.mean()),
        "baseline_majority_class": float(majority),
        "baseline_majority_accuracy": float((y == majority).mean()),
        "baseline_majority_balanced_accuracy": 0.5,
        "baseline_auc": 0.5,
        "baseline_majority_log_loss": _safe(log_loss, y, base_p, labels=[0, 1]),
        "baseline_majority_brier": float(brier_score_loss(y, base_p, pos_label=1)),
        "baseline_always_buy_accuracy": float((y == 1).mean()),
        "baseline_always_buy_signal_share": 1.0,
        "baseline_always_buy_hit_rate": float((y == 1).mean()),
    }
