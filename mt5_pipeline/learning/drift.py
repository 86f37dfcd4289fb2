"""Drift: do the live features and signals still look like what the champion learnt from?

**Features: population stability index (PSI).** At training time the champion stores,
per symbol and feature, the decile edges of its training window and the share of
training rows in each decile (``meta["feature_reference"]``). The check bins the last
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
asset decides), against the same figures of the champion's out-of-sample evaluation
*for the same symbol* (``meta["signal_reference"]["by_symbol"]``), as the features are:
one model serves every market, and a symbol whose normal mix differs from the pool's
would otherwise warn forever. A symbol with too few evaluation rows (or a champion
trained before this) is compared with the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import desc, func, select

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.learning.model_store import ModelMismatchError, NoModelError, current_model_info, load_current
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.features import feature_symbols
from mt5_pipeline.storage.schema import features_m1

BINS = 10
# The mean probability moving this far from the champion's out-of-sample mean is a
# warning too: the model leans one way it never leaned while it was evaluated.
MEAN_PROBABILITY_WARN = 0.05
# Fewer live rows than this and a share or a PSI is noise, not drift.
MIN_ROWS = 30
WORST_SHOWN = 3
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


def signal_reference(symbols: np.ndarray, probability: np.ndarray, buy: float, sell: float) -> dict:
    """Decision shares of the evaluation rows, pooled and per symbol (with MIN_ROWS rows or more)."""
    symbols = np.asarray(symbols)
    probability = np.asarray(probability, dtype=np.float64)
    by_symbol = {}
    for sym in sorted(set(symbols.tolist())):
        mine = probability[symbols == sym]
        if len(mine) >= MIN_ROWS:
            by_symbol[str(sym)] = {**decision_shares(mine, buy, sell), "rows": int(len(mine))}
    return {"all": {**decision_shares(probability, buy, sell), "rows": int(len(probability))}, "by_symbol": by_symbol}


def _signal_reference_for(reference: dict, symbol: str) -> tuple[dict, str]:
    """(the shares to compare with, which ones): the symbol's own, else the pool's."""
    if "by_symbol" not in reference and "all" not in reference:
        return reference, "all symbols"  # a champion from before per-symbol references
    own = (reference.get("by_symbol") or {}).get(symbol)
    return (own, symbol) if own else (reference.get("all") or {}, "all symbols")


# ---- the reports ----------------------------------------------------------------------------------


@dataclass
class DriftReport:
    symbol: str
    timeframe: str
    passed: bool
    description: str
    values: dict[str, float] = field(default_factory=dict)  # numeric: plotted over time by the UI
    worst: list[tuple[str, float]] = field(default_factory=list)
    window: tuple[datetime, datetime] | None = None
    rows: int = 0


def recent_rows(settings: Settings, symbol: str, timeframe: str, hours: float) -> pd.DataFrame:
    """Usable feature rows of the last ``hours`` up to the symbol's newest usable row
    (the data's clock, not the wall's)."""

    f = features_m1.c
    where = (
        f.symbol == symbol,
        f.timeframe == timeframe,
        f.usable.is_(True),
        f.feature_set_version == FEATURE_SET_VERSION,
    )
    with get_engine(settings.database_url).connect() as conn:
        newest = conn.execute(select(func.max(f.ts)).where(*where)).scalar()
        if newest is None:
            return pd.DataFrame(columns=["ts", *MODEL_FEATURES])
        start = as_utc(newest) - timedelta(hours=hours)
        rows = conn.execute(
            select(f.ts, *(f[c] for c in MODEL_FEATURES)).where(*where, f.ts > start).order_by(desc(f.ts))
        ).all()
    frame = pd.DataFrame(rows, columns=["ts", *MODEL_FEATURES])
    for c in MODEL_FEATURES:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
    return frame.iloc[::-1].reset_index(drop=True)


def _champion_meta(settings: Settings, timeframe: str) -> dict | None:
    info = current_model_info(settings, timeframe)
    return None if info is None or info.get("error") else info


def _too_few_rows(settings: Settings, symbol: str, timeframe: str, n: int) -> DriftReport:
    """Passes: too few recent rows is no evidence of drift."""
    return DriftReport(
        symbol,
        timeframe,
        True,
        f"{symbol}: only {n} usable rows in the last {settings.drift_window_hours:g} h; nothing to compare",
        rows=n,
    )


def _over_frame(report: DriftReport, frame: pd.DataFrame) -> DriftReport:
    """`report` with the window and the count of the rows it was computed over."""
    ts = pd.to_datetime(frame["ts"], utc=True)
    return replace(report, window=(ts.min().to_pydatetime(), ts.max().to_pydatetime()), rows=len(frame))


def feature_drift(
    settings: Settings, symbol: str, timeframe: str = "M1", rows: pd.DataFrame | None = None
) -> DriftReport:
    """PSI of each feature over the last DRIFT_WINDOW_HOURS against the champion's training window."""
    meta = _champion_meta(settings, timeframe)
    if meta is None or not meta.get("feature_reference"):
        why = (
            "no usable champion"
            if meta is None
            else f"champion {meta.get('version')} has no feature reference (trained before drift checks): retrain"
        )
        return DriftReport(symbol, timeframe, False, f"{symbol}: {why}")
    frame = rows if rows is not None else recent_rows(settings, symbol, timeframe, settings.drift_window_hours)
    if len(frame) < MIN_ROWS:
        return _too_few_rows(settings, symbol, timeframe, len(frame))
    reference = meta["feature_reference"]
    # The symbol's own training rows; a symbol the champion never saw is compared with the pool.
    reference = (reference.get("by_symbol") or {}).get(symbol) or reference.get("all") or reference
    values = feature_psi(reference, frame)
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    worst = sorted(finite.items(), key=lambda kv: -kv[1])[:WORST_SHOWN]
    top = max(finite.values()) if finite else math.nan
    limit = settings.drift_psi_warn
    drifted = [k for k, v in finite.items() if v > limit]
    named = ", ".join(f"{k} {v:.3f}" for k, v in worst)
    desc_ = (
        f"{symbol}: {len(drifted)} feature(s) past PSI {limit:g} over the last {settings.drift_window_hours:g} h vs "
        f"{meta.get('version')}'s training window; worst: {named}"
        if drifted
        else f"{symbol}: every feature within PSI {limit:g} (worst: {named})"
    )
    out = {f"psi/{k}": float(v) for k, v in finite.items()}
    out.update(
        {
            "max_psi": float(top),
            "mean_psi": float(np.mean(list(finite.values()))) if finite else math.nan,
            "drifted_features": float(len(drifted)),
            "rows": float(len(frame)),
        }
    )
    return _over_frame(DriftReport(symbol, timeframe, not drifted, desc_, out, worst), frame)


def signal_drift(
    settings: Settings, symbol: str, timeframe: str = "M1", rows: pd.DataFrame | None = None
) -> DriftReport:
    """Live BUY/SELL/neutral shares and mean probability over the window against the champion's evaluation."""

    try:
        loaded = load_current(settings, timeframe)
    except (NoModelError, ModelMismatchError) as exc:
        return DriftReport(symbol, timeframe, False, f"{symbol}: no usable champion ({str(exc)[:120]})")
    reference = loaded.meta.get("signal_reference")
    if not reference:
        return DriftReport(
            symbol,
            timeframe,
            False,
            f"{symbol}: champion {loaded.version} has no signal reference (trained before drift checks): retrain",
        )
    frame = rows if rows is not None else recent_rows(settings, symbol, timeframe, settings.drift_window_hours)
    if len(frame) < MIN_ROWS:
        return _too_few_rows(settings, symbol, timeframe, len(frame))
    reference, against = _signal_reference_for(reference, symbol)
    X = frame[list(loaded.meta.get("feature_names") or MODEL_FEATURES)].to_numpy(dtype=np.float64)
    live = decision_shares(loaded.probability_up(X), settings.signal_buy_threshold, settings.signal_sell_threshold)
    values: dict[str, Any] = {}
    parted = []
    for key, value in live.items():
        ref = reference.get(key)
        values[f"live/{key}"] = float(value)
        if ref is None:
            continue
        values[f"reference/{key}"] = float(ref)
        gap = abs(float(value) - float(ref))
        values[f"gap/{key}"] = gap
        limit = MEAN_PROBABILITY_WARN if key == "mean_probability" else settings.drift_signal_share_warn
        if gap > limit:
            parted.append(f"{key} {value:.3f} vs {float(ref):.3f}")
    values["rows"] = float(len(frame))
    values["reference_is_symbol"] = float(against == symbol)
    desc_ = (
        f"{symbol}: live signals part from {loaded.version}'s backtest ({against}) over the last "
        f"{settings.drift_window_hours:g} h: " + "; ".join(parted)
        if parted
        else f"{symbol}: BUY {live['buy_share']:.2f} / SELL {live['sell_share']:.2f} / "
        f"neutral {live['neutral_share']:.2f}, "
        f"mean probability {live['mean_probability']:.3f}, in line with {loaded.version}'s backtest ({against})"
    )
    return _over_frame(DriftReport(symbol, timeframe, not parted, desc_, values, []), frame)


def symbols_with_features(settings: Settings, timeframe: str = "M1") -> list[str]:
    return feature_symbols(settings.database_url, timeframe)


def window_label(report: DriftReport) -> str:
    if report.window is None:
        return "none"
    return f"{report.window[0].isoformat()} .. {report.window[1].isoformat()}"


__all__ = [
    "BINS",
    "CALENDAR_FEATURES",
    "DriftReport",
    "decision_shares",
    "feature_drift",
    "feature_psi",
    "psi",
    "recent_rows",
    "reference_histograms",
    "signal_drift",
    "signal_reference",
    "symbols_with_features",
    "window_label",
    "window_start",
    "resolve_now",
]
