"""The stand-in terminal's process and IPC connection: ``initialize`` (fails when the
terminal is "not running"), ``login``, ``shutdown``, ``last_error`` and ``terminal_info``.
The market, the positions and the orders build on it (:mod:`mt5_pipeline.bridge.fake_mt5`)."""

from __future__ import annotations

import threading
from typing import Any

from mt5_pipeline.bridge.fake_mt5_types import RES_S_OK, TerminalInfo


class FakeConnection:
    def __init__(self) -> None:
        self.initialized = False
        self.available = True  # False: the terminal is not running (initialize fails)
        self.trade_allowed = True
        self.calls: list[tuple] = []
        self._error: tuple[int, str] = (RES_S_OK, "Success")
        # Orders, fed bars and quotes come from different threads (the bridge, the test).
        self._lock = threading.Lock()

    def _not_connected(self) -> bool:
        """True (and last_error says so) when initialize has not succeeded."""
        if not self.initialized:
            self._error = (-10004, "No IPC connection")
            return True
        return False

    def initialize(self, path: str | None = None, **kwargs: Any) -> bool:
        self.calls.append(("initialize", path, {k: ("***" if k == "password" else v) for k, v in kwargs.items()}))
        if not self.available:
            self._error = (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")
            return False
        self.initialized = True
        self._error = (RES_S_OK, "Success")
        return True

    def login(self, login: int, password: str = "", server: str = "", timeout: int = 60000) -> bool:
        self.calls.append(("login", login, server))
        return self.initialized

    def shutdown(self) -> None:
        self.initialized = False

    def last_error(self) -> tuple[int, str]:
        return self._error

    def version(self) -> tuple[int, int, str]:
        return (500, 4000, "fake")

    def terminal_info(self) -> TerminalInfo | None:
        if self._not_connected():
            return None
        return TerminalInfo(True, self.trade_allowed, "FakeMT5", "fake")
