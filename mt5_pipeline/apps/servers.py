"""Run an ASGI app under uvicorn in a background thread on loopback (demo, tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """A real HTTP server for `app` on `host:port`; a context manager, and restartable on
    the same port (tests take an EA down and bring it back)."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int | None = None, **config: Any) -> None:
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        # Extra uvicorn.Config options (lifespan, interface, ssl_certfile, ...).
        # A bounded graceful shutdown: idle keep-alive connections close at once, a request
        # in flight gets a few seconds, and the app's lifespan shutdown runs to its end.
        self.config = {
            "log_level": "warning",
            "lifespan": "on",
            "access_log": False,
            "timeout_graceful_shutdown": 5,
            **config,
        }
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config.get("ssl_certfile") else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, **self.config))
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.base_url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            # Not force_exit: that cancels the lifespan's shutdown half-way, and uvicorn
            # prints the CancelledError as an ERROR traceback (the demo's last screen).
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
