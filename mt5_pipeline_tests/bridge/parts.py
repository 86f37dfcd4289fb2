"""The real parts a bridge unit test is built from: the stand-in terminal on a clock the
test holds, its server ahead of UTC; the bridge's SQLite store; signals as the pusher
sends them; and a scripted API on loopback that keeps what the bridge sent and answers
what the test says (the real API cannot be told to answer 429 or lose a report)."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mt5_pipeline.apps.servers import BackgroundServer
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.bridge.terminal import Terminal
from mt5_pipeline.execution.contract import parse_signal
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.settings import TIMEFRAME_SECONDS, Settings
from mt5_pipeline_tests.ea_server import make_signal

# A Wednesday in winter, half a minute into 10:00 UTC; the trade server runs at UTC+2.
NOW = datetime(2025, 1, 15, 10, 0, 30, tzinfo=timezone.utc)
OFFSET_S = 2 * 3600
MAGIC = 4242
KEY = "bridge-unit-key"
# The pip the pipeline decided for each instrument, carried in meta.pip_size.
PIPS = {"XAUUSD": 0.1, "USDJPY": 0.01, "US30": 1.0, "US500": 0.25, "USDHUF": 0.01, "DE40": 1.0}


def bridge_settings(tmp: Any, **env: str) -> Settings:
    base = {"DATABASE_URL": f"sqlite:///{tmp}/api.db", "BRIDGE_STORE": f"{tmp}/bridge.sqlite3"}
    return Settings.from_env({**base, **env}, env_file=None)


def connected(mt5: FakeMT5, settings: Settings) -> Terminal:
    terminal = Terminal(mt5)
    terminal.connect(settings)
    return terminal


def signal_body(
    symbol: str = "XAUUSD",
    side: str = "BUY",
    *,
    now: datetime = NOW,
    timeframe: str = "M1",
    bar: datetime | None = None,
    ttl: float = 600.0,
    sl_pips: float = 20,
    tp_pips: float = 40,
    **meta: Any,
) -> dict:
    """A signal for the bar that closed last before ``now``, as the pusher posts it."""
    length = TIMEFRAME_SECONDS[timeframe]
    if bar is None:
        bar = datetime.fromtimestamp((int(now.timestamp()) // length - 1) * length, tz=timezone.utc)
    body = make_signal(symbol, ts=bar, side=side, expires_at=now + timedelta(seconds=ttl), timeframe=timeframe)
    body.update(sl_pips=sl_pips, tp_pips=tp_pips)
    body["meta"].update({"pip_size": PIPS.get(symbol, 0.0001), **meta})
    return body


def signal_of(body: dict) -> Signal:
    signal, errors = parse_signal(body)
    assert signal is not None, errors
    return signal


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class ScriptedApi:
    """An HTTP peer on a loopback port: every request is kept in ``received``; each path
    answers the next of its scripted (status, body) answers, else its default."""

    DEFAULTS: dict[str, tuple[int, Any]] = {
        "/ingest": (200, {"rejected": 0, "errors": []}),
        "/ea/signals": (200, {"signals": []}),
        "/ea/reconcile": (200, {"unknown": [], "missing": []}),
    }

    def __init__(self) -> None:
        self.received: list[Call] = []
        self.scripted: dict[str, deque[tuple[int, Any]]] = defaultdict(deque)
        app = Starlette(routes=[Route("/{path:path}", self._answer, methods=["GET", "POST"])])
        self.server = BackgroundServer(app, lifespan="off")

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def answer(self, path: str, *answers: tuple[int, Any]) -> None:
        self.scripted[path].extend(answers)

    def calls(self, path: str) -> list[Call]:
        return [c for c in self.received if c.path == path]

    async def _answer(self, request: Request) -> JSONResponse:
        path = "/" + request.path_params["path"]
        raw = await request.body()
        body = json.loads(raw) if raw else None
        self.received.append(Call(request.method, path, dict(request.query_params), dict(request.headers), body))
        queue = self.scripted[path]
        status, answer = queue.popleft() if queue else self.DEFAULTS.get(path, (200, {}))
        return JSONResponse(answer, status_code=status)
