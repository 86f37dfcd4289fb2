"""The bridge's HTTP side: the seed's EA contract (``POST /signals``) and ``GET /health``.

``POST /signals`` answers exactly as the reference EA (:mod:`mt5_pipeline.apps.ea_sim`) does:
401 for a wrong ``X-API-Key``, 415/413/400/422 for a bad request, 200 with
``{"success": true, "ticket": N}`` for a trade (the same answer again for a repeated
``signal_id``), 200 with ``{"success": false, "message", "retcode", "description"}`` for
a rejection or an expired signal, and 503 with ``"transient": true`` while the terminal
cannot place it yet (nothing final is stored: the pusher tries again within the TTL).
``GET /health`` needs no key.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mt5_pipeline.bridge.executor import Executor
from mt5_pipeline.contract import MAX_BODY_BYTES


def create_bridge_app(executor: Executor, api_key: str, health: Callable[[], tuple[int, dict]]) -> Starlette:
    if not api_key:
        raise ValueError("the bridge's signals server needs a key (EA_API_KEY)")
    key = api_key.encode()

    async def signals(request: Request) -> JSONResponse:
        if not hmac.compare_digest(request.headers.get("x-api-key", "").encode(), key):
            return JSONResponse({"success": False, "message": "invalid or missing X-API-Key"}, status_code=401)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return JSONResponse({"success": False, "message": "Content-Type must be application/json"}, status_code=415)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse({"success": False, "message": f"body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"success": False, "message": "body is not valid JSON"}, status_code=400)
        idem = request.headers.get("idempotency-key")
        if idem is not None and isinstance(body, dict) and idem != body.get("signal_id"):
            return JSONResponse({"success": False, "message": "Idempotency-Key does not match signal_id"}, status_code=400)
        code, answer = await run_in_threadpool(executor.handle, body)
        return JSONResponse(answer, status_code=code)

    async def health_route(request: Request) -> JSONResponse:
        code, body = await run_in_threadpool(health)
        return JSONResponse(body, status_code=code)

    return Starlette(routes=[Route("/signals", signals, methods=["POST"]), Route("/health", health_route, methods=["GET"])])
