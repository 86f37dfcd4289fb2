"""The bridge's background loops: steps run until the bridge stops, each failure logged.

A step that raises (the terminal connection or the API broke mid-call) must not end its
loop: the bridge keeps serving and the next round tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping


def run_cycles(
    stop: threading.Event,
    steps: Mapping[str, Callable[[], object]],
    pause: Callable[[], bool | None],
    log: logging.Logger,
) -> None:
    """Run every step (named for the log) in order, then ``pause``, until ``stop`` is set
    or ``pause`` returns True."""
    while not stop.is_set():
        for name, step in steps.items():
            try:
                step()
            except Exception:
                log.exception("%s failed", name)
        if pause():
            return
