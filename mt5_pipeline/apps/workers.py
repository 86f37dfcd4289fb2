"""Running a worker as a process: until SIGTERM/SIGINT, and optionally as N spawned processes.

Written once for every long-running command (`mt5-pipeline push`, `mt5-pipeline live`):
the core keeps only the steps these loops call (``push_pending``, ``LiveWorker.run``).

- :func:`stop_on_signals`: SIGTERM and SIGINT set a ``threading.Event`` instead of
  raising, so the step in flight ends cleanly (a request finishes, claims are released);
  the previous handlers come back afterwards. Only the main thread may install handlers:
  elsewhere (a test running the worker in a thread) the caller's event alone stops it.
- :func:`run_until_stopped`: call a step, wait what it asks for (or until woken), repeat.
- :func:`run_processes`: N spawned processes running one target each, stopped with the
  parent; the first to exit ends them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How often the supervisor checks its children between signals.
SUPERVISOR_POLL_SECONDS = 0.5
# A child gets this long to finish its step in flight after SIGTERM.
CHILD_STOP_SECONDS = 30.0

# Waits up to the given seconds, or until the event is set (or something else wakes it).
Wait = Callable[[float, threading.Event], object]


@contextmanager
def stop_on_signals(stop: threading.Event, message: str | None = None) -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set ``stop`` while inside; ``message`` (with the signal's name as
    ``%s``) is logged at INFO the first time."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if message is not None and not stop.is_set():
                log.info(message, signal.Signals(signum).name)
            stop.set()

        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_until_stopped(
    step: Callable[[threading.Event], float | None],
    stop: threading.Event,
    *,
    wait: Wait | None = None,
) -> None:
    """Call ``step(stop)`` until ``stop`` is set. The step returns the seconds to wait
    before the next call (0: at once), or None to end the loop. ``wait`` may return early
    (a LISTEN/NOTIFY wake-up); it must return at once when ``stop`` is set. By default
    it waits on ``stop`` alone."""
    while not stop.is_set():
        idle = step(stop)
        if idle is None or stop.is_set():
            return
        if idle <= 0:
            continue
        if wait is None:
            stop.wait(idle)
        else:
            wait(idle, stop)


def run_processes(target: Callable[..., object], args: Sequence[tuple[Any, ...]], *, name: str) -> int:
    """Run ``target(*args[i])`` in ``len(args)`` spawned processes (named ``name-1``...)
    until SIGTERM/SIGINT or until one exits; then SIGTERM the rest and wait for them.

    Spawned, not forked: a child never shares the parent's threads, pooled database
    connections or locks. ``target`` must be importable (a module-level function).
    Exit code 1 if a child ended on its own with a failure, else 0."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=a, name=f"{name}-{i + 1}") for i, a in enumerate(args)]
    for p in procs:
        p.start()
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            while not stop.is_set() and all(p.is_alive() for p in procs):
                stop.wait(SUPERVISOR_POLL_SECONDS)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()  # SIGTERM: each finishes its step in flight
            for p in procs:
                p.join(CHILD_STOP_SECONDS)
    failed = [p.name for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if failed and not stop.is_set():
        log.error("%s worker process(es) %s exited; stopping", name, ", ".join(failed))
        return 1
    return 0
