"""The bridge's HTTP side: the seed's EA contract (``POST /signals``) and ``GET /health``.

``POST /signals`` answers exactly as the reference EA (:mod:`mt5_pipeline.apps.ea_sim`) does:
401 for a wrong ``X-API-Key``, 415/413/400/422 for a bad request, 200 with
``{"success": true, "ticket": N}`` for a trade (the same answer again for a repeated
``signal_id``), 200 with ``{"success": false, "message", "retcode", "description"}`` for
a rejection or an expired signal, and 503 with ``"transient": true`` while the terminal
cannot place it yet (nothing final is stored: the pusher tries again within the TTL).
A probe, ``{"probe": true}`` without a ``signal_id``
(what the API's ``GET /ea/test-connection`` sends), is answered
``200 {"success": true, "probe": true}`` once the key and content type pass, as the
reference EA answers it, so the API reports the key as verified. ``GET /health`` and
``GET /metrics`` (the terminal's state for Prometheus: connection, acks, open positions,
trade reports pending, reconciliation differences) need no key.

In pull mode nobody posts signals to the bridge: ``POST /signals`` is not served and no
``EA_API_KEY`` is needed.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mt5_pipeline.bridge.executor import Executor
from mt5_pipeline.execution.contract import MAX_BODY_BYTES


def create_bridge_app(
    executor: Executor, api_key: str, health: Callable[[], tuple[int, dict]], *, push: bool = True
) -> Starlette:
    if push and not api_key:
        raise ValueError("the bridge's signals server needs a key in push mode (EA_API_KEY, the key the pusher sends)")
    key = api_key.encode()

    async def signals(request: Request) -> JSONResponse:
        if not hmac.compare_digest(request.headers.get("x-api-key", "").encode(), key):
            return JSONResponse({"success": False, "message": "invalid or missing X-API-Key"}, status_code=401)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return JSONResponse({"success": False, "message": "Content-Type must be application/json"}, status_code=415)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse(
                {"success": False, "message": f"body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
            )
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"success": False, "message": "body is not valid JSON"}, status_code=400)
        if isinstance(body, dict) and body.get("probe") is True and "signal_id" not in body:
            return JSONResponse({"success": True, "probe": True, "message": "signals route ready"})
        idem = request.headers.get("idempotency-key")
        if idem is not None and isinstance(body, dict) and idem != body.get("signal_id"):
            return JSONResponse(
                {"success": False, "message": "Idempotency-Key does not match signal_id"}, status_code=400
            )
        code, answer = await run_in_threadpool(executor.handle, body)
        return JSONResponse(answer, status_code=code)

    async def health_route(request: Request) -> JSONResponse:
        code, body = await run_in_threadpool(health)
        return JSONResponse(body, status_code=code)

    async def metrics_route(request: Request) -> Response:
        code, body = await run_in_threadpool(health)
        return Response(bridge_metrics(body), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [Route("/health", health_route, methods=["GET"]), Route("/metrics", metrics_route, methods=["GET"])]
    if push:
        routes.append(Route("/signals", signals, methods=["POST"]))
    return Starlette(routes=routes)


def bridge_metrics(health: dict) -> bytes:
    """The bridge's /health as Prometheus gauges: the one view of the terminal the API's
    /metrics cannot have (the bridge runs on the terminal's machine)."""
    registry = CollectorRegistry(auto_describe=False)

    def gauge(name: str, help_text: str, value: float) -> None:
        family = GaugeMetricFamily(name, help_text)
        family.add_metric([], value)
        registry.register(_Fixed(family))

    gauge(
        "mt5_bridge_terminal_connected",
        "1 while the bridge is attached to a terminal connected to its trade server",
        int(health.get("terminal") == "connected"),
    )
    gauge(
        "mt5_bridge_trade_allowed",
        "1 while algo trading is allowed in the terminal",
        int(bool(health.get("trade_allowed"))),
    )
    gauge(
        "mt5_bridge_api_reachable",
        "1 while the bridge reaches the API (bars, acks, polls)",
        int(health.get("api") == "ok"),
    )
    gauge("mt5_bridge_acks_pending", "acks the API has not taken yet", float(health.get("acks_pending") or 0))
    outcomes = GaugeMetricFamily("mt5_bridge_signals", "signals the bridge has handled, by outcome", labels=["outcome"])
    for status, count in sorted((health.get("signals") or {}).items()):
        outcomes.add_metric([str(status)], float(count))
    registry.register(_Fixed(outcomes))
    positions = health.get("positions") or {}
    if positions.get("open") is not None:
        gauge(
            "mt5_bridge_open_positions",
            "positions carrying BRIDGE_MAGIC open in the terminal",
            float(positions["open"]),
        )
    gauge(
        "mt5_bridge_time_exits",
        "positions the bridge closed by the time exit since it started",
        float(positions.get("time_exits") or 0),
    )
    gauge(
        "mt5_bridge_trade_reports_pending",
        "trade reports (POST /ea/trades) the API has not taken yet",
        float((health.get("trade_reports") or {}).get("pending") or 0),
    )
    recon = health.get("reconciliation") or {}
    differences = GaugeMetricFamily(
        "mt5_bridge_reconciliation_differences",
        "at the last reconciliation: positions unknown to the API, and open trades gone from the terminal",
        labels=["kind"],
    )
    for kind in ("unknown", "missing"):
        differences.add_metric([kind], float(len(recon.get(kind) or [])))
    registry.register(_Fixed(differences))
    gauge(
        "mt5_bridge_reconciliation_ok",
        "1 while the last reconciliation found the terminal and the API in sync",
        int(recon.get("state") == "in_sync"),
    )
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family
