"""One error shape for every failure, and the exception handlers that produce it.

`{"success": false, "error": "...", "details": [{"loc": "candles[3].high", "message": "..."}]}`

Client input never yields a 500: bad input is caught by the body reader, the request
models or the ingest core's CandleValidationError. A database that cannot be reached
is a 503 with Retry-After, so the EA backs off and retries rather than dropping data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mt5_pipeline.clock import iso_z

log = logging.getLogger("api.errors")

# Seconds a client should wait before retrying after a 503 for a database outage.
DB_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Detail:
    """One offending path in a request (same fields as the ingest core's FieldError)."""

    loc: str
    message: str


class ApiError(Exception):
    """Raised anywhere in the shell to answer with the error shape."""

    def __init__(
        self,
        status_code: int,
        error: str,
        details: Iterable[Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.details = [_detail_dict(d) for d in (details or ())]
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def _detail_dict(detail: Any) -> dict[str, str]:
    if isinstance(detail, Mapping):
        return {"loc": str(detail.get("loc", "")), "message": str(detail.get("message", ""))}
    return {"loc": str(getattr(detail, "loc", "")), "message": str(getattr(detail, "message", detail))}


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso_z(value)  # the same text as the signals' timestamps (naive means UTC)
    if isinstance(value, dt.date):
        return value.isoformat()
    # numpy scalars (from pandas-backed core results) have .item()
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(data: Any) -> bytes:
    # allow_nan=False: a NaN in a response is a bug, and JSON has no NaN anyway.
    return json.dumps(data, default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8"
    )


class JSON(Response):
    """JSON response that also renders datetimes (UTC, `Z`) and numpy scalars."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_body(error: str, details: Sequence[Mapping[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": error}
    if details:
        body["details"] = list(details)
    body.update(extra)
    return body


def error_response(
    status_code: int,
    error: str,
    details: Sequence[Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSON:
    return JSON(
        error_body(error, [_detail_dict(d) for d in details or ()], **extra),
        status_code=status_code,
        headers=dict(headers or {}),
    )


# ---- database outages --------------------------------------------------------


def database_outage_types() -> tuple[type[BaseException], ...]:
    """Exception classes that mean "the database cannot be reached right now"."""
    import sqlalchemy.exc as sa_exc

    types: list[type[BaseException]] = [sa_exc.OperationalError, sa_exc.InterfaceError, sqlite3.OperationalError]
    try:
        import psycopg

        types += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:  # pragma: no cover - psycopg 3 is a dependency
        pass
    try:
        import psycopg2

        types += [psycopg2.OperationalError, psycopg2.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def is_database_outage(exc: BaseException) -> bool:
    """True for an outage, also when the core wrapped the driver's error in another."""
    import sqlalchemy.exc as sa_exc

    outage = database_outage_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, outage):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def outage_response() -> JSON:
    return error_response(
        503,
        "database unavailable; retry later",
        headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
    )


# ---- handlers ------------------------------------------------------------------


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.error, exc.details, headers=exc.headers, **exc.extra)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    messages = {404: "no such route", 405: "method not allowed for this route"}
    error = messages.get(exc.status_code) or str(exc.detail)
    return error_response(exc.status_code, error, headers=exc.headers)


async def handle_database_outage(request: Request, exc: Exception) -> Response:
    # The driver's message can carry the host and user; log it, do not send it.
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return outage_response()


class GuardMiddleware:
    """Last resort, inside Starlette's ServerErrorMiddleware: whatever escapes the
    handlers becomes the error shape. Outages wrapped in other exceptions (pandas wraps
    DBAPI errors) still get their 503 here; anything else is a bug, logged in full and
    answered with a 500 that reveals nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            method, path = scope.get("method", ""), scope.get("path", "")
            if is_database_outage(exc):
                log.warning("database unavailable during %s %s: %s", method, path, type(exc).__name__)
                response = outage_response()
            else:
                log.error("unhandled error during %s %s", method, path, exc_info=exc)
                response = error_response(500, "internal error; see the server log")
            await response(scope, receive, send)
