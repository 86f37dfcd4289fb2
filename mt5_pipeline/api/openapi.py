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

import html
import json
from typing import Any

from mt5_pipeline import __version__ as VERSION
from mt5_pipeline.api.openapi_components import component_schemas, components, default_security, query_parameters
from mt5_pipeline.api.openapi_paths import paths
from mt5_pipeline.settings import Settings

OPENAPI_VERSION = "3.1.0"
# Names callers import from here; each lives in the module that builds its part.
__all__ = ["OPENAPI_VERSION", "VERSION", "build_openapi", "component_schemas", "query_parameters", "render_docs"]


def info() -> dict[str, Any]:
    return {
        "title": "mt5-pipeline API",
        "version": VERSION,
        "description": (
            "MetaTrader 5 candles in, ML trade signals out to the Expert Advisor. Every route but /health needs "
            'the X-API-Key header. Errors: {"success": false, "error": ..., "details": [{"loc", "message"}]}.'
        ),
    }


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The whole document for these settings (they decide whether /metrics needs the key)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": info(),
        "paths": paths(settings),
        "components": components(),
        "security": default_security(),
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
                f"<div class='op' id='{e(op['operationId'])}'>"
                f"<h2><span class='m'>{e(method)}</span><code>{e(path)}</code></h2>"
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
                    f"<p>Body: <code>{e(name)}</code></p>"
                    f"<pre>{e(json.dumps(spec['components']['schemas'][name], indent=2))}</pre>"
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
