"""X-API-Key on every route but /health (and /metrics when METRICS_PUBLIC=true).

/metrics also takes the key as ``Authorization: Bearer <key>``: Prometheus can send that
header from a file (``authorization.credentials_file``) but no custom header, so the
scraper gets the key without opening /metrics to everyone.

A pure ASGI middleware, so an unauthenticated request is answered before its body is
read. The key is compared in constant time against every configured key (the loop
never stops early), so neither timing nor the answer tells which keys exist. Failed
attempts are logged with the client address and never with the key.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from mt5_pipeline.api.errors import error_response

log = logging.getLogger("api.auth")

HEADER = b"x-api-key"
BEARER_PATHS = frozenset({"/metrics"})
UNAUTHORIZED = "invalid or missing API key"


def key_matches(given: bytes | None, keys: Iterable[bytes]) -> bool:
    """True when `given` equals one of `keys`; time does not depend on which one."""
    matched = False
    candidate = given if given is not None else b""
    for key in keys:
        # `|` and not `or`: compare against every key even after a match.
        matched |= hmac.compare_digest(candidate, key)
    return matched and given is not None and given != b""


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: Iterable[str], public_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = tuple(k.encode("utf-8") for k in keys)
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        given: bytes | None = None
        bearer: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name == HEADER:
                given = value
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                bearer = value[7:].strip()
        if given is None and bearer is not None and scope.get("path") in BEARER_PATHS:
            given = bearer
        if key_matches(given, self.keys):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "unknown"
        log.warning(
            "refused %s %r from %s: %s X-API-Key",
            scope.get("method", ""),
            scope.get("path", ""),
            address,
            "missing" if given is None else "invalid",
        )
        response = error_response(401, UNAUTHORIZED, headers={"WWW-Authenticate": "ApiKey header=X-API-Key"})
        await response(scope, receive, send)
