"""The reference EA: a small Starlette app that implements the seed's EA contract and
paper-trades what it receives.

It is a faithful, strict peer, not a mock: tests, the demo and users without an MT5
terminal run against it, and it is the model an EA author can copy.

- ``POST /signals``: checks ``X-API-Key`` (401), the body (every field and its type,
  ``side`` BUY/SELL, ``0 < confidence <= 1``, positive pips and price, a UUID
  ``signal_id``, ``Idempotency-Key`` equal to it when sent), refuses an expired signal
  with ``success: false``, and dedupes by ``signal_id``: a repeat gets the *same* ticket
  and opens nothing. That dedupe is what makes at-least-once delivery safe.
  A probe, ``{"probe": true}`` without a ``signal_id`` (what ``/ea/test-connection`` sends),
  is answered ``200 {"success": true, "probe": true}`` once the key and content type
  passed: proof that this URL, method, key and content type reach the signals route.
- ``GET /health``: liveness (no key needed).
- ``GET /positions``: the paper positions (key needed).
- ``POST /prices`` ``{"symbol": "EURUSD", "price": 1.0812}``: marks positions to that
  price and closes those whose SL or TP it reaches (key needed).
- With ``ack_url``, every accepted signal is acknowledged to the API in the background
  (``POST ack_url`` with ``{"signal_id", "ticket", "status": "FILLED", "message"}``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mt5_pipeline.clock import iso_z, parse_iso, utcnow
from mt5_pipeline.execution.contract import MAX_BODY_BYTES, pip_for_signal, validate_signal
from mt5_pipeline.market.pips import PipSizeUnknown
from mt5_pipeline.settings import Settings

log = logging.getLogger(__name__)

FIRST_TICKET = 10_000_001


def _answer(status_code: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status_code)


class PaperEA:
    """The EA's state: accepted signals by id, positions by ticket. Thread-safe."""

    def __init__(
        self,
        api_key: str,
        *,
        ack_url: str | None = None,
        ack_api_key: str | None = None,
        log_file: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        pip_sizes: dict | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("the reference EA needs an API key (EA_API_KEY)")
        self._api_key = api_key.encode()
        self.ack_url = ack_url
        self._ack_api_key = ack_api_key
        self.log_file = log_file
        self.clock = clock
        self.pip_sizes = pip_sizes or {}
        self.lock = threading.Lock()
        self.by_signal: dict[str, dict] = {}
        self.positions: dict[int, dict] = {}
        self.requests = 0
        self.probes = 0
        self.duplicates = 0
        self._next_ticket = FIRST_TICKET
        self._ack_client: httpx.Client | None = None
        self._log_fh: Any = None

    def key_ok(self, request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("x-api-key", "").encode(), self._api_key)

    def pip_of(self, body: dict) -> float | None:
        """The pip the signal's sl_pips / tp_pips are in: the sender's meta.pip_size when it
        says, else this EA's PIP_SIZES or the FX rule; None for an instrument it cannot
        tell (a real EA knows its own SYMBOL_POINT; this one never guesses an FX pip)."""
        try:
            return pip_for_signal(body, None, None, self.pip_sizes)[0]
        except PipSizeUnknown:
            return None

    def accept(self, body: dict) -> tuple[dict, bool]:
        """Open a paper position for a valid signal; a repeat returns the first answer."""
        with self.lock:
            previous = self.by_signal.get(body["signal_id"])
            if previous is not None:
                self.duplicates += 1
                return previous, True
            ticket = self._next_ticket
            self._next_ticket += 1
            pip = self.pip_of(body)
            sign = 1 if body["side"] == "BUY" else -1
            price = float(body["price"])
            position = {
                "ticket": ticket,
                "signal_id": body["signal_id"],
                "symbol": body["symbol"],
                "side": body["side"],
                "open_price": price,
                # Without a pip, no stop or target is placed (never at an FX pip's distance).
                "sl": None if pip is None else round(price - sign * body["sl_pips"] * pip, 10),
                "tp": None if pip is None else round(price + sign * body["tp_pips"] * pip, 10),
                "opened_at": iso_z(self.clock()),
                "status": "OPEN",
                "close_price": None,
                "pips": None,
                "pip": pip,
            }
            self.positions[ticket] = position
            self.by_signal[body["signal_id"]] = {"success": True, "ticket": ticket}
            if self.log_file:
                if self._log_fh is None:
                    self._log_fh = open(self.log_file, "a", encoding="utf-8")
                self._log_fh.write(json.dumps({"received_at": time.time(), "ticket": ticket, "signal": body}) + "\n")
                self._log_fh.flush()
            return self.by_signal[body["signal_id"]], False

    def mark_price(self, symbol: str, price: float) -> list[dict]:
        """Close open positions of ``symbol`` whose SL or TP ``price`` reaches."""
        closed = []
        with self.lock:
            for p in self.positions.values():
                if p["status"] != "OPEN" or p["symbol"] != symbol or p["pip"] is None:
                    continue
                buy = p["side"] == "BUY"
                hit_sl = price <= p["sl"] if buy else price >= p["sl"]
                hit_tp = price >= p["tp"] if buy else price <= p["tp"]
                if hit_sl or hit_tp:
                    exit_price = p["sl"] if hit_sl else p["tp"]
                    pip = p["pip"]
                    p.update(
                        status="SL" if hit_sl else "TP",
                        close_price=exit_price,
                        pips=round((exit_price - p["open_price"]) / pip * (1 if buy else -1), 1),
                    )
                    closed.append(dict(p))
        return closed

    def ack(self, signal_id: str, ticket: int) -> None:
        """Tell the API the signal was taken (a few tries; the API dedupes acks)."""
        if not self.ack_url:
            return
        if self._ack_client is None:
            self._ack_client = httpx.Client(timeout=5.0, trust_env=False)
        headers = {"X-API-Key": self._ack_api_key} if self._ack_api_key else {}
        body = {"signal_id": signal_id, "ticket": ticket, "status": "FILLED", "message": "paper position opened"}
        for attempt in range(3):
            try:
                response = self._ack_client.post(self.ack_url, json=body, headers=headers)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning("Ack for %s refused by the API: %s", signal_id, response.status_code)
                    return
            except httpx.HTTPError as exc:
                log.warning("Ack for %s failed: %s", signal_id, exc.__class__.__name__)
            time.sleep(0.5 * (attempt + 1))

    def close(self) -> None:
        if self._ack_client is not None:
            self._ack_client.close()
        with self.lock:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None


def _closing(ea: PaperEA) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ea.close()

    return lifespan


def create_ea_app(api_key: str, **options: Any) -> Starlette:
    """The reference EA as an ASGI app; its state is ``app.state.ea``, a :class:`PaperEA` made
    with `options` (ack_url, ack_api_key, log_file, clock, pip_sizes)."""
    ea = PaperEA(api_key, **options)

    async def signals(request: Request) -> JSONResponse:
        with ea.lock:
            ea.requests += 1
        if not ea.key_ok(request):
            return _answer(401, success=False, message="invalid or missing X-API-Key")
        if not request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            return _answer(415, success=False, message="Content-Type must be application/json")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _answer(413, success=False, message=f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            return _answer(400, success=False, message="body is not valid JSON")
        if isinstance(body, dict) and body.get("probe") is True and "signal_id" not in body:
            with ea.lock:
                ea.probes += 1
            return _answer(200, success=True, probe=True, message="signals route ready")
        errors = validate_signal(body)
        if errors:
            return _answer(422, success=False, message="; ".join(errors))
        idem = request.headers.get("idempotency-key")
        if idem is not None and idem != body["signal_id"]:
            return _answer(400, success=False, message="Idempotency-Key does not match signal_id")
        with ea.lock:
            previous = ea.by_signal.get(body["signal_id"])
        if previous is None and ea.clock() >= parse_iso(body["expires_at"]):
            # Too late to trade. Answered with 200 + success:false, as an MQL5 EA usually does.
            return _answer(200, success=False, message=f"signal expired at {body['expires_at']}; not traded")
        answer, duplicate = ea.accept(body)
        if duplicate:
            return _answer(200, **answer, duplicate=True)
        log.info("Paper %s %s at %s: ticket %s", body["side"], body["symbol"], body["price"], answer["ticket"])
        task = BackgroundTask(ea.ack, body["signal_id"], answer["ticket"]) if ea.ack_url else None
        return JSONResponse(answer, background=task)

    async def health(request: Request) -> JSONResponse:
        with ea.lock:
            open_positions = sum(1 for p in ea.positions.values() if p["status"] == "OPEN")
            return _answer(200, status="ok", signals=len(ea.by_signal), open_positions=open_positions)

    async def positions(request: Request) -> JSONResponse:
        if not ea.key_ok(request):
            return _answer(401, success=False, message="invalid or missing X-API-Key")
        with ea.lock:
            return _answer(200, success=True, positions=[dict(p) for p in ea.positions.values()])

    async def prices(request: Request) -> JSONResponse:
        if not ea.key_ok(request):
            return _answer(401, success=False, message="invalid or missing X-API-Key")
        try:
            body = json.loads(await request.body())
            symbol, price = body["symbol"], body["price"]
            if (
                not isinstance(symbol, str)
                or isinstance(price, bool)
                or not (isinstance(price, int | float) and math.isfinite(price) and price > 0)
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return _answer(422, success=False, message='expected {"symbol": "EURUSD", "price": 1.0812}')
        return _answer(200, success=True, closed=ea.mark_price(symbol, float(price)))

    app = Starlette(
        routes=[
            Route("/signals", signals, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/positions", positions, methods=["GET"]),
            Route("/prices", prices, methods=["POST"]),
        ],
        lifespan=_closing(ea),
    )
    app.state.ea = ea
    return app


def serve(
    settings: Settings, *, host: str, port: int, ack_url: str | None = None, ticks_log: str | None = None
) -> None:
    """Run the reference EA under uvicorn (``mt5-pipeline ea-sim``)."""
    import uvicorn

    key = settings.effective_ea_api_key
    ack_key = settings.effective_api_keys[0] if settings.effective_api_keys else None
    app = create_ea_app(key, ack_url=ack_url, ack_api_key=ack_key, log_file=ticks_log, pip_sizes=settings.pip_sizes)
    log.info(
        "Reference EA (paper trading) on http://%s:%d/signals%s",
        host,
        port,
        f", acking to {ack_url}" if ack_url else "",
    )
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())
