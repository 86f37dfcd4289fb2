"""GET /health: can this process do its job, and is anything it depends on stale?

No key needed. Constant time whatever the size of `candles`: one `SELECT 1`, the model
sidecars, one registry query (the last retrain per model), the pushers' EA delivery
state (one row by primary key), (cached for a few seconds) the EA probe, and
`storage.candles.newest_bars`, which finds each series and its newest bar by index probes
and never counts the table (benchmarks/bench_health.py: a few ms at 1M and 10M candles).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from mt5_pipeline.api.errors import DB_RETRY_AFTER_SECONDS, is_database_outage
from mt5_pipeline.api.metrics import _utc_seconds
from mt5_pipeline.api.openapi import VERSION
from mt5_pipeline.api.state import AppState
from mt5_pipeline.clock import from_epoch
from mt5_pipeline.delivery.breaker import delivery_status
from mt5_pipeline.delivery.trades import reconciliation_summary
from mt5_pipeline.signals.generation import bar_staleness, model_staleness
from mt5_pipeline.storage.candles import newest_bars
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.trades import position_figures

log = logging.getLogger("api.health")


def _database_ok(url: str) -> bool:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        if not is_database_outage(exc):
            log.error("health: database check failed", exc_info=exc)
        return False


def _model(state: AppState, now: float) -> dict[str, Any]:
    try:
        # scikit-learn loads with the first question about a model, not with the app.
        from mt5_pipeline.learning.model_store import current_model_info

        info = current_model_info(state.settings)
    except ImportError:
        info = None
    except Exception as exc:
        log.error("health: reading the current model failed", exc_info=exc)
        info = None
    if not info:
        return {"model": "missing", "model_version": None, "model_age_seconds": None}
    if info.get("error"):  # a model file this code cannot use
        return {
            "model": "missing",
            "model_version": info.get("version"),
            "model_age_seconds": None,
            "model_error": str(info["error"]),
        }
    trained = _utc_seconds(info.get("trained_at"))
    age = None if trained is None else round(max(0.0, now - trained), 1)

    stale = model_staleness(state.settings, info.get("trained_at"), now=from_epoch(now))
    out = {"model": "stale" if stale else "loaded", "model_version": info.get("version"), "model_age_seconds": age}
    if stale:
        out["model_stale_reason"] = stale
    return out


def _retrains(state: AppState, now: float) -> dict[str, dict[str, Any]]:
    """Per timeframe: the champion's version and age, and the last retrain's outcome (from the registry)."""
    # scikit-learn loads with the first question about a model, not with the app.
    from mt5_pipeline.learning.model_registry import last_outcomes
    from mt5_pipeline.learning.model_store import current_model_info, model_name

    outcomes = last_outcomes(state.settings.database_url)
    out: dict[str, dict[str, Any]] = {}
    for timeframe in state.settings.timeframes:
        name = model_name(timeframe)
        info = current_model_info(state.settings, timeframe) or {}
        trained = _utc_seconds(info.get("trained_at"))
        last = outcomes.get(name)
        out[timeframe] = {
            "model": name,
            "champion_version": info.get("version"),
            "champion_age_seconds": None if trained is None else round(max(0.0, now - trained), 1),
            "last_retrain": None
            if last is None
            else {"outcome": last["decision"], "version": last["version"], "at": last["at"], "reason": last["reason"]},
        }
    return out


def _ea(state: AppState) -> str:
    if not state.settings.ea_push_enabled:
        return "disabled"

    def probe() -> str:
        try:
            result = state.ea_client().test_connection()
        except Exception as exc:
            log.warning("health: EA probe failed: %s", type(exc).__name__)
            state.metrics.connection_test_success.set(0)
            return "unreachable"
        connected = bool(result.get("connected"))
        state.metrics.connection_test_success.set(1 if connected else 0)
        return "reachable" if connected else "unreachable"

    return state.ea_probe.get(probe)


def _delivery(state: AppState) -> dict[str, Any]:
    """The pushers' view of the EA (mt5_pipeline.delivery.breaker), shared through the database:
    an outage being ridden out, or the configuration error that stopped delivery."""
    if not state.settings.ea_push_enabled:
        return {}

    d = delivery_status(state.settings.database_url, state.settings.ea_server_url)
    out: dict[str, Any] = {"ea_delivery": d["state"]}
    if d["state"] != "ok":
        out.update(ea_delivery_status_code=d["status_code"], ea_delivery_error=d["error"], ea_delivery_since=d["since"])
    return out


def _bars(state: AppState, now: float) -> list[dict[str, Any]]:
    rows = newest_bars(state.settings.database_url)
    at = from_epoch(now)
    out = []
    for row in rows:
        newest = _utc_seconds(row.get("newest_ts"))
        timeframe = str(row["timeframe"])
        try:
            stale = bar_staleness(state.settings, timeframe, row.get("newest_ts"), now=at) is not None
        except KeyError:  # a timeframe these settings do not know
            stale = False
        out.append(
            {
                "symbol": row["symbol"],
                "timeframe": timeframe,
                "newest_ts": None if newest is None else from_epoch(newest),
                "age_seconds": None if newest is None else round(max(0.0, now - newest), 1),
                "stale": stale,
            }
        )
    return out


def _trades(state: AppState) -> dict[str, Any]:
    """Open positions per symbol and the last reconciliation (mt5_pipeline.delivery.trades)."""

    figures = position_figures(state.settings.database_url)
    return {
        "open_positions": [{"symbol": s, "open": int(f["open"])} for s, f in sorted(figures.items()) if f["open"]],
        "reconciliation": reconciliation_summary(state.settings),
    }


def _part(what: str, read: Callable[[], dict[str, Any]], quiet: tuple[type[Exception], ...] = ()) -> dict[str, Any]:
    """What `read` adds to the body, or nothing where it fails: a database outage is in the body
    already and `quiet` errors are expected; any other failure is logged."""
    try:
        return read()
    except quiet:
        return {}
    except Exception as exc:
        if not is_database_outage(exc):
            log.error("health: reading %s failed", what, exc_info=exc)
        return {}


def check_health(state: AppState) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status code, body, headers). Runs in a worker thread: everything here blocks."""
    now = time.time()
    database_ok = _database_ok(state.settings.database_url)
    body: dict[str, Any] = {
        "status": "ok",
        "database": "ok" if database_ok else "unavailable",
        **_model(state, now),
        "ea": _ea(state),
        "delivery": "push" if state.settings.ea_push_enabled else "pull",
        "newest_bars": [],
        "version": VERSION,
    }
    if database_ok:
        body.update(_part("the EA delivery state", lambda: _delivery(state)))
        body.update(_part("the newest bars", lambda: {"newest_bars": _bars(state, now)}))
        body.update(_part("the trades", lambda: _trades(state)))
        body.update(_part("the model registry", lambda: {"models": _retrains(state, now)}, quiet=(ImportError,)))
    models = body.get("models") or {}
    first = models.get(state.settings.timeframes[0]) if models else None
    if first is not None:
        body["champion_age_seconds"] = first["champion_age_seconds"]
        body["last_retrain"] = first["last_retrain"]
    # A failed retrain is loud the same day: the champion still trades, but it is ageing.
    failed = sorted(tf for tf, m in models.items() if (m.get("last_retrain") or {}).get("outcome") == "failed")
    if failed:
        body["retrain_failed"] = failed
    # Positions the terminal and the record disagree on are money nobody is watching.
    reconciled = (body.get("reconciliation") or {}).get("state") != "differences"
    healthy = (
        reconciled
        and database_ok
        and body["model"] == "loaded"
        and body["ea"] in ("reachable", "disabled")
        and body.get("ea_delivery", "ok") == "ok"
        and not failed
    )
    body["status"] = "ok" if healthy else "degraded"
    if not database_ok:
        return 503, body, {"Retry-After": str(DB_RETRY_AFTER_SECONDS)}
    return 200, body, {}
