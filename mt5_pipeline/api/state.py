"""What one app instance shares between requests: settings, metrics, the EA client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mt5_pipeline.api.errors import dumps
from mt5_pipeline.api.metrics import ApiMetrics
from mt5_pipeline.api.openapi import build_openapi, render_docs
from mt5_pipeline.settings import Settings

if TYPE_CHECKING:
    import httpx

    from mt5_pipeline.delivery.ea_client import EAClient

# /health is polled by load balancers and Docker; probing the EA on every poll would
# make the health check the EA's busiest client.
HEALTH_CACHE_SECONDS = 5.0


class TTLCache:
    """One value, recomputed at most every `ttl` seconds (thread-safe)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._value: Any = None
        self._at: float | None = None

    def get(self, compute: Callable[[], Any]) -> Any:
        with self._lock:
            now = self.clock()
            if self._at is None or now - self._at >= self.ttl:
                self._value = compute()
                self._at = now
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._at = None


class AppState:
    def __init__(self, settings: Settings, *, ea_transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.metrics = ApiMetrics(settings)
        self.openapi = build_openapi(settings)
        self.openapi_json = dumps(self.openapi)  # rendered once: it never changes while the app runs
        self.docs_html = render_docs(self.openapi)
        self.ea_probe = TTLCache(HEALTH_CACHE_SECONDS)
        self._ea_transport = ea_transport
        self._ea_client: EAClient | None = None
        self._lock = threading.Lock()

    def ea_client(self) -> EAClient:
        """The one pooled EA client of this app (built on first use, closed at shutdown)."""
        with self._lock:
            if self._ea_client is None:
                from mt5_pipeline.delivery.ea_client import EAClient  # httpx only when the EA is asked

                self._ea_client = EAClient(self.settings, transport=self._ea_transport)
            return self._ea_client

    def close(self) -> None:
        with self._lock:
            client, self._ea_client = self._ea_client, None
        if client is not None:
            client.close()
