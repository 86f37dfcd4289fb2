"""The bridge's calls to the API: POST /ingest, POST /ea/ack, GET /ea/signals, POST /ea/trades, POST /ea/reconcile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx


class ApiUnavailable(RuntimeError):
    """The API did not take the request (down, 5xx, timeout); try again later."""


class ApiRefused(RuntimeError):
    """The API answered 4xx: retrying the same request will not help (the message says why)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class ApiClient:
    def __init__(
        self, base_url: str, api_key: str, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"X-API-Key": api_key},
            timeout=timeout,
            trust_env=False,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"{method} {path}: {exc.__class__.__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise ApiUnavailable(f"{method} {path}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            details = body.get("details") if isinstance(body, dict) else None
            text = f"{method} {path}: HTTP {response.status_code} {error or ''}"
            if details:
                text += " " + "; ".join(f"{d.get('loc')}: {d.get('message')}" for d in details[:3])
            raise ApiRefused(response.status_code, text.strip())
        return body if isinstance(body, dict) else {}

    def ingest(
        self,
        symbol: str,
        timeframe: str,
        candles: Sequence[Mapping[str, object]],
        *,
        server_time_zone: str,
        partial: bool = True,
        instrument: Mapping[str, object] | None = None,
    ) -> dict:
        """Candles in the trade server's time, with its zone (the API converts them bar by
        bar); `partial`: the API stores the good ones and lists the refused ones;
        `instrument`: the symbol's digits and point, so the core knows its pip."""
        body = {
            "symbol": symbol,
            "timeframe": timeframe,
            "candles": list(candles),
            "server_time_zone": server_time_zone,
            "partial": partial,
            **(instrument or {}),
        }
        return self._call("POST", "/ingest", json=body)

    def ack(self, body: dict) -> dict:
        return self._call("POST", "/ea/ack", json=body)

    def pull(self, limit: int = 100) -> list[dict]:
        body = self._call("GET", "/ea/signals", params={"status": "PENDING", "limit": limit})
        signals = body.get("signals")
        return signals if isinstance(signals, list) else []

    def report_trades(self, trades: list[dict]) -> dict:
        return self._call("POST", "/ea/trades", json={"trades": trades})

    def reconcile(self, magic: int, account: int | None, positions: list[dict]) -> dict:
        return self._call("POST", "/ea/reconcile", json={"magic": magic, "account": account, "positions": positions})
