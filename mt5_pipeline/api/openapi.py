"""The OpenAPI 3.0 document of every route, written by hand, and a /docs page that shows it.

Hand-written rather than generated from docstrings: the request and response shapes
here are the contract with EAs and scripts, so they are spelled out and reviewed as
such; a test checks that every route of the app appears here and that the document
validates against the OpenAPI 3.0 schema. /docs renders on the server, from this same
dict, with no CDN (the page must work on a trading box without internet access).
"""

from __future__ import annotations

import html
import json
from typing import Any

from mt5_pipeline import __version__ as VERSION
from mt5_pipeline.api.schemas import ACK_MESSAGE_MAX, ACK_STATUS_PATTERN, MAX_PULL_LIMIT, SIGNAL_ID_MAX, SYMBOL_PATTERN, TIMEFRAMES
from mt5_pipeline.settings import Settings


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


def _error(description: str, example_error: str | None = None, retry_after: bool = False) -> dict[str, Any]:
    response = _json(_ref("Error"), description, {"success": False, "error": example_error} if example_error else None)
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return response


_PRICE = {"type": "number", "minimum": 0, "exclusiveMinimum": True}
_COUNT = {"type": "integer", "minimum": 0}
_TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC, ending in Z"}

SCHEMAS: dict[str, Any] = {
    "FieldError": {
        "type": "object",
        "required": ["loc", "message"],
        "properties": {
            "loc": {"type": "string", "description": "path of the offending value, such as candles[3].high"},
            "message": {"type": "string"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": {"type": "string", "description": "what went wrong; never names a key or a password"},
            "details": {"type": "array", "items": _ref("FieldError")},
            "reason": {"type": "string", "description": "machine-readable cause where several share a status code"},
        },
    },
    "Candle": {
        "type": "object",
        "description": "One bar, with MetaTrader 5's MqlRates field names. `time` is the bar's open time in UTC.",
        "required": ["time", "open", "high", "low", "close", "tick_volume"],
        "properties": {
            "time": {
                "oneOf": [
                    {"type": "integer", "description": "epoch seconds, UTC"},
                    {"type": "string", "format": "date-time", "description": "ISO 8601 with Z or an offset"},
                ]
            },
            "open": _PRICE,
            "high": _PRICE,
            "low": _PRICE,
            "close": _PRICE,
            "tick_volume": _COUNT,
            "spread": {**_COUNT, "default": 0, "description": "in points, as MT5 gives it"},
            "real_volume": {**_COUNT, "default": 0},
        },
    },
    "IngestRequest": {
        "type": "object",
        "required": ["symbol", "timeframe", "candles"],
        "properties": {
            "symbol": {"type": "string", "pattern": SYMBOL_PATTERN, "example": "EURUSD"},
            "timeframe": {"type": "string", "enum": list(TIMEFRAMES)},
            "candles": {"type": "array", "items": _ref("Candle")},
            "utc_offset_hours": {
                "type": "number",
                "minimum": -12,
                "maximum": 14,
                "default": 0,
                "description": "the broker's UTC offset: where its H4/D1/W1/MN1 bars begin (times themselves are UTC)",
            },
            "digits": {
                "type": "integer",
                "minimum": 0,
                "maximum": 8,
                "description": "MT5's SYMBOL_DIGITS for this symbol (optional): with `point`, where its pip size comes from for "
                "anything that is not a currency pair (gold, indices, crypto); a pip is point x 10 on 3- and 5-digit quotes, else one point",
            },
            "point": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 1,
                "description": "MT5's SYMBOL_POINT for this symbol (optional), e.g. 0.01 for XAUUSD quoted 2034.56; must match `digits` when both are sent",
            },
        },
    },
    "IngestResponse": {
        "type": "object",
        "required": ["success", "received", "inserted", "updated", "unchanged"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "received": _COUNT,
            "inserted": _COUNT,
            "updated": {**_COUNT, "description": "bars already stored whose values changed (re-sent, corrected)"},
            "unchanged": {**_COUNT, "description": "bars already stored with the same values (a safe retry)"},
            "duplicates": {**_COUNT, "description": "present when a time appeared twice in the batch (the last one was kept)"},
        },
    },
    "GenerateSignalRequest": {
        "type": "object",
        "required": ["symbol"],
        "properties": {
            "symbol": {"type": "string", "pattern": SYMBOL_PATTERN, "example": "EURUSD"},
            "timeframe": {"type": "string", "enum": list(TIMEFRAMES), "default": "M1"},
            "force": {"type": "boolean", "default": False, "description": "queue a signal even inside the neutral band"},
        },
    },
    "Signal": {
        "type": "object",
        "description": "What the EA receives (POST to EA_SERVER_URL, or GET /ea/signals in pull mode).",
        "required": ["signal_id", "timestamp", "symbol", "timeframe", "side", "confidence", "sl_pips", "tp_pips"],
        "properties": {
            "signal_id": {"type": "string", "description": "UUID; the EA dedupes on it"},
            "timestamp": _TIMESTAMP,
            "symbol": {"type": "string"},
            "timeframe": {"type": "string", "enum": list(TIMEFRAMES)},
            "side": {"type": "string", "enum": ["BUY", "SELL"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "sl_pips": {"type": "number"},
            "tp_pips": {"type": "number"},
            "price": {"type": "number"},
            "meta": {"type": "object", "description": "model, label, model_version, ..."},
            "expires_at": _TIMESTAMP,
        },
    },
    "GenerateSignalQueued": {
        "type": "object",
        "required": ["success", "message", "signal"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "message": {"type": "string", "example": "Signal generated and added to queue"},
            "signal": _ref("Signal"),
        },
    },
    "GenerateSignalNeutral": {
        "type": "object",
        "required": ["success", "message", "confidence"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "message": {"type": "string"},
            "confidence": {"type": "number"},
            "probability": {"type": "number", "nullable": True},
            "reason": {"type": "string", "enum": ["neutral"]},
        },
    },
    "TestConnectionResponse": {
        "type": "object",
        "required": ["connected", "ea_server", "ea_url", "message"],
        "properties": {
            "connected": {"type": "boolean"},
            "ea_server": {"type": "string", "example": "192.168.15.18:8080"},
            "ea_url": {"type": "string", "example": "http://192.168.15.18:8080/signals"},
            "message": {"type": "string"},
            "status_code": {"type": "integer", "description": "what the EA's signals route answered to the probe, when it answered"},
        },
    },
    "QueueStatusResponse": {
        "type": "object",
        "required": ["success", "queue_status", "period"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "queue_status": {
                "type": "object",
                "description": "per status (PENDING, SENT, ACKED, FAILED, EXPIRED, REJECTED): signals created in the period",
                "additionalProperties": {
                    "type": "object",
                    "required": ["count"],
                    "properties": {"count": _COUNT, "latest": {**_TIMESTAMP, "nullable": True}},
                },
            },
            "period": {"type": "string", "enum": ["last_24_hours"]},
        },
    },
    "PushResponse": {
        "type": "object",
        "required": ["success", "sent_count", "message"],
        "properties": {
            "success": {"type": "boolean"},
            "sent_count": _COUNT,
            "message": {"type": "string", "example": "Successfully pushed 3 signals to EA"},
            "claimed": _COUNT,
            "rejected": _COUNT,
            "retried": _COUNT,
            "failed": _COUNT,
            "expired": _COUNT,
        },
    },
    "AckRequest": {
        "type": "object",
        "required": ["signal_id", "status"],
        "properties": {
            "signal_id": {"type": "string", "minLength": 1, "maxLength": SIGNAL_ID_MAX},
            "ticket": {"type": "integer", "minimum": 0, "nullable": True},
            "status": {"type": "string", "pattern": ACK_STATUS_PATTERN, "example": "FILLED"},
            "message": {"type": "string", "maxLength": ACK_MESSAGE_MAX, "default": ""},
        },
    },
    "AckResponse": {
        "type": "object",
        "required": ["success"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "signal_id": {"type": "string"},
            "status": {"type": "string", "description": "the signal's queue status after the ack (ACKED unless it had already ended)"},
            "ticket": {"type": "integer", "nullable": True},
            "ack_status": {"type": "string", "description": "the status the EA reported"},
            "repeated": {"type": "boolean", "description": "this signal had been acked before"},
        },
    },
    "SignalsResponse": {
        "type": "object",
        "required": ["success", "signals"],
        "properties": {"success": {"type": "boolean", "enum": [True]}, "signals": {"type": "array", "items": _ref("Signal")}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "database", "model", "ea"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "database": {"type": "string", "enum": ["ok", "unavailable"]},
            "model": {"type": "string", "enum": ["loaded", "missing", "stale"]},
            "ea": {"type": "string", "enum": ["reachable", "unreachable", "disabled"]},
            "delivery": {"type": "string", "enum": ["push", "pull"]},
            "ea_delivery": {
                "type": "string",
                "enum": ["ok", "outage", "config_error"],
                "description": "the pushers' view of the EA (push mode): outage = signals held while they probe; config_error = delivery stopped (401/403/404/405/415)",
            },
            "ea_delivery_status_code": {"type": "integer", "nullable": True},
            "ea_delivery_error": {"type": "string", "nullable": True, "description": "what the EA answered, and which setting to check"},
            "ea_delivery_since": {**_TIMESTAMP, "nullable": True},
            "model_version": {"type": "string", "nullable": True},
            "model_age_seconds": {"type": "number", "nullable": True},
            "model_stale_reason": {"type": "string"},
            "model_error": {"type": "string", "description": "why the model file cannot be used (retrain)"},
            "newest_bars": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "symbol": {"type": "string"},
                        "timeframe": {"type": "string"},
                        "newest_ts": {**_TIMESTAMP, "nullable": True},
                        "age_seconds": {"type": "number", "nullable": True},
                        "stale": {"type": "boolean"},
                    },
                },
            },
            "champion_age_seconds": {"type": "number", "nullable": True, "description": "age of the first timeframe's champion"},
            "last_retrain": {**_ref("Retrain"), "nullable": True},
            "retrain_failed": {"type": "array", "items": {"type": "string"}, "description": "timeframes whose last retrain failed (status is degraded)"},
            "models": {
                "type": "object",
                "description": "per timeframe in TIMEFRAMES: the champion and the last retrain",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "champion_version": {"type": "string", "nullable": True},
                        "champion_age_seconds": {"type": "number", "nullable": True},
                        "last_retrain": {**_ref("Retrain"), "nullable": True},
                    },
                },
            },
            "version": {"type": "string"},
        },
    },
    "Retrain": {
        "type": "object",
        "properties": {
            "outcome": {"type": "string", "enum": ["promoted", "forced", "rejected", "failed"]},
            "version": {"type": "string"},
            "at": _TIMESTAMP,
            "reason": {"type": "string"},
        },
    },
}

_AUTH = {"401": _error("missing or wrong X-API-Key", "invalid or missing API key")}
_DB_DOWN = {"503": _error("the database is unavailable; retry after Retry-After seconds", "database unavailable; retry later", retry_after=True)}
_BODY_ERRORS = {
    "400": _error("the body is not JSON (or not UTF-8, or empty)"),
    "413": _error("the body is over API_MAX_BODY_BYTES; it is refused before being read whole"),
    "422": _error("a field is missing or wrong, or the JSON holds NaN, Infinity or a duplicate key; details name each path"),
}


def _body(schema_name: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema_name)}
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
                    "IngestRequest",
                    {
                        "symbol": "EURUSD",
                        "timeframe": "M1",
                        "candles": [
                            {"time": 1730000000 - 1730000000 % 60, "open": 1.0801, "high": 1.0803, "low": 1.0799,
                             "close": 1.0802, "tick_volume": 57, "spread": 2, "real_volume": 0}
                        ],
                    },
                ),
                "responses": {
                    "200": _json(_ref("IngestResponse"), "stored", {"success": True, "received": 1, "inserted": 1, "updated": 0, "unchanged": 0}),
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
                    "is ignored. 200 with success=true: queued (the seed's response). 200 with success=false: the "
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
                "requestBody": _body("GenerateSignalRequest", {"symbol": "EURUSD", "timeframe": "M1", "force": False}),
                "responses": {
                    "200": {
                        "description": "queued, or no signal (neutral band)",
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [_ref("GenerateSignalQueued"), _ref("GenerateSignalNeutral")]}
                            }
                        },
                    },
                    **_BODY_ERRORS,
                    **_AUTH,
                    "404": _error("no features for this symbol and timeframe"),
                    "409": _error(
                        "reason=duplicate (this bar already has its signal), reason=too_late (past the bar's close + "
                        "SIGNAL_TTL_SECONDS) or reason=stale_bar (the feed has stalled)"
                    ),
                    "503": _error("no model yet (the message says how to train one), a stale or mismatched model, or the database is down"),
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
                "responses": {"200": _json(_ref("TestConnectionResponse"), "the probe's outcome (connected may be false)"), **_AUTH},
            }
        },
        "/ea/queue-status": {
            "get": {
                "operationId": "queueStatus",
                "summary": "Signals per status created in the last 24 hours",
                "responses": {"200": _json(_ref("QueueStatusResponse"), "counts and latest creation time per status"), **_AUTH, **_DB_DOWN},
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
                    "200": _json(_ref("PushResponse"), "what the cycle did"),
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
                "requestBody": _body("AckRequest", {"signal_id": "550e8400-e29b-41d4-a716-446655440000", "ticket": 12345678, "status": "FILLED", "message": ""}),
                "responses": {
                    "200": _json(_ref("AckResponse"), "recorded (a repeated ack is recorded once)"),
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
                "parameters": [
                    {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": ["PENDING"], "default": "PENDING"}},
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PULL_LIMIT, "default": 100}},
                ],
                "responses": {
                    "200": _json(_ref("SignalsResponse"), "signals the EA has not acked yet"),
                    "422": _error("bad status or limit"),
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
                    "200": _json(_ref("Health"), "ok or degraded"),
                    "503": {**_json(_ref("Health"), "the database is unavailable"), "headers": _DB_DOWN["503"]["headers"]},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (queue figures read from the database at scrape time)",
                "security": metrics_security,
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **({} if settings.metrics_public else _AUTH),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}, **_AUTH},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document as a page (no CDN needed)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}, **_AUTH},
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mt5-pipeline API",
            "version": VERSION,
            "description": (
                "MetaTrader 5 candles in, ML trade signals out to the Expert Advisor. Every route but /health needs "
                "the X-API-Key header. Errors: {\"success\": false, \"error\": ..., \"details\": [{\"loc\", \"message\"}]}."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
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
            parts.append(f"<div class='op' id='{e(op['operationId'])}'><h2><span class='m'>{e(method)}</span><code>{e(path)}</code></h2>")
            parts.append(f"<p>{e(op.get('summary', ''))}</p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            if op.get("security") == []:
                parts.append("<p><em>No key needed.</em></p>")
            for param in op.get("parameters", []):
                parts.append(f"<p>query <code>{e(param['name'])}</code>: <code>{e(json.dumps(param['schema']))}</code></p>")
            body = op.get("requestBody")
            if body:
                media = body["content"]["application/json"]
                name = media["schema"]["$ref"].rsplit("/", 1)[-1]
                parts.append(f"<p>Body: <code>{e(name)}</code></p><pre>{e(json.dumps(spec['components']['schemas'][name], indent=2))}</pre>")
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
