"""Acks to POST /ea/ack, from the store's outbox, retried until the API takes them.

An ack is written in the same transaction as the outcome it reports, so a bridge
restart or an API outage only delays it. Retries back off from 1 s to a minute. A 404
(the API never queued that signal_id: a hand-made signal, or another database) or a 422
cannot succeed by repeating, so it is logged and dropped; everything else is retried.
"""

from __future__ import annotations

import logging
import threading
import time

from mt5_pipeline.bridge.client import ApiClient, ApiRefused, ApiUnavailable
from mt5_pipeline.bridge.cycles import run_cycles
from mt5_pipeline.bridge.store import BridgeStore

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


def backoff(attempts: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** max(0, attempts))


class AckSender:
    def __init__(self, api: ApiClient, store: BridgeStore) -> None:
        self.api = api
        self.store = store
        self.wake = threading.Event()
        self.last_error = ""

    def send_due(self, now: float | None = None) -> int:
        """Send every due ack once; the number the API took."""
        now = time.time() if now is None else now
        taken = 0
        for row in self.store.due_acks(now):
            try:
                self.api.ack(row["body"])
            except ApiRefused as exc:
                if exc.status_code in (404, 422):
                    log.warning("Ack for %s dropped: %s", row["signal_id"], exc)
                    self.store.ack_done(row["signal_id"], note=str(exc))
                    continue
                self._retry(row, str(exc), now)
                continue
            except ApiUnavailable as exc:
                self._retry(row, str(exc), now)
                continue
            self.store.ack_done(row["signal_id"])
            self.last_error = ""
            taken += 1
        return taken

    def _retry(self, row: dict, error: str, now: float) -> None:
        self.last_error = error
        delay = backoff(row["attempts"])
        log.warning("Ack for %s not taken (%s); retrying in %.0f s", row["signal_id"], error, delay)
        self.store.ack_retry(row["signal_id"], error, now + delay)

    def run(self, stop: threading.Event) -> None:
        run_cycles(stop, {"Ack cycle": self.send_due}, self._pause, log)

    def _pause(self) -> None:
        """Until the next ack is due (at most 5 s), or sooner when an outcome wakes it."""
        nxt = self.store.next_ack_at()
        delay = 5.0 if nxt is None else max(0.05, min(5.0, nxt - time.time()))
        self.wake.wait(delay)
        self.wake.clear()
