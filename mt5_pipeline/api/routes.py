"""The routes. Thin: parse the request, call the core off the event loop, answer.

Core modules are imported inside the handlers so the app starts (and /health reports
what is missing) even in a build without the ML extras installed.
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mt5_pipeline.api.body import read_json_object
from mt5_pipeline.api.errors import JSON, ApiError, Detail
from mt5_pipeline.api.health import check_health
from mt5_pipeline.api.metrics import CONTENT_TYPE
from mt5_pipeline.api.requests import (
    AckRequest,
    GenerateSignalRequest,
    IngestRequest,
    OpenTradesQuery,
    PullQuery,
    ReconcileRequest,
    TradesRequest,
)
from mt5_pipeline.api.state import AppState
from mt5_pipeline.api.validation import M, validate
from mt5_pipeline.clock import iso_z, utcnow
from mt5_pipeline.delivery.trades import open_trades, record_trades
from mt5_pipeline.delivery.trades import reconcile as run
from mt5_pipeline.market.ingest import CandleValidationError, ingest_candles
from mt5_pipeline.signals import generation
from mt5_pipeline.signals.queue import UnknownSignalError, pending_for_pull, record_ack
from mt5_pipeline.signals.queue import queue_status as read_status

NEUTRAL_MESSAGE = "No signal: confidence inside the neutral band"
QUEUED_MESSAGE = "Signal generated and added to queue"


def _state(request: Request) -> AppState:
    return request.app.state.api


async def _read_body(request: Request, model: type[M], what: str) -> tuple[AppState, M]:
    """The app's state and the JSON body, read within API_MAX_BODY_BYTES and validated as `model`."""
    state = _state(request)
    body = await read_json_object(request, state.settings.api_max_body_bytes)
    return state, validate(model, body, what)


# ---- market data --------------------------------------------------------------


async def ingest(request: Request) -> Response:
    state, req = await _read_body(request, IngestRequest, "ingest request")
    if not req.candles:
        return JSON({"success": True, "received": 0, "inserted": 0, "updated": 0, "unchanged": 0})

    started = time.perf_counter()
    try:
        result = await run_in_threadpool(
            partial(
                ingest_candles,
                utc_offset_hours=req.utc_offset_hours or 0.0,
                digits=req.digits,
                point=req.point,
                max_jump=state.settings.price_max_jump,
                server_time_zone=req.server_time_zone,
                # An offset the client names is the one it converted its times with.
                record_offset=req.utc_offset_hours is not None
                and "utc_offset_hours" in req.model_fields_set
                and req.server_time_zone is None,
                partial=bool(req.partial),
            ),
            state.settings.database_url,
            req.symbol,
            req.timeframe,
            req.candles,
        )
    except CandleValidationError as exc:
        total = getattr(exc, "total", len(exc.errors))
        raise ApiError(422, f"invalid candles: {total} problem(s), nothing was stored", exc.errors) from None
    m = state.metrics
    m.ingest_duration.observe(time.perf_counter() - started)
    m.ingest_batch_size.observe(result.received)
    for outcome in ("inserted", "updated", "unchanged"):
        m.candles_ingested.labels(outcome).inc(getattr(result, outcome))
    out: dict[str, Any] = {
        "success": True,
        "received": result.received,
        "inserted": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
    }
    duplicates = getattr(result, "duplicates", 0)
    if duplicates:
        out["duplicates"] = duplicates  # same ts twice in the batch: the last one was kept
    if result.rejected:
        m.candles_rejected.inc(result.rejected)
        out["rejected"] = result.rejected
        out["errors"] = [{"loc": e.loc, "message": e.message} for e in result.errors]
    return JSON(out)


# ---- signals ------------------------------------------------------------------


async def generate_signal(request: Request) -> Response:
    state, req = await _read_body(request, GenerateSignalRequest, "signal request")
    # scikit-learn loads with the first signal asked for, not with the app.
    from mt5_pipeline.learning.model import ModelTimeframeError, NoFeaturesError
    from mt5_pipeline.learning.model_store import ModelMismatchError, NoModelError

    try:
        result = await run_in_threadpool(
            generation.generate_signal,
            state.settings,
            req.symbol,
            req.timeframe or "M1",
            bool(req.force),
            refresh_features=True,
        )
    except NoFeaturesError as exc:
        raise ApiError(
            404, str(exc) or f"no features for {req.symbol} {req.timeframe}", extra={"reason": "no_features"}
        ) from None
    except NoModelError as exc:
        raise ApiError(503, str(exc), extra={"reason": "no_model"}) from None
    except ModelMismatchError as exc:
        raise ApiError(503, str(exc), extra={"reason": "model_mismatch"}) from None
    except ModelTimeframeError as exc:
        # A request for a timeframe no model was trained on: the caller's input, not our outage.
        raise ApiError(
            422,
            str(exc),
            [{"loc": "timeframe", "message": str(exc)}],
            extra={"reason": "no_model_for_timeframe", "timeframes_with_model": exc.available},
        ) from None
    return _signal_response(result)


def _signal_response(result: Any) -> Response:
    status = result.status
    if status == "queued":
        return JSON({"success": True, "message": QUEUED_MESSAGE, "signal": result.signal.to_payload()})
    if status == "neutral":
        return JSON(
            {
                "success": False,
                "message": result.message or NEUTRAL_MESSAGE,
                "confidence": result.confidence,
                "probability": result.probability,
                "reason": "neutral",
            }
        )
    # duplicate / too_late / stale_bar / unconfirmed_extreme / unknown_pip_size / not_ready: the
    # request was fine, the state (or the configuration) says no -> 409;
    # stale_model: no usable model -> 503, like having none.
    code = 503 if status == "stale_model" else 409
    extra: dict[str, Any] = {"reason": status}
    if getattr(result, "bar", None) is not None:
        extra["bar"] = iso_z(result.bar)
    if result.signal:
        extra["signal"] = result.signal.to_payload()
    if getattr(result, "figures", None):
        extra["figures"] = result.figures
    if result.confidence is not None:
        extra["confidence"] = result.confidence
    raise ApiError(code, result.message or status, extra=extra)


async def test_connection(request: Request) -> Response:
    state = _state(request)
    client = state.ea_client()
    try:
        result = await run_in_threadpool(client.test_connection)
    except Exception:
        state.metrics.connection_test_success.set(0)
        raise
    state.metrics.connection_test_success.set(1 if result.get("connected") else 0)
    state.ea_probe.clear()  # /health should not contradict a fresher probe
    return JSON(result)


async def queue_status(request: Request) -> Response:
    state = _state(request)

    since = utcnow() - timedelta(hours=24)
    counts = await run_in_threadpool(read_status, state.settings.database_url, since=since)
    return JSON({"success": True, "queue_status": counts, "period": "last_24_hours"})


async def push_signals(request: Request) -> Response:
    state = _state(request)
    # A manual push works in pull mode too: EA_PUSH_ENABLED switches the automatic
    # pushers (worker, sensor) only, as the seed describes it.
    from mt5_pipeline.delivery.pusher import push_pending  # the HTTP client (httpx) loads on the first push

    started = time.perf_counter()
    result = await run_in_threadpool(push_pending, state.settings, client=state.ea_client())
    state.metrics.push_duration.observe(time.perf_counter() - started)
    if result.auth_error:
        raise ApiError(
            502,
            f"{result.message}: check EA_API_KEY here and on the EA",
            extra={"reason": "ea_auth", "sent_count": result.sent},
        )
    if result.config_error:
        raise ApiError(
            502,
            result.message,
            extra={"reason": "ea_config", "ea_status_code": result.status_code, "sent_count": result.sent},
        )
    return JSON(
        {
            "success": True,
            "sent_count": result.sent,
            "message": result.message,
            "claimed": result.claimed,
            "rejected": result.rejected,
            "retried": result.retried,
            "failed": result.failed,
            "expired": result.expired,
        }
    )


async def ack(request: Request) -> Response:
    state, req = await _read_body(request, AckRequest, "ack")

    try:
        recorded = await run_in_threadpool(
            partial(
                record_ack,
                state.settings.database_url,
                req.signal_id,
                req.ticket,
                req.status,
                req.message or "",
                retcode=req.retcode,
            )
        )
    except UnknownSignalError:
        raise ApiError(404, "no such signal_id", extra={"reason": "unknown_signal"}) from None
    except ValueError as exc:  # the queue's own checks, should the schema ever let one through
        raise ApiError(422, "invalid ack", [{"loc": str(exc).split(":", 1)[0], "message": str(exc)}]) from None
    out: dict[str, Any] = {"success": True}
    if isinstance(recorded, dict):
        out.update({k: v for k, v in recorded.items() if k != "success"})
    return JSON(out)


async def pull_signals(request: Request) -> Response:
    state = _state(request)
    query = validate(PullQuery, dict(request.query_params), "query", prefix="query.")

    signals = await run_in_threadpool(pending_for_pull, state.settings.database_url, query.limit)
    return JSON({"success": True, "signals": [s.to_payload() for s in signals]})


# ---- trades -----------------------------------------------------------------------


def trade_body(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in (
        "ticket", "signal_id", "unknown_signal", "model_version", "account", "magic", "symbol", "timeframe", "side",
        "volume", "open_time", "open_price", "sl", "tp", "close_time", "close_price", "exit_reason", "profit", "pips",
        "swap", "commission", "pip_size",
    )}  # fmt: skip
    for k in ("open_time", "close_time"):
        when = out[k]
        out[k] = iso_z(when) if when is not None else None
    out["unknown_signal"] = bool(out["unknown_signal"])
    out["status"] = "closed" if row.get("close_time") is not None else "open"
    return out


async def report_trades(request: Request) -> Response:
    state, req = await _read_body(request, TradesRequest, "trades report")
    details = [
        Detail(f"trades[{i}].{name}", message) for i, t in enumerate(req.trades) for name, message in t.problems()
    ]
    if details:
        raise ApiError(422, "invalid trades report", details)

    reports = [t.model_dump(exclude_none=True) for t in req.trades]
    recorded = await run_in_threadpool(record_trades, state.settings, reports)
    counts = {k: sum(1 for r in recorded if r.outcome == k) for k in ("inserted", "updated", "unchanged")}
    return JSON(
        {
            "success": True,
            "received": len(recorded),
            **counts,
            "flagged": sum(1 for r in recorded if r.unknown_signal),
            "trades": [
                {"ticket": r.ticket, "outcome": r.outcome, "status": r.status, "unknown_signal": r.unknown_signal}
                for r in recorded
            ],
        }
    )


async def list_trades(request: Request) -> Response:
    state = _state(request)
    query = validate(OpenTradesQuery, dict(request.query_params), "query", prefix="query.")

    rows = await run_in_threadpool(partial(open_trades, state.settings, magic=query.magic, account=query.account))
    return JSON({"success": True, "trades": [trade_body(r) for r in rows]})


async def reconcile(request: Request) -> Response:
    state, req = await _read_body(request, ReconcileRequest, "reconciliation")

    positions = [p.model_dump(exclude_none=True) for p in req.positions]
    result = await run_in_threadpool(
        partial(run, state.settings, magic=req.magic, account=req.account, positions=positions)
    )
    return JSON(
        {
            "success": True,
            "in_sync": result.in_sync,
            "terminal_positions": result.terminal_positions,
            "unknown": result.unknown,
            "missing": result.missing,
        }
    )


# ---- operations -----------------------------------------------------------------


async def health(request: Request) -> Response:
    code, body, headers = await run_in_threadpool(check_health, _state(request))
    return JSON(body, status_code=code, headers=headers)


async def metrics(request: Request) -> Response:
    payload = await run_in_threadpool(_state(request).metrics.render)
    return Response(payload, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return Response(_state(request).openapi_json, media_type="application/json")


async def docs(request: Request) -> Response:
    return HTMLResponse(_state(request).docs_html)


ROUTES = [
    Route("/ingest", ingest, methods=["POST"]),
    Route("/ea/generate-signal", generate_signal, methods=["POST"]),
    Route("/ea/test-connection", test_connection, methods=["GET"]),
    Route("/ea/queue-status", queue_status, methods=["GET"]),
    Route("/ea/push-signals", push_signals, methods=["POST"]),
    Route("/ea/ack", ack, methods=["POST"]),
    Route("/ea/signals", pull_signals, methods=["GET"]),
    Route("/ea/trades", report_trades, methods=["POST"]),
    Route("/ea/trades", list_trades, methods=["GET"]),
    Route("/ea/reconcile", reconcile, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
