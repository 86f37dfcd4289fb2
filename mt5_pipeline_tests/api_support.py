"""Shared helpers for the API tests (test_api_*.py): a client on the real app, and bars."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from mt5_pipeline.api.main import create_app
from mt5_pipeline.apps.servers import free_port  # noqa: F401 - re-exported for the API tests
from mt5_pipeline.settings import Settings
from mt5_pipeline_tests import ROOT

API_KEY = "test-key-one"
OTHER_KEY = "test-key-two"  # a second key, as during a rotation
KEYS = f"{API_KEY},{OTHER_KEY}"
AUTH = {"X-API-Key": API_KEY}
REPO = ROOT


@asynccontextmanager
async def api_client(settings: Settings, *, auth: bool = True, **app_kwargs) -> AsyncIterator[httpx.AsyncClient]:
    """httpx against the app in this process (no lifespan: the app builds what it needs lazily)."""
    app = create_app(settings, **app_kwargs)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    headers = AUTH if auth else {}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", headers=headers, timeout=60
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        app.state.api.close()


def bars(
    n: int, *, end: datetime | None = None, timeframe_seconds: int = 60, start_price: float = 1.08, step: float = 0.0001
) -> list[dict]:
    """`n` valid, aligned, closed bars ending before `end` (default: now), as MqlRates dicts."""
    end = end or datetime.now(timezone.utc)
    last_open = int(end.timestamp()) // timeframe_seconds * timeframe_seconds - timeframe_seconds
    first = last_open - (n - 1) * timeframe_seconds
    out = []
    price = start_price
    for i in range(n):
        o = price
        c = price + (step if i % 3 else -step)
        out.append(
            {
                "time": first + i * timeframe_seconds,
                "open": round(o, 5),
                "high": round(max(o, c) + step, 5),
                "low": round(min(o, c) - step, 5),
                "close": round(c, 5),
                "tick_volume": 50 + i % 7,
                "spread": 2,
                "real_volume": 0,
            }
        )
        price = c
    return out


def make_signal(
    symbol: str = "EURUSD", *, minutes_ago: int = 1, expires_in: float = 600, version: str = "v-test"
) -> dict:
    """An EA payload as the signal generator builds it, for a bar `minutes_ago` back."""
    from mt5_pipeline.clock import iso_z

    now = datetime.now(timezone.utc)
    bar = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    return {
        "signal_id": str(uuid.uuid4()),
        "timestamp": iso_z(bar),
        "symbol": symbol,
        "timeframe": "M1",
        "side": "BUY",
        "confidence": 0.7,
        "sl_pips": 20,
        "tp_pips": 40,
        "price": 1.08,
        "meta": {"model": "rf_m1", "label": 1, "model_version": version, "probability": 0.7},
        "expires_at": iso_z(now + timedelta(seconds=expires_in)),
    }


def subprocess_env(**env: str) -> dict[str, str]:
    """A clean environment for a child `mt5-pipeline` (no developer .env leaks in)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("API_", "EA_", "DATABASE_", "MT5_", "METRICS_", "SIGNAL_", "MODEL_", "BRIDGE_"))
    }
    base.update(env)
    return base


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("mt5-pipeline")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mt5_pipeline.apps.cli"]


@contextmanager
def serve_process(
    env: dict[str, str], port: int, cwd: Path, *, wait: float = 30.0
) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real `mt5-pipeline serve` on loopback, stopped at exit."""
    log_path = cwd / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cli(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + wait
            while True:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
                    )
                try:
                    httpx.get(base + "/health", timeout=2)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"serve did not answer in {wait} s:\n{log_path.read_text(errors='replace')}"
                        ) from None
                    time.sleep(0.1)
            yield proc, base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class TcpProxy:
    """A loopback TCP forwarder in front of a real server, to take it "down" and bring it
    back on the same address: stop() refuses new connections and cuts the open ones (as a
    database restart does); start() listens again."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        import threading

        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
