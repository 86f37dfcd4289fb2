"""Talking to the EA: one pooled HTTP client, an overall deadline per request, and every
answer classified into what the pusher should do next.

Outcomes (``SendOutcome.kind``):
- ``ok``: 2xx with ``{"success": true, "ticket": ...}``.
- ``retry``: connection refused, timeout, 5xx, 429 (and 408), or a 2xx the EA could not
  explain. ``ambiguous`` is set when the request may have reached the EA (a read timeout
  after sending, a dropped connection): the trade may exist, so it is only ever retried
  with the same ``signal_id``/``Idempotency-Key``.
- ``reject``: the EA answered and said no to this signal (``success: false``, 422, 400,
  413, ...): REJECTED with the EA's message.
- ``auth``: 401, our key is wrong; ``config``: 403, 404, 405, 415, the request cannot
  reach the EA's signals route as configured (wrong path, method, content type, a proxy
  that forbids it). Neither is the signal's fault: the pusher stops the cycle, leaves the
  signals PENDING without burning attempts, and says so loudly (``SendOutcome.config_error``).

``test_connection`` checks the signals route itself with a probe: ``POST {EA_SERVER_URL}``
with the body ``{"probe": true}`` (no ``signal_id``, so no EA can take it for a trade). The
reference EA answers it ``200 {"success": true, "probe": true}`` after checking the key and
content type; an EA that does not know probes refuses the body (400/422 or ``success:
false``), which still proves the route exists. 401/403/404/405/415 or a 5xx is "not connected",
with the status in the message.

The API key is sent, never logged or put in an error message.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from mt5_pipeline.delivery.ea_http import Answer, AnswerTimeout, ConnectFailed, ConnectionBroke, Wire
from mt5_pipeline.settings import Settings

log = logging.getLogger(__name__)

# Idle pooled connections are dropped after this long. It must be shorter than the EA's own
# idle timeout (uvicorn's default is 5 s, many embedded servers are similar), or we would
# reuse a socket the EA is closing and turn a clean send into an ambiguous one.
KEEPALIVE_EXPIRY_SECONDS = 4.0

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class SendOutcome:
    kind: str  # "ok" | "retry" | "reject" | "auth" | "config"
    status_code: int | None = None
    ticket: int | None = None
    error: str = ""
    ambiguous: bool = False  # the EA may have acted on it
    retry_after: float | None = None  # seconds, from a 429/503 Retry-After
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def config_error(self) -> bool:
        """A wrong key, path, method or content type: nothing will get through until fixed."""
        return self.kind in ("auth", "config")


# Answers that say the request, not the signal, is wrong. 401 has its own kind ("auth").
CONFIG_STATUSES = {
    403: "the EA forbids this request (403): check EA_API_KEY and any proxy in front of the EA",
    404: "the EA has no such route (404): check the path in EA_SERVER_URL",
    405: "the EA does not accept POST on this route (405): check the path in EA_SERVER_URL",
    415: "the EA refuses the content type (415): it must accept application/json",
}
PROBE_BODY = {"probe": True}


def make_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verification always on; EA_CA_BUNDLE adds the EA's self-signed CA."""
    context = ssl.create_default_context()
    if settings.ea_ca_bundle:
        try:
            context.load_verify_locations(cafile=settings.ea_ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"EA_CA_BUNDLE: cannot load {settings.ea_ca_bundle!r} as PEM certificates: {exc}"
            ) from None
    return context


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _ea_message(response: Answer) -> str:
    try:
        body = response.json()
    except ValueError:
        return _short(response.text) or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if body.get(key):
                return _short(str(body[key]))
    return _short(json.dumps(body))


def _retry_after(response: Answer) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None


class _Exchange(Protocol):
    def request(self, method: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer: ...

    def close(self) -> None: ...


class _HttpxExchange:
    """Requests through an httpx transport handed in (the API's tests pass one), their
    errors told apart as the wire tells them."""

    def __init__(self, url: str, transport: httpx.BaseTransport, headers: Mapping[str, str], timeout: float) -> None:
        self.url = url
        self._client = httpx.Client(
            transport=transport, timeout=httpx.Timeout(timeout), headers=dict(headers), follow_redirects=False,
            trust_env=False,
        )  # fmt: skip

    def request(self, method: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        try:
            response = self._client.request(method, self.url, content=body, headers=dict(headers))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectFailed(f"{exc.__class__.__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise AnswerTimeout(f"{exc.__class__.__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise ConnectionBroke(f"{exc.__class__.__name__}: {exc}") from exc
        headers_out = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status_code, response.reason_phrase, headers_out, response.content)

    def close(self) -> None:
        self._client.close()


class EAClient:
    """Pooled keep-alive connections to the EA (:mod:`mt5_pipeline.delivery.ea_http`).
    Thread-safe; close() when done."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.url = settings.ea_server_url
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.server = f"{parts.hostname}:{port}"
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = float(settings.ea_request_timeout)
        self._key = settings.effective_ea_api_key
        # Whether a key is sent at all (the pusher warns when not), without exposing it.
        self.has_key = bool(self._key)
        headers = {"User-Agent": "mt5-pipeline", **({"X-API-Key": self._key} if self._key else {})}
        # Redirects are never followed (one would re-send the key somewhere else), and no
        # HTTP(S)_PROXY meant for the internet can catch the LAN EA: the wire knows neither.
        self._exchange: _Exchange
        if transport is not None:
            self._exchange = _HttpxExchange(self.url, transport, headers, self.timeout)
        else:
            # A push round keeps up to SEND_LANES (4) requests in flight; the rest cover the
            # API's manual push and test-connection running beside the worker. Every lane
            # keeps its connection alive between rounds.
            self._exchange = Wire(
                self.url,
                ssl_context=make_ssl_context(settings),  # built even for http: a bad EA_CA_BUNDLE is named at start
                max_connections=8,
                keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
                headers=headers,
            )

    def __enter__(self) -> EAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._exchange.close()

    def _request(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """One POST within the overall deadline (EA_REQUEST_TIMEOUT); the body is read fully."""
        return self._exchange.request("POST", body, headers, self.timeout)

    def send(self, payload: dict) -> SendOutcome:
        """POST one signal; never raises for network or EA errors (they become outcomes)."""
        signal_id = str(payload.get("signal_id", ""))
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": signal_id}
        started = time.monotonic()

        def outcome(kind: str, **kw: Any) -> SendOutcome:
            return SendOutcome(kind, elapsed_s=time.monotonic() - started, **kw)

        try:
            response = self._request(body, headers)
        except ConnectFailed as exc:
            # Nothing reached the EA: a plain retry.
            return outcome("retry", error=f"cannot connect to the EA at {self.server}: {_short(str(exc))}")
        except AnswerTimeout as exc:
            return outcome(
                "retry",
                ambiguous=True,
                error=(
                    f"no answer from the EA within {self.timeout:g} s ({_short(str(exc))}); it may have acted, "
                    "retrying with the same signal_id"
                ),
            )
        except ConnectionBroke as exc:
            return outcome(
                "retry",
                ambiguous=True,
                error=f"connection to the EA broke: {_short(str(exc))}; retrying with the same signal_id",
            )

        code = response.status_code
        if code == 401:
            return outcome(
                "auth", status_code=code, error="the EA refused our API key (401): check EA_API_KEY on both sides"
            )
        if code in CONFIG_STATUSES:
            return outcome(
                "config", status_code=code, error=f"{CONFIG_STATUSES[code]} [{self.url}]: {_ea_message(response)}"
            )
        if code in (408, 429) or code >= 500:
            return outcome(
                "retry",
                status_code=code,
                retry_after=_retry_after(response),
                ambiguous=code >= 500,
                error=f"EA answered {code}: {_ea_message(response)}",
            )
        if 400 <= code < 500:
            return outcome("reject", status_code=code, error=f"EA refused the signal ({code}): {_ea_message(response)}")
        if not 200 <= code < 300:
            return outcome("retry", status_code=code, ambiguous=True, error=f"unexpected answer from the EA: {code}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
            return outcome(
                "retry",
                status_code=code,
                ambiguous=True,
                error=f'EA answered {code} without the expected JSON {{"success": ...}}: {_short(response.text)}',
            )
        if not data["success"]:
            return outcome("reject", status_code=code, error=f"EA refused the signal: {_ea_message(response)}")
        ticket = data.get("ticket")
        if isinstance(ticket, bool) or not isinstance(ticket, (int, type(None))):
            ticket = int(ticket) if isinstance(ticket, str) and ticket.isdigit() else None
        return outcome("ok", status_code=code, ticket=ticket)

    def test_connection(self) -> dict:
        """Probe the signals route (see the module docstring): the seed's response shape
        for /ea/test-connection, plus ``status_code`` when the EA answered."""
        result = {"connected": False, "ea_server": self.server, "ea_url": self.url, "message": ""}
        body = json.dumps(PROBE_BODY).encode()
        try:
            response = self._request(body, {"Content-Type": "application/json"})
        except AnswerTimeout:
            result["message"] = f"❌ EA at {self.server} did not answer within {self.timeout:g} s"
            return result
        except (ConnectFailed, ConnectionBroke) as exc:
            result["message"] = f"❌ Cannot connect to EA at {self.server}: {_short(str(exc))}"
            return result
        code = response.status_code
        result["status_code"] = code
        try:
            data = response.json()
        except ValueError:
            data = None
        if code == 401:
            result["message"] = "❌ EA refused the API key (401): check EA_API_KEY"
        elif code in CONFIG_STATUSES:
            result["message"] = f"❌ Not connected: {CONFIG_STATUSES[code]}"
        elif code >= 500 or code in (408, 429):
            result["message"] = f"❌ EA answered {code}: {_ea_message(response)}"
        elif 200 <= code < 300 and isinstance(data, dict) and data.get("probe") is True and data.get("success") is True:
            result["connected"] = True
            result["message"] = "✅ Connected"
        elif 200 <= code < 300 or code in (400, 422):
            # An EA that does not know probes refused the empty body: the route exists.
            result["connected"] = True
            result["message"] = (
                f"✅ Connected (the signals route answered {code} to a probe; the EA does not implement probes, so the "
                "key was not verified)"
            )
        else:
            result["message"] = f"❌ EA answered {code} on the signals route: {_ea_message(response)}"
        return result
