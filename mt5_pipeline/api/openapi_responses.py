"""The pieces every operation of the OpenAPI document is made of: a JSON request body, a
JSON response, an error response, and the error sets most routes share (a missing key, a
database that is down, a body that does not parse)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mt5_pipeline.api import responses
from mt5_pipeline.api.openapi_components import ref


def json_response(schema: dict[str, Any], description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


def error_response(description: str, example_error: str | None = None, retry_after: bool = False) -> dict[str, Any]:
    response = json_response(
        ref(responses.Error), description, {"success": False, "error": example_error} if example_error else None
    )
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return response


def request_body(model: type[BaseModel], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": ref(model)}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


AUTH = {"401": error_response("missing or wrong X-API-Key", "invalid or missing API key")}
DB_DOWN = {
    "503": error_response(
        "the database is unavailable; retry after Retry-After seconds",
        "database unavailable; retry later",
        retry_after=True,
    )
}
BODY_ERRORS = {
    "400": error_response("the body is not JSON (or not UTF-8, or empty)"),
    "413": error_response("the body is over API_MAX_BODY_BYTES; it is refused before being read whole"),
    "422": error_response(
        "a field is missing or wrong, or the JSON holds NaN, Infinity or a duplicate key; details name each path"
    ),
}
