"""The live-signal worker as a process (`mt5-pipeline live`): until SIGTERM/SIGINT, one
process or LIVE_PROCESSES of them. The worker itself is
:class:`mt5_pipeline.signals.live.LiveWorker`."""

from __future__ import annotations

import logging
import threading

from mt5_pipeline.apps.workers import run_processes, run_until_stopped, stop_on_signals
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals.live import LiveWorker
from mt5_pipeline.signals.series_leases import SeriesLeases
from mt5_pipeline.storage.engine import dispose_engines
from mt5_pipeline.storage.notifications import notifications_supported

log = logging.getLogger("mt5_pipeline.signals.live")  # the live worker's lines, wherever its loop runs


def run_live_worker(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    listen: bool | None = None,
    shard: tuple[int, int] = (0, 1),
) -> int:
    """`mt5-pipeline live`: run until SIGTERM/SIGINT (or ``stop``); exit code 0.

    With LIVE_PROCESSES > 1 this process starts that many workers, each deciding the
    symbols that hash to it (a decision is mostly CPU in Python: one process per core
    lets two closing symbols be decided at once), and stops them with itself.
    """
    if settings.live_processes > 1 and shard == (0, 1):
        count = settings.live_processes
        return run_processes(_shard_main, [(settings, i, count) for i in range(count)], name="live")
    stop = stop or threading.Event()
    with stop_on_signals(stop, "Received %s: stopping the live worker"):
        worker = _start(settings, listen=listen, shard=shard)

        def step(stop: threading.Event) -> None:
            worker.run(stop, listen=listen)  # the worker's own loop: it returns once stopped

        run_until_stopped(step, stop)
    log.info("Live worker stopped")
    return 0


def _start(settings: Settings, *, listen: bool | None, shard: tuple[int, int]) -> LiveWorker:
    """The worker, with leases on PostgreSQL (any number of processes and hosts) or the
    hash shard on SQLite; logs how it runs."""
    leases = (
        SeriesLeases(settings.database_url, lease_seconds=settings.live_lease_seconds)
        if notifications_supported(settings.database_url)
        else None
    )
    worker = LiveWorker(settings, shard=(0, 1) if leases else shard, leases=leases)
    timeframes = worker.timeframes()
    log.info(
        "Live worker%s started: %s, grace %g s after each close%s",
        f" {leases.worker} (leases of {settings.live_lease_seconds:g} s)"
        if leases
        else f" {shard[0] + 1}/{shard[1]}"
        if shard[1] > 1
        else "",
        f"timeframes with a model: {', '.join(timeframes)}"
        if timeframes
        else "no model yet (waiting for the first training)",
        settings.live_close_grace_seconds,
        ", woken by LISTEN/NOTIFY"
        if notifications_supported(settings.database_url) and listen is not False
        else f", polling every {settings.live_poll_seconds:g} s",
    )
    return worker


def _shard_main(settings: Settings, index: int, count: int) -> None:
    """One of LIVE_PROCESSES workers, in its spawned process."""
    dispose_engines()  # never share the parent's pooled connections
    logging.basicConfig(level=settings.log_level, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    run_live_worker(settings, shard=(index, count))
