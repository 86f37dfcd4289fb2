"""The model registry: one row per retrain, whatever came of it.

``decision`` is ``promoted`` (the candidate became the champion), ``forced`` (promoted
by ``PROMOTION_FORCE`` / ``--force`` whatever its scores), ``rejected`` (kept on disk,
never traded) or ``failed`` (the retrain stopped with an error: no file, the reason says
why). ``is_current`` marks the champion per model name (``rf_m1``, ``rf_h1``, ...), the
model that ``rf_<tf>.pkl`` holds. ``scores`` is the JSON of the candidate's and the
champion's figures on the window they were both scored on, beside the baselines.

Rows live in the database, so the API's /health and /metrics see a retrain that ran in
a Dagster run or on the command line.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import desc, func, select, update

from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION
from mt5_pipeline.learning.model_store import finite_or_none, model_name
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import model_registry

DECISIONS = ("promoted", "forced", "rejected", "failed")
PROMOTED = ("promoted", "forced")


def unique_version(settings: Settings, base: str, timeframe: str) -> str:
    """``base``, or ``base-2``, ``base-3``...: free in the registry and in MODEL_DIR."""
    name = model_name(timeframe)
    with get_engine(settings.database_url).connect() as conn:
        taken = set(
            conn.execute(select(model_registry.c.version).where(model_registry.c.version.like(f"{base}%"))).scalars()
        )
    version, i = base, 1
    while version in taken or (Path(settings.model_dir) / f"{name}-{version}.pkl").exists():
        i += 1
        version = f"{base}-{i}"
    return version


def record_candidate(
    settings: Settings,
    meta: dict,
    path: Path,
    window: tuple[datetime, datetime],
    trained_at: datetime,
    *,
    decision: str,
    reason: str,
    scores: dict,
    champion_version: str | None,
) -> None:
    """Insert the candidate's row; if promoted, it becomes the champion in the same transaction."""
    if decision not in DECISIONS[:3]:
        raise ValueError(f"unknown decision {decision!r}")
    name = meta["model"]
    promoted = decision in PROMOTED
    with get_engine(settings.database_url).begin() as conn:
        if promoted:
            conn.execute(update(model_registry).where(model_registry.c.model == name).values(is_current=False))
        conn.execute(
            model_registry.insert().values(
                model=name,
                version=meta["version"],
                path=str(path),
                trained_at=trained_at,
                symbols=json.dumps(meta["symbols"]),
                train_start=window[0],
                train_end=window[1],
                rows=int(meta["rows"]),
                feature_set_version=meta["feature_set_version"],
                label_mode=meta["label_mode"],
                metrics=json.dumps(finite_or_none(meta["metrics"]), sort_keys=True),
                data_hash=meta["data_hash"],
                is_current=promoted,
                timeframe=meta["timeframe"],
                kind=meta["kind"],
                decision=decision,
                reason=reason,
                scores=json.dumps(finite_or_none(scores), sort_keys=True),
                champion_version=champion_version,
            )
        )


def record_failure(settings: Settings, timeframe: str, at: datetime, reason: str, *, kind: str, label_mode: str) -> str:
    """A retrain that stopped with an error: a row without a file, so /health and /metrics see it."""

    version = unique_version(settings, f"{at:%Y%m%dT%H%M%SZ}-failed", timeframe)
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(
            model_registry.insert().values(
                model=model_name(timeframe),
                version=version,
                path="",
                trained_at=at,
                symbols="[]",
                rows=0,
                feature_set_version=FEATURE_SET_VERSION,
                label_mode=label_mode,
                metrics="{}",
                data_hash="",
                is_current=False,
                timeframe=timeframe,
                kind=kind,
                decision="failed",
                reason=reason[:4000],
                scores="{}",
            )
        )
    return version


def _row(row: Any) -> dict:
    out = dict(row._mapping)
    for key in ("metrics", "scores", "symbols"):
        try:
            out[key] = json.loads(out.get(key) or "null")
        except ValueError:
            pass
    out["is_current"] = bool(out.get("is_current"))
    return out


def history(settings: Settings, timeframe: str = "M1", limit: int = 50) -> list[dict]:
    """The timeframe's retrains, newest first."""
    r = model_registry.c
    with get_engine(settings.database_url).connect() as conn:
        rows = conn.execute(
            select(model_registry)
            .where(r.model == model_name(timeframe))
            .order_by(desc(r.trained_at), desc(r.id))
            .limit(limit)
        ).all()
    return [_row(row) for row in rows]


def last_retrain(settings: Settings, timeframe: str = "M1") -> dict | None:
    rows = history(settings, timeframe, limit=1)
    return rows[0] if rows else None


def by_version(settings: Settings, version: str) -> dict | None:
    """The registry row of one model version (live performance finds its backtest through it)."""
    with get_engine(settings.database_url).connect() as conn:
        row = conn.execute(select(model_registry).where(model_registry.c.version == version)).first()
    return _row(row) if row is not None else None


def champion(settings: Settings, timeframe: str = "M1") -> dict | None:
    r = model_registry.c
    with get_engine(settings.database_url).connect() as conn:
        row = conn.execute(
            select(model_registry)
            .where(r.model == model_name(timeframe), r.is_current.is_(True))
            .order_by(desc(r.id))
            .limit(1)
        ).first()
    return _row(row) if row is not None else None


def retrain_counts(database_url: str) -> dict[tuple[str, str], int]:
    """(model, decision) -> retrains, from every row: what the Prometheus counter shows."""
    r = model_registry.c
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(select(r.model, r.decision, func.count()).group_by(r.model, r.decision)).all()
    counts: Counter = Counter()
    for name, decision, n in rows:
        counts[(str(name), str(decision))] += int(n)
    return dict(counts)


def last_outcomes(database_url: str) -> dict[str, dict]:
    """Each model's newest row (decision, reason, time): what /health and /metrics show."""
    r = model_registry.c
    newest = select(r.model, func.max(r.id).label("id")).group_by(r.model).subquery()
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(
            select(r.model, r.version, r.decision, r.reason, r.trained_at).join(newest, r.id == newest.c.id)
        ).all()
    return {
        str(row.model): {"version": row.version, "decision": row.decision, "reason": row.reason, "at": row.trained_at}
        for row in rows
    }
