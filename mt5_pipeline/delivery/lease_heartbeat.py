"""Keeping a claim's lease alive while its holder works on it.

A claim's lease is short (mt5_pipeline.delivery.pusher.LEASE_SECONDS), so a pusher that
dies gives its rows back within seconds; a live one renews it from a thread, so no request
in flight, however slow, lets another pusher take its rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from mt5_pipeline.signals import queue

log = logging.getLogger("mt5_pipeline.delivery.pusher")  # one logger for the whole push cycle


class LeaseHeartbeat:
    """Renews a claim's lease every third of it, in a thread, for as long as the round
    holds the claim: a request in flight (up to EA_REQUEST_TIMEOUT) never outlives it."""

    def __init__(self, database_url: str, claim_token: str, lease: float, clock: Callable[[], datetime]) -> None:
        self.database_url = database_url
        self.claim_token = claim_token
        self.lease = lease
        self.clock = clock
        self.held: set[int] | None = None  # ids still ours at the last renewal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mt5-lease-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        every = self.lease / 3.0
        while not self._stop.wait(every):
            try:
                self.held = queue.extend_lease(
                    self.database_url, self.claim_token, lease_seconds=self.lease, now=self.clock()
                )
            except Exception as exc:  # the database is unreachable: try again, the lease has slack
                log.warning("Renewing the lease failed (%s); trying again in %.1f s", exc.__class__.__name__, every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lease)
