"""The `reference_ea` fixture: the real reference EA (mt5_pipeline.apps.ea_sim) served by uvicorn
on a free loopback port in a background thread.

Failures are injected here, in a thin ASGI wrapper in front of the product app, so the
reference EA itself stays a clean implementation:

    reference_ea.app_state.status = 500          # answer every POST /signals with 500
    reference_ea.app_state.reject = "no margin"  # answer 200 {"success": false, "message": ...}
    reference_ea.app_state.delay = 0.05          # seconds before answering
    reference_ea.app_state.poison = {signal_id}  # answer 500 to these signals only
    reference_ea.app_state.fail_next = 10        # answer 500 to the next 10 signals
    reference_ea.stop(); ...; reference_ea.start()   # the EA is down (connection refused), then back

`received` lists every POST /signals that reached the server, as (headers, body), before
any injected failure; `peers` the client port of each (to see connection reuse).
Connection probes (``{"probe": true}``, from /ea/test-connection) go to `probes` instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from mt5_pipeline.apps.ea_sim import create_ea_app
from mt5_pipeline.apps.servers import BackgroundServer
from mt5_pipeline.clock import iso_z

TEST_EA_KEY = "test-ea-key-0123456789"
# The body an EA receives, key by key in the seed's order, then expires_at. Spelt here, not
# taken from trade_signal.PAYLOAD_KEYS, so that the tests hold the code to the contract.
BODY_KEYS = [
    "signal_id",
    "timestamp",
    "symbol",
    "timeframe",
    "side",
    "confidence",
    "sl_pips",
    "tp_pips",
    "price",
    "meta",
    "expires_at",
]


def make_signal(
    symbol: str = "EURUSD",
    *,
    ts: datetime | None = None,
    side: str = "BUY",
    probability: float = 0.785,
    ttl: float = 600.0,
    expires_at: datetime | None = None,
    model_version: str = "v-test",
    price: float = 1.095,
    timeframe: str = "M1",
) -> dict:
    """An EA payload as signals.generate_signal builds it, for tests that queue directly."""
    ts = ts or datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    expires_at = expires_at or datetime.now(timezone.utc) + timedelta(seconds=ttl)
    confidence = probability if side == "BUY" else 1 - probability
    return {
        "signal_id": str(uuid.uuid4()),
        "timestamp": iso_z(ts),
        "symbol": symbol,
        "timeframe": timeframe,
        "side": side,
        "confidence": round(confidence, 6),
        "sl_pips": 20,
        "tp_pips": 40,
        "price": price,
        "meta": {
            "model": "rf_m1",
            "label": 1 if side == "BUY" else 0,
            "model_version": model_version,
            "probability": probability,
        },
        "expires_at": iso_z(expires_at),
    }


class ServerThread(BackgroundServer):
    """Any ASGI app under uvicorn in a daemon thread, without lifespan; stop() and start()
    again on the same port."""

    def __init__(self, app: Any, port: int | None = None, **config: Any) -> None:
        # asgi3 explicitly: the reference EA's wrapper is a bound coroutine method,
        # which uvicorn's auto-detection would take for ASGI 2.
        super().__init__(app, port=port, lifespan="off", interface="asgi3", **config)


@dataclass
class Faults:
    status: int | None = None  # answer POST /signals with this HTTP status
    reject: str | None = None  # answer 200 {"success": false, "message": reject}
    delay: float = 0.0  # seconds before answering (after recording)
    poison: set = field(default_factory=set)  # signal_ids answered with 500, whatever else
    fail_next: int = 0  # answer the next n signals (not probes) with 500


class ReferenceEA(ServerThread):
    def __init__(self, api_key: str = TEST_EA_KEY, *, server_config: dict | None = None, **app_kwargs: Any) -> None:
        self.api_key = api_key
        self.ea_app = create_ea_app(api_key, **app_kwargs)
        self.ea = self.ea_app.state.ea
        self.app_state = Faults()
        self.received: list[tuple[dict, Any]] = []
        self.probes: list[dict] = []
        self.peers: list[int] = []
        self._lock = threading.Lock()
        super().__init__(self._asgi, **(server_config or {}))

    @property
    def url(self) -> str:
        return f"{self.base_url}/signals"

    def settings(self, base, **changes):
        """``base`` settings pointed at this EA with its key."""
        return base.replace(ea_server_url_override=self.url, ea_api_key=self.api_key, **changes)

    def signal_ids(self) -> list[str]:
        with self._lock:
            return [body.get("signal_id") if isinstance(body, dict) else None for _, body in self.received]

    async def _asgi(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/signals" or scope["method"] != "POST":
            await self.ea_app(scope, receive, send)
            return
        raw = await read_body(receive)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        is_probe = isinstance(body, dict) and body.get("probe") is True
        with self._lock:
            if is_probe:
                self.probes.append(headers)
            else:
                self.received.append((headers, body))
                self.peers.append(scope["client"][1] if scope.get("client") else -1)
        faults = self.app_state
        if faults.delay:
            await asyncio.sleep(faults.delay)
        poisoned = isinstance(body, dict) and body.get("signal_id") in faults.poison
        if not is_probe and faults.fail_next > 0:
            faults.fail_next -= 1
            poisoned = True
        if faults.status is not None or faults.reject is not None or poisoned:
            status = faults.status or (500 if poisoned else 200)
            message = faults.reject or f"injected {status}"
            await send_json(send, status, {"success": False, "message": message})
            return
        await self.ea_app(scope, replaying(raw, receive), send)


# ---- a fault wrapper's ASGI plumbing (the chaos benchmark wraps the reference EA too) ----


async def read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def replaying(raw: bytes, receive):
    """A `receive` that hands the already-read body to the wrapped app, once."""
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay


async def send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def reference_ea() -> Iterator[ReferenceEA]:
    ea = ReferenceEA()
    ea.start()
    yield ea
    ea.stop()
    ea.ea.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02):
    """Poll until ``predicate()`` is truthy and return that value; its last (falsy) value
    if it never became truthy within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
