"""`mt5-pipeline bridge`: the process beside the MetaTrader 5 terminal.

- bars in: :mod:`.bars` posts each closed bar to ``POST /ingest``, catching up after
  a restart or an API outage;
- signals in: :mod:`.http` serves the seed's ``POST /signals`` (push mode), or
  :mod:`.poller` polls ``GET /ea/signals`` (pull mode);
- orders: :mod:`.executor` and :mod:`.orders` place them through the terminal
  (:mod:`.terminal`), deduped by ``signal_id`` in :mod:`.store`;
- acks: :mod:`.acks` posts each outcome to ``POST /ea/ack`` until the API takes it;
- positions: :mod:`.positions` applies the core's execution policy (which signals open,
  the time exit at bar close), :mod:`.trade_reports` reports each position's open and
  close from the deals history to ``POST /ea/trades``, and :mod:`.reconcile` compares the
  terminal's positions with the API's open trades at start and every minute.

:class:`Bridge` wires them together; ``mt5_pipeline.bridge.fake_mt5`` is a stand-in
terminal for tests and ``--fake``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import cast

import httpx

from mt5_pipeline.bridge.acks import AckSender
from mt5_pipeline.bridge.bars import BarFeeder
from mt5_pipeline.bridge.client import ApiClient
from mt5_pipeline.bridge.executor import Executor
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.bridge.http import create_bridge_app
from mt5_pipeline.bridge.mt5_api import MT5
from mt5_pipeline.bridge.orders import OrderSettings
from mt5_pipeline.bridge.poller import Poller
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.bridge.reconcile import Reconciler, run_positions
from mt5_pipeline.bridge.server_clock import server_to_utc
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import Terminal, TerminalError, import_mt5
from mt5_pipeline.bridge.trade_reports import TradeReporter
from mt5_pipeline.clock import iso_z, utcnow
from mt5_pipeline.execution.execution_policy import ExecutionPolicy
from mt5_pipeline.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Bridge"]


class Bridge:
    """Every part of the bridge for one terminal, built from the settings.

    ``start()`` runs the loops in daemon threads (bars, acks, and the poller in pull
    mode); ``app`` is the ASGI app for ``POST /signals`` and ``GET /health``, which the
    caller serves (``run_bridge`` under uvicorn, tests on a loopback port).
    """

    def __init__(
        self,
        settings: Settings,
        mt5: MT5,
        *,
        clock: Callable[[], datetime] = utcnow,
        api_transport: httpx.BaseTransport | None = None,
        connect: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.terminal = Terminal(mt5)
        if connect:
            self.terminal.connect(settings)
        self.store = BridgeStore(settings.bridge_store)
        self.api = ApiClient(
            settings.bridge_api_url,
            settings.effective_bridge_api_key,
            timeout=settings.ea_request_timeout,
            transport=api_transport,
        )
        self.acks = AckSender(self.api, self.store)
        cfg = OrderSettings(
            lots=settings.bridge_lots,
            magic=settings.bridge_magic,
            deviation=settings.bridge_deviation,
            pip_sizes=settings.pip_sizes,
            risk_percent=settings.bridge_risk_percent,
        )
        self.bars = BarFeeder(
            self.terminal,
            self.api,
            self.store,
            settings.bridge_symbols,
            settings.bridge_timeframes,
            settings.bridge_history_bars,
            settings.bridge_utc_offset_hours,
            settings.bridge_server_time_zone,
            clock=clock,
        )
        to_utc = self.server_to_utc
        self.positions = PositionKeeper(
            self.terminal, self.store, cfg, ExecutionPolicy.from_settings(settings), to_utc=to_utc, clock=clock
        )
        self.executor = Executor(
            self.terminal, self.store, cfg, clock=clock, on_ack=self.acks.wake.set, positions=self.positions
        )
        self.trade_reports = TradeReporter(
            self.terminal, self.api, self.store, settings.bridge_magic, to_utc=to_utc, clock=clock
        )
        self.reconciler = Reconciler(self.positions, self.trade_reports)
        self.poller = Poller(self.api, self.executor, self.acks, interval=settings.bridge_poll_interval)
        self.app = create_bridge_app(
            self.executor, settings.effective_ea_api_key, self.health, push=settings.bridge_mode == "push"
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def server_to_utc(self, server_times: Iterable[int]) -> list[int] | None:
        """Deal, position and bar times of the terminal in UTC (one rule: :mod:`.server_clock`)."""
        return server_to_utc(self.bars, server_times)

    def run_positions(self, stop: threading.Event) -> None:
        run_positions(stop, self.positions, self.reconciler, clock=self.clock)

    def start(self) -> Bridge:
        loops: list[tuple[str, Callable[[threading.Event], None]]] = [
            ("bars", self.bars.run),
            ("acks", self.acks.run),
            ("positions", self.run_positions),
        ]
        if self.settings.bridge_mode == "pull":
            loops.append(("poll", self.poller.run))
        for name, loop in loops:
            thread = threading.Thread(target=loop, args=(self._stop,), name=f"bridge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.acks.wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def close(self) -> None:
        self.stop()
        self.api.close()
        self.store.close()
        try:
            self.terminal.shutdown()
        except Exception:  # the terminal may already be gone
            log.debug("terminal shutdown failed", exc_info=True)

    def health(self) -> tuple[int, dict]:
        """200 when the terminal is connected; the state of bars, signals and acks."""
        with self.terminal.session() as mt5:
            info = mt5.terminal_info()
        connected = bool(info is not None and getattr(info, "connected", False))
        trade_allowed = bool(info is not None and getattr(info, "trade_allowed", False))
        bars = {
            f"{symbol} {tf}": {
                "last_bar": iso_z(datetime.fromtimestamp(s.last_bar, tz=self.clock().tzinfo))
                if s.last_bar is not None
                else None,
                "error": s.last_error or None,
                # Bars the API refused and the feed moved past (partial ingest).
                "skipped": s.bars_skipped,
                **({"last_skipped": s.last_skipped} if s.last_skipped else {}),
            }
            for (symbol, tf), s in self.bars.status.items()
        }
        counts = self.store.counts()
        body = {
            "status": "ok" if connected else "degraded",
            "mode": self.settings.bridge_mode,
            "terminal": "connected" if connected else "disconnected",
            "trade_allowed": trade_allowed,
            "api": "unreachable"
            if (self.acks.last_error or self.poller.last_error or any(s.api_error for s in self.bars.status.values()))
            else "ok",
            "bars": bars,
            "signals": {k: v for k, v in counts.items() if k != "acks_pending"},
            "acks_pending": counts["acks_pending"],
            "bars_skipped": sum(s.bars_skipped for s in self.bars.status.values()),
            "server_time_zone": self.settings.bridge_server_time_zone or "auto",
            **self._positions_health(),
        }
        return (200 if connected else 503), body

    def _positions_health(self) -> dict:
        try:
            held: int | None = len(self.positions.terminal_positions())
        except TerminalError:
            held = None
        reports = self.store.report_counts()
        return {
            "positions": {
                "open": held, "time_exits": self.positions.time_exits_done,
                "opposite_signal_closes": self.positions.opposite_closes_done,
                "error": self.positions.last_error or None,
            },
            "trade_reports": {
                "pending": reports["pending"], "closed_reported": reports["closed_reported"],
                "error": self.trade_reports.last_error or None,
            },
            "reconciliation": self.reconciler.status.as_dict(),
        }  # fmt: skip


def run_bridge(settings: Settings, *, fake: bool = False) -> int:
    """``mt5-pipeline bridge``: connect, start the loops, serve until Ctrl-C."""
    import uvicorn  # the server only for the command that serves

    if fake:
        # The double sets the package's constants on its class at import, where mypy cannot see them.
        mt5 = cast(MT5, FakeMT5(symbols=settings.bridge_symbols))
        log.warning("--fake: a simulated terminal, no real orders")
    else:
        try:
            mt5 = import_mt5()
        except TerminalError as exc:
            log.error("%s", exc)
            return 2
    if not settings.effective_bridge_api_key:
        log.error("bridge not started: BRIDGE_API_KEY is empty (set it to one of the API's API_KEYS)")
        return 2
    try:
        bridge = Bridge(settings, mt5)
    except (TerminalError, ValueError) as exc:
        log.error("bridge not started: %s", exc)
        return 2
    bridge.start()
    log.info(
        "MT5 bridge: %s mode, bars of %s %s to %s, signals on http://%s:%d/signals",
        settings.bridge_mode,
        ",".join(settings.bridge_symbols),
        ",".join(settings.bridge_timeframes),
        settings.bridge_api_url,
        settings.bridge_host,
        settings.bridge_port,
    )
    try:
        uvicorn.run(
            bridge.app, host=settings.bridge_host, port=settings.bridge_port, log_level=settings.log_level.lower()
        )
    finally:
        bridge.close()
    return 0
