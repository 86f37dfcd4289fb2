"""`paths` of the OpenAPI document, one builder per route group: what a model cannot know
(operations, status codes and what each means, which routes need no key)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mt5_pipeline.api import openapi_examples as examples
from mt5_pipeline.api import requests, responses
from mt5_pipeline.api.openapi_components import metrics_security, query_parameters, ref
from mt5_pipeline.api.openapi_responses import AUTH, BODY_ERRORS, DB_DOWN, error_response, json_response, request_body
from mt5_pipeline.settings import Settings


def operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    *,
    description: str = "",
    parameters: list[dict[str, Any]] | None = None,
    request: dict[str, Any] | None = None,
    invalid: dict[str, Any] | None = None,
    errors: dict[str, Any] | None = None,
    database: bool = True,
) -> dict[str, Any]:
    """An operation behind the API key: its 200, the answers to bad input (``invalid``), a
    missing key, its own ``errors`` and, when it needs the database, a database outage."""
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if description:
        op["description"] = description
    if parameters is not None:
        op["parameters"] = parameters
    if request is not None:
        op["requestBody"] = request
    op["responses"] = {"200": ok, **(invalid or {}), **AUTH, **(errors or {}), **(DB_DOWN if database else {})}
    return op


def body_operation(
    operation_id: str,
    summary: str,
    body: type[BaseModel],
    example: Any,
    ok: dict[str, Any],
    *,
    description: str = "",
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An operation that takes a JSON body and needs the database: besides its 200 and its own
    ``errors``, it answers bad bodies, a missing key and a database outage as every such route does."""
    return operation(
        operation_id,
        summary,
        ok,
        description=description,
        request=request_body(body, example),
        invalid=BODY_ERRORS,
        errors=errors,
    )


def ingest_paths() -> dict[str, Any]:
    """POST /ingest: candles in."""
    return {
        "/ingest": {
            "post": body_operation(
                "ingest",
                "Store a batch of candles (idempotent upsert)",
                requests.IngestRequest,
                examples.INGEST,
                json_response(
                    ref(responses.IngestResponse),
                    "stored",
                    {"success": True, "received": 1, "inserted": 1, "updated": 0, "unchanged": 0},
                ),
                description=(
                    "The whole batch is validated first: prices positive and finite, high >= max(open, close), "
                    "low <= min(open, close), times aligned to the timeframe and not in the future. "
                    "One bad candle rejects the batch (422, details name each path) and nothing is stored; "
                    "earlier rows are never touched by a rejected batch. Re-sending a bar is safe."
                ),
            )
        },
    }


def signal_paths() -> dict[str, Any]:
    """The EA's signal routes: generate one, probe the EA, the queue's state."""
    return {
        "/ea/generate-signal": {
            "post": {
                "operationId": "generateSignal",
                "summary": "Predict on the newest closed bar and queue a signal for the EA",
                "description": (
                    "Only a closed bar is predicted (open + timeframe <= now, or a later bar exists); the forming bar "
                    "is ignored, and so is a closed bar whose final version has not arrived within "
                    "LIVE_CLOSE_GRACE_SECONDS "
                    "of its close (the bar before it is decided; 409 reason=not_ready when there is none). 200 with "
                    "success=true: queued (the seed's response). 200 with success=false: the "
                    "probability is inside the neutral band (no signal unless force=true). 404: no features for that "
                    "symbol and timeframe. 422 reason=no_model_for_timeframe: no model was trained on that timeframe "
                    "(timeframes_with_model lists those that have one). 409 reason=duplicate: this bar already has its "
                    "signal (one per bar, whatever the model version; `signal` is that one); 409 reason=too_late: the "
                    "bar's close + SIGNAL_TTL_SECONDS has passed, so a signal could not be delivered (`figures` says "
                    "by "
                    "how much); 409 reason=stale_bar: the newest bar is too old (the feed has stalled); 409 "
                    "reason=unconfirmed_extreme: the bar is an extreme move the next bars have not confirmed yet; 409 "
                    "reason=unknown_pip_size: the symbol is not a currency pair and has no pip size (set PIP_SIZES or "
                    "send digits/point with its candles). 503: no model yet "
                    "(train one with the rf_m1 asset or `mt5-pipeline` training), a model too old "
                    "(reason=stale_model) or not matching the features, or the database is down."
                ),
                "requestBody": request_body(requests.GenerateSignalRequest, examples.GENERATE_SIGNAL),
                "responses": {
                    "200": {
                        "description": "queued, or no signal (neutral band)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        ref(responses.GenerateSignalQueued),
                                        ref(responses.GenerateSignalNeutral),
                                    ]
                                }
                            }
                        },
                    },
                    **BODY_ERRORS,
                    **AUTH,
                    "404": error_response("no features for this symbol and timeframe"),
                    "409": error_response(
                        "reason=duplicate (this bar already has its signal), reason=too_late (past the bar's close + "
                        "SIGNAL_TTL_SECONDS), reason=stale_bar (the feed has stalled) or reason=not_ready (the closed "
                        "bar's "
                        "final version may still come)"
                    ),
                    "503": error_response(
                        "no model yet (the message says how to train one), a stale or mismatched model, or the "
                        "database is down"
                    ),
                },
            }
        },
        "/ea/test-connection": {
            "get": operation(
                "testConnection",
                "Probe the EA's signals route (sets ea_connection_test_success)",
                json_response(ref(responses.TestConnectionResponse), "the probe's outcome (connected may be false)"),
                database=False,
                description=(
                    'POSTs {"probe": true} (no signal_id: no EA can trade it) to EA_SERVER_URL with the key. Connected '
                    "when "
                    "the reference EA accepts the probe, or another EA refuses the empty body (400/422): the route "
                    "exists. "
                    "401/403/404/405/415 (wrong key, path, method or content type) and 5xx are not connected, with the "
                    "status."
                ),
            )
        },
        "/ea/queue-status": {
            "get": operation(
                "queueStatus",
                "Signals per status created in the last 24 hours",
                json_response(ref(responses.QueueStatusResponse), "counts and latest creation time per status"),
            )
        },
    }


def delivery_paths() -> dict[str, Any]:
    """Delivery: push now, the EA's ack, pull mode."""
    return {
        "/ea/push-signals": {
            "post": operation(
                "pushSignals",
                "Run one push cycle now: deliver pending signals to the EA",
                json_response(ref(responses.PushResponse), "what the cycle did"),
                errors={
                    "502": error_response(
                        "the EA refused our EA_API_KEY, or answered 403/404/405/415 (configuration error)"
                    )
                },
                description=(
                    "Works whatever EA_PUSH_ENABLED says (that switch is for the automatic pushers). An EA that does "
                    "not answer is not an error here: the signals stay PENDING (an outage; see retried). 502 with "
                    "reason ea_auth when the EA refuses EA_API_KEY, ea_config (and ea_status_code) on a "
                    "403/404/405/415: "
                    "configuration errors, the signals stay PENDING with no attempt spent."
                ),
            )
        },
        "/ea/ack": {
            "post": body_operation(
                "ack",
                "The EA reports what it did with a signal (idempotent)",
                requests.AckRequest,
                examples.ACK,
                json_response(ref(responses.AckResponse), "recorded (a repeated ack is recorded once)"),
                errors={"404": error_response("no such signal_id")},
            )
        },
        "/ea/signals": {
            "get": operation(
                "pullSignals",
                "Pull mode: deliverable signals, oldest first; reading changes nothing",
                json_response(ref(responses.SignalsResponse), "signals the EA has not acked yet"),
                description=(
                    "A pulled signal stays deliverable until the EA acks it (POST /ea/ack) or it expires; the EA "
                    "dedupes on signal_id."
                ),
                parameters=query_parameters(requests.PullQuery),
                invalid={"422": error_response("bad status or limit")},
            )
        },
    }


def trade_paths() -> dict[str, Any]:
    """Trades the bridge or the EA reports, and reconciliation with the terminal."""
    return {
        "/ea/trades": {
            "post": body_operation(
                "reportTrades",
                (
                    "The bridge or the EA reports positions: opens and closes, from the deals history (idempotent by "
                    "ticket)"
                ),
                requests.TradesRequest,
                examples.TRADES,
                json_response(ref(responses.TradesResponse), "recorded; per ticket: inserted, updated or unchanged"),
                description=(
                    "One row per ticket: the open report inserts it, the close report (same ticket, with close_time, "
                    "close_price "
                    "and exit_reason) completes it, a repeat changes nothing, and no report reopens a closed trade. "
                    "Timeframe and "
                    "model_version come from the signal; a report whose signal is unknown is kept and flagged "
                    "(unknown_signal). "
                    "Pips are computed here from the prices and the signal's pip. Times are UTC. docs/trades.md."
                ),
            ),
            "get": operation(
                "openTrades",
                "The open trades the API holds (what reconciliation compares with the terminal)",
                json_response(ref(responses.OpenTradesResponse), "open trades, oldest first"),
                parameters=query_parameters(requests.OpenTradesQuery),
                invalid={"422": error_response("bad status, magic or account")},
            ),
        },
        "/ea/reconcile": {
            "post": body_operation(
                "reconcile",
                ("Compare the terminal's positions with the open trades; record the state and the unknown positions"),
                requests.ReconcileRequest,
                examples.RECONCILE,
                json_response(ref(responses.ReconcileResponse), "the differences"),
                description=(
                    "Send every open position carrying the magic. Positions the API did not hold open are recorded "
                    "(flagged if "
                    "their signal is unknown); open trades the terminal no longer holds come back as missing: report "
                    "their close "
                    "from the deals history. Nothing is closed. /health and /metrics show the state."
                ),
            )
        },
    }


def service_paths(settings: Settings) -> dict[str, Any]:
    """Health, metrics and this document, the routes beside the EA's."""
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and staleness, without a key",
                "description": (
                    "status=ok when the database answers, the model is loaded and fresh, and the EA is reachable (or "
                    "delivery is pull mode). 503 (same body) when the database is unavailable."
                ),
                "security": [],
                "responses": {
                    "200": json_response(ref(responses.Health), "ok or degraded"),
                    "503": {
                        **json_response(ref(responses.Health), "the database is unavailable"),
                        "headers": DB_DOWN["503"]["headers"],
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (queue figures read from the database at scrape time)",
                "security": metrics_security(settings),
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **({} if settings.metrics_public else AUTH),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **AUTH,
                },
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document as a page (no CDN needed)",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                    **AUTH,
                },
            }
        },
    }


def paths(settings: Settings) -> dict[str, Any]:
    """Every route's operations, in the order the document lists them."""
    return {**ingest_paths(), **signal_paths(), **delivery_paths(), **trade_paths(), **service_paths(settings)}
