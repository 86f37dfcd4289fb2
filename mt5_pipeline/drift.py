"""Drift: do the live features and signals still look like what the champion learnt from?

**Features: population stability index (PSI).** At training time the champion stores,
per feature, the decile edges of its training window and the share of training rows in
each decile (``meta["feature_reference"]``). The check bins the last
``DRIFT_WINDOW_HOURS`` of each symbol's usable feature rows with the same edges and
sums ``(live - ref) * ln(live / ref)`` over the bins.

Why PSI and not a two-sample test (Kolmogorov-Smirnov, say): with a day of M1 bars
(1,440 rows) against months of training rows, a test's p-value flags differences far
too small to matter — it measures sample size as much as drift — while PSI is a size of
shift on a fixed scale with conventional thresholds (below 0.1 stable, 0.1-0.25
moderate, above 0.25 large: ``DRIFT_PSI_WARN``); and it needs only ten numbers per
feature from the training window, kept in the model's sidecar, not the training rows.
Calendar features (``hour``, ``dow``) are left out: a one-day window holds one weekday
by construction, which is not drift.

**Signals.** The share of BUY, SELL and neutral decisions and the mean probability
over the window, from the model's probability on each usable bar (what the signals
asset decides), against the same figures of the champion's out-of-sample evaluation.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from mt5_pipeline.clock import resolve_now

BINS = 10
CALENDAR_FEATURES = ("hour", "dow")
# A bin no row falls into would make ln(live/ref) infinite; this floor is the usual fix.
_FLOOR = 1e-4


def reference_histograms(X: np.ndarray, names: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """Per feature: inner decile edges of the training rows and the share of rows per bin."""
    out: dict[str, dict] = {}
    for j, name in enumerate(names):
        column = np.asarray(X[:, j], dtype=np.float64)
        column = column[np.isfinite(column)]
        if len(column) == 0:
            continue
        edges = np.unique(np.quantile(column, np.linspace(0, 1, BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=len(edges) + 1)
        out[name] = {"edges": [float(e) for e in edges], "shares": [float(c) for c in counts / counts.sum()]}
    return out


def psi(reference: dict, values: np.ndarray) -> float:
    """Population stability index of ``values`` against a reference histogram; NaN without values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan
    edges = np.asarray(reference["edges"], dtype=np.float64)
    ref = np.maximum(np.asarray(reference["shares"], dtype=np.float64), _FLOOR)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    live = np.maximum(counts / counts.sum(), _FLOOR)
    return float(np.sum((live - ref) * np.log(live / ref)))


def feature_psi(reference: dict[str, dict], frame: pd.DataFrame) -> dict[str, float]:
    """PSI per (non-calendar) feature of ``frame``'s rows against the champion's reference."""
    return {
        name: psi(ref, frame[name].to_numpy(dtype=np.float64))
        for name, ref in reference.items()
        if name not in CALENDAR_FEATURES and name in frame.columns
    }


def window_start(now: datetime | None, hours: float) -> datetime:
    return resolve_now(now) - timedelta(hours=hours)


def decision_shares(probability: np.ndarray, buy: float, sell: float) -> dict[str, float]:
    """BUY, SELL and neutral shares and the mean probability of a set of probabilities."""
    p = np.asarray(probability, dtype=np.float64)
    if len(p) == 0:
        return {"buy_share": math.nan, "sell_share": math.nan, "neutral_share": math.nan, "mean_probability": math.nan}
    b, s = float((p >= buy).mean()), float((p <= sell).mean())
    return {"buy_share": b, "sell_share": s, "neutral_share": 1.0 - b - s, "mean_probability": float(p.mean())}
