"""The app factory: `create_app(settings)` builds the same app for tests and for
`mt5-pipeline serve` (uvicorn).

Middleware, outermost first: Starlette's ServerErrorMiddleware; GuardMiddleware (turns
anything unhandled into the error shape, an outage into 503); the request counter;
the X-API-Key check (before any body is read); then the router with its exception
handlers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mt5_pipeline.api.auth import APIKeyMiddleware
from mt5_pipeline.api.errors import (
    ApiError,
    GuardMiddleware,
    database_outage_types,
    handle_api_error,
    handle_database_outage,
    handle_http_exception,
)
from mt5_pipeline.api.metrics import ApiMetrics
from mt5_pipeline.api.routes import ROUTES
from mt5_pipeline.api.state import AppState
from mt5_pipeline.settings import Settings, SettingsError

log = logging.getLogger("api")

_ROUTE_PATHS = frozenset(route.path for route in ROUTES)


def check_startup(settings: Settings) -> None:
    """Refuse to build an app that would be open, or guarded by the published example key."""
    settings.check()
    # settings.check() already refuses production without keys or with the example key.
    if not settings.effective_api_keys:
        raise SettingsError(
            "refusing to start the API:\n  API_KEYS: no key configured; every route but /health would be refused (set "
            "API_KEYS)"
        )


class RequestCounter:
    """Counts answers per route template and status (unknown paths share one label)."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                path = scope.get("path", "")
                route = path if path in _ROUTE_PATHS else "other"
                self.metrics.requests.labels(scope.get("method", ""), route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(settings: Settings, *, ea_transport: Any = None) -> Starlette:
    """Build the API for `settings`. `ea_transport` (an httpx transport) is for tests only."""
    check_startup(settings)
    state = AppState(settings, ea_transport=ea_transport)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.ea_push_enabled:
            try:
                state.ea_client()  # one pooled client for the app's lifetime
            except ImportError:  # pragma: no cover - a build without the delivery module
                log.warning(
                    "mt5_pipeline.delivery.ea_client is not available: /ea routes that talk to the EA will fail"
                )
        log.info(
            "API ready: %d key(s), metrics %s",
            len(settings.effective_api_keys),
            "public" if settings.metrics_public else "behind the key",
        )
        try:
            yield
        finally:
            state.close()

    public = {"/health"} | ({"/metrics"} if settings.metrics_public else set())
    handlers: dict[Any, Any] = {ApiError: handle_api_error, HTTPException: handle_http_exception}
    for outage in database_outage_types():
        handlers[outage] = handle_database_outage
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(GuardMiddleware),
            Middleware(RequestCounter, metrics=state.metrics),
            Middleware(APIKeyMiddleware, keys=settings.effective_api_keys, public_paths=public),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.api = state
    return app
