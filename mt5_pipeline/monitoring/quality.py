"""Data-quality checks on candles, features, the model and the queue.

Plain functions returning :class:`CheckOutcome`; the Dagster asset checks only wrap
them, so an operator script or a test can run the same checks without Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, or_, select

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.market.extremes import EXTREME_CHECK_BARS, EXTREME_SIGMAS, extreme_bars
from mt5_pipeline.settings import TIMEFRAME_SECONDS, Settings
from mt5_pipeline.storage.candles import list_symbols, read_candles
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import FEATURE_COLUMNS, candles, features_m1, signals_queue

if TYPE_CHECKING:
    from mt5_pipeline.learning.drift import DriftReport

# A gap this long outside a weekend is an outage worth a warning; single missing
# minutes are normal in quiet markets and are only counted.
LONG_GAP_MINUTES = 30
# Below the baseline by more than this, the model is probably learning noise.
AUC_MARGIN = 0.02
# Values beyond this are infinite (PostgreSQL also sorts NaN above every number, and
# SQLite stores NaN as NULL), so one comparison finds NaN and infinity on both.
_HUGE = 1e308


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: str = "ERROR"  # ERROR or WARN


# ---- candles -------------------------------------------------------------------


def candles_ohlc_consistent(database_url: str) -> CheckOutcome:
    c = candles.c
    bad = or_(
        c.low <= 0,
        c.high < c.low,
        c.high < c.open,
        c.high < c.close,
        c.low > c.open,
        c.low > c.close,
        c.tick_volume < 0,
    )
    with get_engine(database_url).connect() as conn:
        total = conn.execute(select(func.count()).select_from(candles)).scalar_one()
        broken = conn.execute(select(func.count()).select_from(candles).where(bad)).scalar_one()
    return CheckOutcome(
        broken == 0, f"{broken} of {total} bars break OHLC consistency", {"bars": total, "inconsistent_bars": broken}
    )


def candles_no_duplicates(database_url: str) -> CheckOutcome:
    # The primary key forbids exact duplicates; this also catches bars stored twice
    # under different symbol spellings ("eurusd" and "EURUSD").
    key = func.upper(candles.c.symbol)
    dupes = (
        select(key, candles.c.timeframe, candles.c.ts)
        .group_by(key, candles.c.timeframe, candles.c.ts)
        .having(func.count() > 1)
        .subquery()
    )
    with get_engine(database_url).connect() as conn:
        count = conn.execute(select(func.count()).select_from(dupes)).scalar_one()
    return CheckOutcome(count == 0, f"{count} duplicated bars", {"duplicate_bars": count})


def _is_weekend_gap(prev: pd.Series, nxt: pd.Series) -> np.ndarray:
    """True where the closed interval between two bars contains Saturday (the FX weekend)."""
    days = (nxt.dt.normalize() - prev.dt.normalize()).dt.days.to_numpy()
    prev_dow = prev.dt.day_of_week.to_numpy()  # Monday=0 .. Saturday=5
    # Days from prev's weekday to the next Saturday; the gap covers Saturday if it
    # spans at least that many calendar days.
    to_saturday = (5 - prev_dow) % 7
    return days >= to_saturday


def candles_gaps(database_url: str, timeframe: str = "M1") -> CheckOutcome:
    step = TIMEFRAME_SECONDS[timeframe]
    per_symbol: dict[str, dict[str, int]] = {}
    for symbol, _ in list_symbols(database_url, timeframe):
        ts = read_candles(database_url, symbol, timeframe)["ts"]  # COPY on PostgreSQL: fast for years of bars
        if len(ts) < 2:
            per_symbol[symbol] = {"gaps": 0, "weekend_gaps": 0, "long_gaps": 0}
            continue
        prev, nxt = ts.iloc[:-1].reset_index(drop=True), ts.iloc[1:].reset_index(drop=True)
        delta = (nxt - prev).dt.total_seconds().to_numpy()
        is_gap = delta > step
        weekend = is_gap & _is_weekend_gap(prev, nxt)
        other = is_gap & ~weekend
        long_ = other & (delta > LONG_GAP_MINUTES * 60)
        per_symbol[symbol] = {
            "gaps": int(other.sum()),
            "weekend_gaps": int(weekend.sum()),
            "long_gaps": int(long_.sum()),
        }
    long_total = sum(v["long_gaps"] for v in per_symbol.values())
    meta: dict[str, Any] = {f"{s}_{k}": v for s, d in per_symbol.items() for k, v in d.items()}
    meta["long_gaps"] = long_total
    meta["other_gaps"] = sum(v["gaps"] for v in per_symbol.values())
    return CheckOutcome(
        long_total == 0,
        f"{meta['other_gaps']} gaps outside weekends, {long_total} longer than {LONG_GAP_MINUTES} min",
        meta,
        severity="WARN",
    )


def candles_fresh(
    database_url: str, settings: Settings, *, now: datetime | None = None, timeframe: str = "M1"
) -> CheckOutcome:
    now = resolve_now(now)
    limit = settings.max_bar_age_seconds(timeframe)
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(
            select(candles.c.symbol, func.max(candles.c.ts))
            .where(candles.c.timeframe == timeframe)
            .group_by(candles.c.symbol)
        ).all()
    if not rows:
        return CheckOutcome(False, "no candles yet", {"symbols": 0}, severity="WARN")
    step = TIMEFRAME_SECONDS[timeframe]
    # A bar's age counts from its close (open time + one bar), as the signal guard does.
    ages = {symbol: (now - (as_utc(newest) + timedelta(seconds=step))).total_seconds() for symbol, newest in rows}
    stale = sorted(s for s, age in ages.items() if age > limit)
    meta: dict[str, Any] = {f"{s}_newest_bar_age_s": round(a, 1) for s, a in ages.items()}
    meta["limit_s"] = limit
    desc = f"stale feed for {', '.join(stale)}" if stale else f"every symbol's newest bar is within {limit} s"
    return CheckOutcome(not stale, desc, meta, severity="WARN")


# ---- extreme bars (the rule is market.extremes) ------------------------------------


def candles_extreme_bars(database_url: str) -> CheckOutcome:
    """Extreme bars among each series' newest EXTREME_CHECK_BARS; fails (a warning) while
    one is unconfirmed: awaiting the next bars, or not held by them (a likely bad tick)."""

    found: list[dict[str, Any]] = []
    for symbol, timeframe in list_symbols(database_url):
        frame = read_candles(database_url, symbol, timeframe, last_n=EXTREME_CHECK_BARS)
        flags = extreme_bars(frame)
        for _, row in flags[flags["extreme"]].iterrows():
            state = {None: "awaiting", True: "confirmed", False: "not confirmed"}[row["confirmed"]]
            found.append(
                {
                    "symbol": symbol,
                    "timeframe": timeframe,
                    "ts": pd.Timestamp(row["ts"]).isoformat(),
                    "sigmas": round(float(row["sigmas"]), 1),
                    "state": state,
                }
            )
    unconfirmed = [f for f in found if f["state"] != "confirmed"]
    meta: dict[str, Any] = {
        "extreme_bars": len(found),
        "unconfirmed": len(unconfirmed),
        "threshold_sigmas": EXTREME_SIGMAS,
    }
    if found:
        meta["bars"] = found[-20:]
    shown = "; ".join(
        f"{f['symbol']} {f['timeframe']} {f['ts']} ({f['sigmas']} sd, {f['state']})" for f in unconfirmed[:5]
    )
    desc = (
        f"{len(found)} extreme bar(s) in the newest {EXTREME_CHECK_BARS} per series, {len(unconfirmed)} unconfirmed"
        + (f": {shown}" if shown else "")
    )
    return CheckOutcome(not unconfirmed, desc, meta, severity="WARN")


# ---- features ------------------------------------------------------------------


def features_finite(database_url: str, timeframe: str | None = None) -> CheckOutcome:
    f = features_m1.c
    bad = or_(*(or_(f[name].is_(None), f[name] > _HUGE, f[name] < -_HUGE) for name in FEATURE_COLUMNS))
    usable_rows = and_(f.usable.is_(True), f.timeframe == timeframe) if timeframe else f.usable.is_(True)
    with get_engine(database_url).connect() as conn:
        usable = conn.execute(select(func.count()).select_from(features_m1).where(usable_rows)).scalar_one()
        broken = conn.execute(select(func.count()).select_from(features_m1).where(and_(usable_rows, bad))).scalar_one()
    return CheckOutcome(
        broken == 0,
        f"{broken} of {usable} usable rows hold NaN, null or infinite values",
        {"usable_rows": usable, "non_finite_rows": broken},
    )


def features_match_candles(database_url: str, timeframe: str = "M1") -> CheckOutcome:
    """Every bar up to the newest feature row has exactly one feature row."""
    with get_engine(database_url).connect() as conn:
        newest = dict(
            conn.execute(
                select(features_m1.c.symbol, func.max(features_m1.c.ts))
                .where(features_m1.c.timeframe == timeframe)
                .group_by(features_m1.c.symbol)
            ).all()
        )
        meta: dict[str, Any] = {}
        mismatched = []
        for symbol, upto in newest.items():
            n_candles = conn.execute(
                select(func.count())
                .select_from(candles)
                .where(candles.c.symbol == symbol, candles.c.timeframe == timeframe, candles.c.ts <= upto)
            ).scalar_one()
            n_features = conn.execute(
                select(func.count())
                .select_from(features_m1)
                .where(features_m1.c.symbol == symbol, features_m1.c.timeframe == timeframe)
            ).scalar_one()
            meta[f"{symbol}_candles"] = n_candles
            meta[f"{symbol}_feature_rows"] = n_features
            if n_candles != n_features:
                mismatched.append(symbol)
    if not newest:
        return CheckOutcome(False, "features_m1 is empty", {})
    desc = (
        f"row counts differ for {', '.join(mismatched)}" if mismatched else "one feature row per bar for every symbol"
    )
    return CheckOutcome(not mismatched, desc, meta)


# ---- model ---------------------------------------------------------------------


def model_beats_baseline(settings: Settings, timeframe: str = "M1") -> CheckOutcome:
    # The Dagster code location imports this module: scikit-learn and scipy load when a check runs.
    from mt5_pipeline.learning.model_store import current_model_info

    info = current_model_info(settings, timeframe)
    if info is None:
        return CheckOutcome(False, "no model trained yet", {}, severity="WARN")
    return judge_auc(info.get("metrics", {}))


def judge_auc(metrics: dict[str, Any]) -> CheckOutcome:
    """Out-of-sample AUC against the baseline's (0.5 for a constant guess), with a margin."""
    auc, base = metrics.get("auc"), metrics.get("baseline_auc", 0.5)
    if auc is None:
        return CheckOutcome(False, "the model has no out-of-sample AUC", {}, severity="WARN")
    ok = auc >= base - AUC_MARGIN
    return CheckOutcome(
        ok,
        f"out-of-sample AUC {auc:.4f} against baseline {base:.4f} (margin {AUC_MARGIN})",
        {"auc": float(auc), "baseline_auc": float(base), "margin": AUC_MARGIN},
        severity="WARN",
    )


def model_matches_features(settings: Settings, timeframe: str = "M1") -> CheckOutcome:
    # The Dagster code location imports this module: scikit-learn and scipy load when a check runs.
    from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION, MODEL_FEATURES

    # The Dagster code location imports this module: scikit-learn and scipy load when a check runs.
    from mt5_pipeline.learning.model_store import current_model_info

    info = current_model_info(settings, timeframe)
    if info is None:
        return CheckOutcome(False, "no model trained yet", {})
    names = list(info.get("feature_names", []))
    version = str(info.get("feature_set_version"))
    with get_engine(settings.database_url).connect() as conn:
        table_versions = sorted(
            {str(v) for v in conn.execute(select(features_m1.c.feature_set_version).distinct()).scalars()}
        )
    problems = []
    if names != list(MODEL_FEATURES):
        problems.append(f"model features {names} differ from the feature set {list(MODEL_FEATURES)}")
    if version != FEATURE_SET_VERSION:
        problems.append(f"model trained on feature set v{version}, code computes v{FEATURE_SET_VERSION}")
    if table_versions and table_versions != [FEATURE_SET_VERSION]:
        problems.append(f"features_m1 holds versions {table_versions}")
    meta = {
        "model_feature_set_version": version,
        "table_feature_set_versions": ", ".join(table_versions),
        "features": len(names),
    }
    return CheckOutcome(not problems, "; ".join(problems) or "model and features_m1 use the same feature set", meta)


# ---- signals -------------------------------------------------------------------


def no_pending_past_expiry(settings: Settings, *, now: datetime | None = None) -> CheckOutcome:
    # The pusher expires stale rows at the start of each cycle, so a row may sit past
    # its expiry for up to one push interval; beyond that, nobody is expiring them.
    grace = timedelta(seconds=settings.ea_push_interval + 5)
    cutoff = resolve_now(now) - grace
    q = signals_queue.c
    with get_engine(settings.database_url).connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(signals_queue).where(q.status == "PENDING", q.expires_at < cutoff)
        ).scalar_one()
    return CheckOutcome(count == 0, f"{count} PENDING signals past their expiry", {"pending_past_expiry": count})


# ---- drift ---------------------------------------------------------------------


def _drift_outcome(reports: Sequence[DriftReport], what: str) -> CheckOutcome:
    if not reports:
        return CheckOutcome(True, f"no symbol with features yet: no {what} to measure", {}, severity="WARN")
    meta: dict[str, Any] = {}
    for r in reports:
        meta.update({f"{r.symbol}/{k}": float(v) for k, v in r.values.items()})
        if r.worst:
            meta[f"{r.symbol}/worst_features"] = ", ".join(f"{k} ({v:.3f})" for k, v in r.worst)
    failing = [r for r in reports if not r.passed]
    description = "; ".join(r.description for r in (failing or reports))
    return CheckOutcome(not failing, description, meta, severity="WARN")


def features_drift(settings: Settings, timeframe: str = "M1") -> CheckOutcome:
    """PSI per feature and symbol, last DRIFT_WINDOW_HOURS against the champion's training window
    (mt5_pipeline.learning.drift)."""
    # The Dagster code location imports this module: scikit-learn and scipy load when a check runs.
    from mt5_pipeline.learning import drift

    reports = [drift.feature_drift(settings, s, timeframe) for s in drift.symbols_with_features(settings, timeframe)]
    outcome = _drift_outcome(reports, "feature drift")
    worst = sorted(((k, v, r.symbol) for r in reports for k, v in r.worst), key=lambda t: -t[1])[: drift.WORST_SHOWN]
    if worst:
        outcome.metadata["worst_features"] = ", ".join(f"{s} {k} ({v:.3f})" for k, v, s in worst)
        outcome.metadata["max_psi"] = float(worst[0][1])
    outcome.metadata["psi_warn"] = settings.drift_psi_warn
    return outcome


def signals_drift(settings: Settings, timeframe: str = "M1") -> CheckOutcome:
    """Live BUY/SELL/neutral shares and mean probability per symbol against the champion's backtest."""
    # The Dagster code location imports this module: scikit-learn and scipy load when a check runs.
    from mt5_pipeline.learning import drift

    reports = [drift.signal_drift(settings, s, timeframe) for s in drift.symbols_with_features(settings, timeframe)]
    outcome = _drift_outcome(reports, "signal drift")
    outcome.metadata["share_warn"] = settings.drift_signal_share_warn
    return outcome
