"""The pusher worker (`mt5-pipeline push`, `api/run_ea_pusher.py`): push cycles until stopped.

A cycle every EA_PUSH_INTERVAL seconds, sooner when a retry falls due, at once on NOTIFY
with PostgreSQL. With EA_PUSH_ENABLED=false (pull mode) it sends nothing but still
expires: signals past their deadline become EXPIRED about every second, whatever the
delivery mode -- this worker is where expiry runs. The cycle itself is
:func:`mt5_pipeline.delivery.pusher.push_pending`.
"""

from __future__ import annotations

import logging
import threading

from mt5_pipeline.apps.workers import run_until_stopped, stop_on_signals
from mt5_pipeline.delivery.ea_client import EAClient
from mt5_pipeline.delivery.pusher import PushResult, idle_seconds, push_pending
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals import queue
from mt5_pipeline.storage.notifications import Listener, notifications_supported

log = logging.getLogger("mt5_pipeline.delivery.pusher")  # the pusher's lines, wherever its loop runs

# Pull mode: how often the worker turns PENDING signals past their deadline into EXPIRED.
PULL_EXPIRY_SECONDS = 1.0


class PushWorker:
    """The steps of the worker loop; :func:`run_push_worker` runs them."""

    def __init__(self, settings: Settings, client: EAClient, *, lease_seconds: float | None) -> None:
        self.settings = settings
        self.client = client
        self.lease_seconds = lease_seconds
        self.idle_logged = False
        self.exit_code = 0

    def step(self, stop: threading.Event) -> float:
        """One cycle; returns the seconds to wait before the next."""
        if not self.settings.ea_push_enabled:
            self.expire_only()
            return PULL_EXPIRY_SECONDS
        result: PushResult | None
        try:
            result = push_pending(self.settings, client=self.client, lease_seconds=self.lease_seconds, stop=stop)
        except Exception as exc:
            log.exception(
                "Push cycle failed (%s); trying again in %g s", exc.__class__.__name__, self.settings.ea_push_interval
            )
            result = None
        self.exit_code = 1 if result is None or result.auth_error or result.config_error else 0
        try:
            return idle_seconds(self.settings, result)
        except Exception:
            return self.settings.ea_push_interval

    def expire_only(self) -> None:
        """Pull mode: nothing is pushed, but what passes its deadline still becomes EXPIRED."""
        if not self.idle_logged:
            log.info(
                "EA_PUSH_ENABLED=false: not pushing (pull mode: the EA polls GET /ea/signals); expiring what passes "
                "its deadline"
            )
            self.idle_logged = True
        self.exit_code = 0
        try:
            expired = queue.expire_stale(self.settings.database_url)
            if expired:
                log.warning("%d signals passed their deadline unacknowledged (pull mode): EXPIRED", expired)
        except Exception as exc:
            log.warning("Expiring signals failed (%s); trying again shortly", exc.__class__.__name__)


def run_push_worker(
    settings: Settings,
    *,
    once: bool = False,
    lease_seconds: float | None = None,
    stop: threading.Event | None = None,
    listen: bool | None = None,
) -> int:
    """Push cycles until SIGTERM/SIGINT (or ``stop``): the request in flight finishes,
    unsent claims are released, exit code 0. ``once``: one cycle; exit code 1 if it failed
    or the EA refused the key. ``listen`` defaults to on for PostgreSQL."""
    stop = stop or threading.Event()
    # httpx logs every request at INFO; the pusher logs one line per signal itself.
    if logging.getLogger("httpx").level == logging.NOTSET:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    use_listen = notifications_supported(settings.database_url) if listen is None else listen
    listener = Listener(settings.database_url, queue.NOTIFY_CHANNEL) if use_listen and not once else None
    client = EAClient(settings)
    log.info(
        "EA pusher started: EA %s, every %g s, batch %d%s",
        client.url,
        settings.ea_push_interval,
        settings.ea_batch_size,
        ", woken by LISTEN/NOTIFY" if listener else "",
    )
    if not client.has_key:
        log.warning("EA_API_KEY is empty: the EA will likely refuse every signal (401)")
    worker = PushWorker(settings, client, lease_seconds=lease_seconds)
    try:
        with stop_on_signals(stop, "Received %s: finishing the request in flight, then stopping"):
            if once:
                worker.step(stop)
                return worker.exit_code
            run_until_stopped(worker.step, stop, wait=listener.wait if listener is not None else None)
    finally:
        client.close()
        if listener is not None:
            listener.close()
    log.info("EA pusher stopped")
    return 0
