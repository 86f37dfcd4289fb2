"""The MetaTrader 5 terminal, through the official ``MetaTrader5`` package.

The package is a Windows-only wheel (``pip install .[mt5]``), so it is imported lazily:
everything else in the project installs and runs without it, and tests hand the bridge
the in-repo test double (:mod:`mt5_pipeline.bridge.fake_mt5`) instead.

The package talks to one terminal over one IPC channel and is not documented as
thread-safe, so every call goes through :class:`Terminal`, which holds one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mt5_pipeline.bridge.mt5_api import MT5, SymbolInfo
from mt5_pipeline.settings import Settings

log = logging.getLogger(__name__)


class TerminalError(RuntimeError):
    """The terminal could not be reached or refused a call; the message says which."""


def import_mt5() -> MT5:
    """The official package, or a clear error saying how to get it."""
    try:
        import MetaTrader5
    except ImportError:
        raise TerminalError(
            "the MetaTrader5 package is not installed: on the terminal's Windows machine run "
            "`pip install .[mt5]` (or `mt5-pipeline bridge --fake` to try the bridge without a terminal)"
        ) from None
    return MetaTrader5


class Terminal:
    """One connected terminal; ``call`` runs a package function under the lock."""

    def __init__(self, mt5: MT5) -> None:
        self.mt5 = mt5
        self.lock = threading.RLock()
        self._settings: Settings | None = None

    @contextmanager
    def session(self) -> Iterator[MT5]:
        """Hold the lock for several calls that belong together (read tick, then send)."""
        with self.lock:
            yield self.mt5

    def connect(self, settings: Settings) -> None:
        """``initialize`` (and ``login`` when an account is configured); raise TerminalError."""
        kwargs: dict[str, Any] = {}
        if settings.bridge_login is not None:
            kwargs["login"] = settings.bridge_login
            if settings.bridge_password:
                kwargs["password"] = settings.bridge_password
            if settings.bridge_server:
                kwargs["server"] = settings.bridge_server
        self._settings = settings
        with self.lock:
            args = (settings.bridge_terminal_path,) if settings.bridge_terminal_path else ()
            if not self.mt5.initialize(*args, **kwargs):
                code, text = self.last_error()
                # The password is in kwargs, never in the message.
                raise TerminalError(f"MetaTrader5.initialize failed: {code} {text}")
            info = self.mt5.terminal_info()
            if info is not None and not getattr(info, "trade_allowed", True):
                log.warning(
                    "Algo trading is disabled in the terminal (the AutoTrading / Algo Trading button): orders will be "
                    "refused"
                )

    def ensure(self) -> bool:
        """Attach again if the terminal went away (restarted, closed and reopened): the
        package's calls then fail with "No IPC connection" until ``initialize`` runs."""
        with self.lock:
            if self.mt5.terminal_info() is not None:
                return True
            if self._settings is None:
                return False
            code, text = self.last_error()
            log.warning("Lost the terminal (%s %s); attaching again", code, text)
            try:
                self.connect(self._settings)
            except TerminalError as exc:
                log.warning("%s", exc)
                return False
            return True

    def last_error(self) -> tuple[int, str]:
        err = self.mt5.last_error()
        try:
            code, text = err
            return int(code), str(text)
        except (TypeError, ValueError):
            return -1, str(err)

    def select(self, symbol: str) -> SymbolInfo | None:
        """``symbol_info``, adding the symbol to Market Watch first if needed (rates and
        ticks of a hidden symbol are not updated)."""
        with self.lock:
            info = self.mt5.symbol_info(symbol)
            if info is None:
                return None
            if not info.visible:
                self.mt5.symbol_select(symbol, True)
                info = self.mt5.symbol_info(symbol)
            return info

    def shutdown(self) -> None:
        with self.lock:
            self.mt5.shutdown()


TIMEFRAME_CONSTANTS = {
    "M1": "TIMEFRAME_M1",
    "M5": "TIMEFRAME_M5",
    "M15": "TIMEFRAME_M15",
    "M30": "TIMEFRAME_M30",
    "H1": "TIMEFRAME_H1",
    "H4": "TIMEFRAME_H4",
    "D1": "TIMEFRAME_D1",
    "W1": "TIMEFRAME_W1",
    "MN1": "TIMEFRAME_MN1",
}


def mt5_timeframe(mt5: MT5, timeframe: str) -> int:
    return int(getattr(mt5, TIMEFRAME_CONSTANTS[timeframe]))
