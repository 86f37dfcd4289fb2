"""The OpenAPI 3.1 document of every route, and a /docs page that shows it.

The shapes are not written here: `components.schemas` is generated from the request and
response models (mt5_pipeline.api.requests, mt5_pipeline.api.responses), the same
models that validate requests, so the document and the validator cannot drift. 3.1
because its schema dialect is JSON Schema 2020-12, which pydantic emits as is (an
optional field is `anyOf: [..., {"type": "null"}]`). What is written here is what a
model cannot know: the paths and operations, status codes, security and examples.
A test checks that every route of the app appears here and that the document is valid
OpenAPI 3.1. /docs renders on the server, from this same dict, with no CDN (the page
must work on a trading box without internet access).
"""

from __future__ import annotations

import copy
import functools
import html
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from mt5_pipeline import __version__ as VERSION
from mt5_pipeline.api import requests, responses
from mt5_pipeline.settings import Settings

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
# Every body the document names; the models they contain (Candle, Signal, ...) come along.
BODY_MODELS: tuple[type[BaseModel], ...] = (
    requests.IngestRequest,
    requests.GenerateSignalRequest,
    requests.AckRequest,
    requests.TradesRequest,
    requests.ReconcileRequest,
    responses.Error,
    responses.IngestResponse,
    responses.GenerateSignalQueued,
    responses.GenerateSignalNeutral,
    responses.TestConnectionResponse,
    responses.QueueStatusResponse,
    responses.PushResponse,
    responses.AckResponse,
    responses.SignalsResponse,
    responses.TradesResponse,
    responses.OpenTradesResponse,
    responses.ReconcileResponse,
    responses.Health,
)


class _Schema(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # a property's title would only repeat its name


@functools.cache
def _generated() -> tuple[dict[type[BaseModel], dict[str, str]], dict[str, Any]]:
    refs, top = models_json_schema(
        [(m, "validation") for m in BODY_MODELS], ref_template=REF_TEMPLATE, schema_generator=_Schema
    )
    return {model: ref for (model, _), ref in refs.items()}, top["$defs"]


def component_schemas() -> dict[str, Any]:
    """`components.schemas`: every body model and every model inside one, by name."""
    return copy.deepcopy(_generated()[1])


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return dict(_generated()[0][model])


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query-string model as OpenAPI parameters, one per field."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=_Schema)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        out.append({**param, "schema": prop})
    return out


def _json(schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


def _error(description: str, example_error: str | None = None, retry_after: bool = False) -> dict[str, Any]:
    response = _json(
        _ref(responses.Error), description, {"success": False, "error": example_error} if example_error else None
    )
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return response


_AUTH = {"401": _error("missing or wrong X-API-Key", "invalid or missing API key")}
_DB_DOWN = {
    "503": _error(
        "the database is unavailable; retry after Retry-After seconds",
        "database unavailable; retry later",
        retry_after=True,
    )
}
_BODY_ERRORS = {
    "400": _error("the body is not JSON (or not UTF-8, or empty)"),
    "413": _error("the body is over API_MAX_BODY_BYTES; it is refused before being read whole"),
    "422": _error(
        "a field is missing or wrong, or the JSON holds NaN, Infinity or a duplicate key; details name each path"
    ),
}


def _body(model: type[BaseModel], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(model)}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


def build_openapi(settings: Settings) -> dict[str, Any]:
    metrics_security: list[dict[str, list[str]]] = [] if settings.metrics_public else [{"ApiKeyAuth": []}]
    paths: dict[str, Any] = {
        "/ingest": {
            "post": {
                "operationId": "ingest",
                "summary": "Store a batch of candles (idempotent upsert)",
                "description": (
                    "The whole batch is validated first: prices positive and finite, high >= max(open, close), "
                    "low <= min(open, close), times aligned to the timeframe and not in the future. "
                    "One bad candle rejects the batch (422, details name each path) and nothing is stored; "
                    "earlier rows are never touched by a rejected batch. Re-sending a bar is safe."
                ),
                "requestBody": _body(
                    requests.IngestRequest,
                    {
                        "symbol": "EURUSD",
                        "timeframe": "M1",
                        "candles": [
                            {
                                "time": 1730000000 - 1730000000 % 60,
                                "open": 1.0801,
                                "high": 1.0803,
                                "low": 1.0799,
                                "close": 1.0802,
                                "tick_volume": 57,
                                "spread": 2,
                                "real_volume": 0,
                            }
                        ],
                    },
                ),
                "responses": {
                    "200": _json(
                        _ref(responses.IngestResponse),
                        "stored",
                        {"success": True, "received": 1, "inserted": 1, "updated": 0, "unchanged": 0},
                    ),
                    **_BODY_ERRORS,
                    **_AUTH,
                    **_DB_DOWN,
                },
            }
        },
        "/ea/generate-signal": {
            "post": {
                "operationId": "generateSignal",
                "summary": "Predict on the newest closed bar and queue a signal for the EA",
                "description": (
                    "Only a closed bar is predicted (open + timeframe <= now, or a later bar exists); the forming bar "
                    "is ignored, and so is a closed bar whose final version has not arrived within LIVE_CLOSE_GRACE_SECONDS "
                    "of its close (the bar before it is decided; 409 reason=not_ready when there is none). 200 with success=true: queued (the seed's response). 200 with success=false: the "
                    "probability is inside the neutral band (no signal unless force=true). 404: no features for that "
                    "symbol and timeframe. 422 reason=no_model_for_timeframe: no model was trained on that timeframe "
                    "(timeframes_with_model lists those that have one). 409 reason=duplicate: this bar already has its "
                    "signal (one per bar, whatever the model version; `signal` is that one); 409 reason=too_late: the "
                    "bar's close + SIGNAL_TTL_SECONDS has passed, so a signal could not be delivered (`figures` says by "
                    "how much); 409 reason=stale_bar: the newest bar is too old (the feed has stalled); 409 "
                    "reason=unconfirmed_extreme: the bar is an extreme move the next bars have not confirmed yet; 409 "
                    "reason=unknown_pip_size: the symbol is not a currency pair and has no pip size (set PIP_SIZES or "
                    "send digits/point with its candles). 503: no model yet "
                    "(train one with the rf_m1 asset or `mt5-pipeline` training), a model too old "
                    "(reason=stale_model) or not matching the features, or the database is down."
                ),
                "requestBody": _body(
                    requests.GenerateSignalRequest, {"symbol": "EURUSD", "timeframe": "M1", "force": False}
                ),
                "responses": {
                    "200": {
                        "description": "queued, or no signal (neutral band)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        _ref(responses.GenerateSignalQueued),
                                        _ref(responses.GenerateSignalNeutral),
                                    ]
                                }
                            }
                        },
                    },
                    **_BODY_ERRORS,
                    **_AUTH,
                    "404": _error("no features for this symbol and timeframe"),
                    "409": _error(
                        "reason=duplicate (this bar already has its signal), reason=too_late (past the bar's close + "
                        "SIGNAL_TTL_SECONDS), reason=stale_bar (the feed has stalled) or reason=not_ready (the closed bar's "
                        "final version may still come)"
                    ),
                    "503": _error(
                        "no model yet (the message says how to train one), a stale or mismatched model, or the database is down"
                    ),
                },
            }
        },
        "/ea/test-connection": {
            "get": {
                "operationId": "testConnection",
                "summary": "Probe the EA's signals route (sets ea_connection_test_success)",
                "description": (
                    'POSTs {"probe": true} (no signal_id: no EA can trade it) to EA_SERVER_URL with the key. Connected when '
                    "the reference EA accepts the probe, or another EA refuses the empty body (400/422): the route exists. "
                    "401/403/404/405/415 (wrong key, path, method or content type) and 5xx are not connected, with the status."
                ),
                "responses": {
                    "200": _json(
                        _ref(responses.TestConnectionResponse), "the probe's outcome (connected may be false)"
                    ),
                    **_AUTH,
                },
            }
        },
        "/ea/queue-status": {
            "get": {
                "operationId": "queueStatus",
                "summary": "Signals per status created in the last 24 hours",
                "responses": {
                    "200": _json(_ref(responses.QueueStatusResponse), "counts and latest creation time per status"),
                    **_AUTH,
                    **_DB_DOWN,
                },
            }
        },
        "/ea/push-signals": {
            "post": {
                "operationId": "pushSignals",
                "summary": "Run one push cycle now: deliver pending signals to the EA",
                "description": (
                    "Works whatever EA_PUSH_ENABLED says (that switch is for the automatic pushers). An EA that does "
                    "not answer is not an error here: the signals stay PENDING (an outage; see retried). 502 with "
                    "reason ea_auth when the EA refuses EA_API_KEY, ea_config (and ea_status_code) on a 403/404/405/415: "
                    "configuration errors, the signals stay PENDING with no attempt spent."
                ),
                "responses": {
                    "200": _json(_ref(responses.PushResponse), "what the cycle did"),
                    **_AUTH,
                    "502": _error("the EA refused our EA_API_KEY, or answered 403/404/405/415 (configuration error)"),
                    **_DB_DOWN,
                },
            }
        },
        "/ea/ack": {
            "post": {
                "operationId": "ack",
                "summary": "The EA reports what it did with a signal (idempotent)",
                "requestBody": _body(
                    requests.AckRequest,
                    {
                        "signal_id": "550e8400-e29b-41d4-a716-446655440000",
                        "ticket": 12345678,
                        "status": "FILLED",
                        "message": "",
                    },
                ),
                "responses": {
                    "200": _json(_ref(responses.AckResponse), "recorded (a repeated ack is recorded once)"),
                    **_BODY_ERRORS,
                    **_AUTH,
                    "404": _error("no such signal_id"),
                    **_DB_DOWN,
                },
            }
        },
        "/ea/signals": {
            "get": {
                "operationId": "pullSignals",
                "summary": "Pull mode: deliverable signals, oldest first; reading changes nothing",
                "description": "A pulled signal stays deliverable until the EA acks it (POST /ea/ack) or it expires; the EA dedupes on signal_id.",
                "parameters": query_parameters(requests.PullQuery),
                "responses": {
                    "200": _json(_ref(responses.SignalsResponse), "signals the EA has not acked yet"),
                    "422": _error("bad status or limit"),
                    **_AUTH,
                    **_DB_DOWN,
                },
            }
        },
        "/ea/trades": {
            "post": {
                "operationId": "reportTrades",
                "summary": "The bridge or the EA reports positions: opens and closes, from the deals history (idempotent by ticket)",
                "description": (
                    "One row per ticket: the open report inserts it, the close report (same ticket, with close_time, close_price "
                    "and exit_reason) completes it, a repeat changes nothing, and no report reopens a closed trade. Timeframe and "
                    "model_version come from the signal; a report whose signal is unknown is kept and flagged (unknown_signal). "
                    "Pips are computed here from the prices and the signal's pip. Times are UTC. docs/trades.md."
                ),
                "requestBody": _body(
                    requests.TradesRequest,
                    {
                        "trades": [
                            {
                                "ticket": 50000001,
                                "signal_id": "550e8400-e29b-41d4-a716-446655440000",
                                "symbol": "EURUSD",
                                "side": "BUY",
                                "volume": 0.01,
                                "open_time": "2024-10-27T03:35:00Z",
                                "open_price": 1.08012,
                                "sl": 1.07812,
                                "tp": 1.08412,
                                "close_time": "2024-10-27T04:12:00Z",
                                "close_price": 1.08412,
                                "exit_reason": "tp",
                                "profit": 4.0,
                                "swap": 0.0,
                                "commission": -0.07,
                                "magic": 250101,
                                "account": 5000001,
                            }
                        ]
                    },
                ),  # fmt: skip
                "responses": {
                    "200": _json(
                        _ref(responses.TradesResponse), "recorded; per ticket: inserted, updated or unchanged"
                    ),
                    **_BODY_ERRORS,
                    **_AUTH,
                    **_DB_DOWN,
                },
            },
            "get": {
                "operationId": "openTrades",
                "summary": "The open trades the API holds (what reconciliation compares with the terminal)",
                "parameters": query_parameters(requests.OpenTradesQuery),
                "responses": {
                    "200": _json(_ref(responses.OpenTradesResponse), "open trades, oldest first"),
                    "422": _error("bad status, magic or account"),
                    **_AUTH,
                    **_DB_DOWN,
                },
            },
        },
        "/ea/reconcile": {
            "post": {
                "operationId": "reconcile",
                "summary": "Compare the terminal's positions with the open trades; record the state and the unknown positions",
                "description": (
                    "Send every open position carrying the magic. Positions the API did not hold open are recorded (flagged if "
                    "their signal is unknown); open trades the terminal no longer holds come back as missing: report their close "
                    "from the deals history. Nothing is closed. /health and /metrics show the state."
                ),
                "requestBody": _body(requests.ReconcileRequest, {"magic": 250101, "account": 5000001, "positions": []}),
                "responses": {
                    "200": _json(_ref(responses.ReconcileResponse), "the differences"),
                    **_BODY_ERRORS,
                    **_AUTH,
                    **_DB_DOWN,
                },
            }
        },
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
                    "200": _json(_ref(responses.Health), "ok or degraded"),
                    "503": {
                        **_json(_ref(responses.Health), "the database is unavailable"),
                        "headers": _DB_DOWN["503"]["headers"],
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (queue figures read from the database at scrape time)",
                "security": metrics_security,
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **({} if settings.metrics_public else _AUTH),
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
                    **_AUTH,
                },
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document as a page (no CDN needed)",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                    **_AUTH,
                },
            }
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mt5-pipeline API",
            "version": VERSION,
            "description": (
                "MetaTrader 5 candles in, ML trade signals out to the Expert Advisor. Every route but /health needs "
                'the X-API-Key header. Errors: {"success": false, "error": ..., "details": [{"loc", "message"}]}.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"ApiKeyAuth": []}],
    }


def render_docs(spec: dict[str, Any]) -> str:
    """A self-contained page: every operation with its body, parameters and responses."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>",
        e(spec["info"]["title"]),
        "</title><style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow:auto}"
        ".op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}"
        ".m{font-weight:bold;text-transform:uppercase;margin-right:.5rem}</style></head><body>",
        f"<h1>{e(spec['info']['title'])} <small>{e(spec['info']['version'])}</small></h1>",
        f"<p>{e(spec['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (send X-API-Key).</p>",
    ]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            parts.append(
                f"<div class='op' id='{e(op['operationId'])}'><h2><span class='m'>{e(method)}</span><code>{e(path)}</code></h2>"
            )
            parts.append(f"<p>{e(op.get('summary', ''))}</p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            if op.get("security") == []:
                parts.append("<p><em>No key needed.</em></p>")
            for param in op.get("parameters", []):
                note = f" ({e(param['description'])})" if param.get("description") else ""
                parts.append(
                    f"<p>query <code>{e(param['name'])}</code>: <code>{e(json.dumps(param['schema']))}</code>{note}</p>"
                )
            body = op.get("requestBody")
            if body:
                media = body["content"]["application/json"]
                name = media["schema"]["$ref"].rsplit("/", 1)[-1]
                parts.append(
                    f"<p>Body: <code>{e(name)}</code></p><pre>{e(json.dumps(spec['components']['schemas'][name], indent=2))}</pre>"
                )
                if "example" in media:
                    parts.append(f"<p>Example:</p><pre>{e(json.dumps(media['example'], indent=2))}</pre>")
            parts.append("<ul>")
            for code, response in op["responses"].items():
                parts.append(f"<li><code>{e(code)}</code> {e(response['description'])}</li>")
            parts.append("</ul></div>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"<h3 id='schema-{e(name)}'>{e(name)}</h3><pre>{e(json.dumps(schema, indent=2))}</pre>")
    parts.append("</body></html>")
    return "".join(parts)
