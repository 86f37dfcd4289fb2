"""Live workers on one host or several divide the series among themselves by leases.

No static map (a hash modulo a worker count every host must agree on): each series has a
lease row in the database; a worker holds the series it renews. Every ``lease/4``
seconds a worker

1. keeps its own row in ``live_workers`` alive and counts the live workers;
2. renews its leases (one UPDATE) -- a lease it lost (it stalled past the expiry and
   another took it) is dropped from what it decides;
3. takes free or expired series until it holds its share (the series over the live
   workers, rounded up), or gives back what it holds beyond it, so a worker that joins
   gets its share within a tick or two.

A worker that dies stops renewing: its leases expire ``LIVE_LEASE_SECONDS`` later and the
others take them on their next tick, deciding the newest ready bar of each at once. A
bar is decided once whatever happens: two workers that both believed they held a series
(one stalled past its lease) meet at the database's one-signal-per-bar index, and the
second gets "duplicate".
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable

from mt5_pipeline.clock import utcnow
from mt5_pipeline.storage import leases as rows

log = logging.getLogger(__name__)

Series = tuple[str, str]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SeriesLeases:
    """The series this worker holds, kept by :meth:`tick` (called every ``interval`` seconds)."""

    def __init__(
        self, database_url: str, *, lease_seconds: float, worker: str | None = None, share: bool = True
    ) -> None:
        self.database_url = database_url
        # share=False: only the heartbeat (a SQLite worker, one host): Dagster's sensor
        # still sees that a live worker is deciding the bars.
        self.share = share
        self.lease_seconds = lease_seconds
        self.worker = worker or new_worker_id()
        self.interval = max(0.05, lease_seconds / 4)
        self._owned: frozenset[Series] = frozenset()
        self._pending: set[Series] = set()  # gained since the worker last asked
        self._added: set[Series] = set()  # series whose lease row this worker has made sure of
        self._lock = threading.Lock()
        self.workers_alive = 1

    @property
    def owned(self) -> frozenset[Series]:
        return self._owned

    def owns(self, key: Series) -> bool:
        return key in self._owned

    def take_gained(self) -> set[Series]:
        """Series taken since the last call (the worker decides their newest bar at once)."""
        with self._lock:
            gained, self._pending = self._pending, set()
        return gained

    def tick(self, known: Iterable[Series] = ()) -> set[Series]:
        """One round of heartbeat, renew, take or give back; returns the series gained."""
        url, ttl = self.database_url, self.lease_seconds
        if not self.share:
            self.workers_alive = rows.heartbeat(url, self.worker, now=utcnow(), ttl=ttl)
            return set()
        new = set(known) - self._added
        if new:
            rows.add_series(url, new)
            self._added |= new
        now = utcnow()
        if now.second == 0 or not self._added:
            rows.heartbeat(url, self.worker, now=now, ttl=ttl)  # also clears rows of workers long gone
        self.workers_alive, held, total = rows.keep_alive(url, self.worker, now=now, ttl=ttl)
        share = math.ceil(total / max(1, self.workers_alive))
        if len(held) > share:
            extra = sorted(held)[share:]
            rows.release(url, self.worker, extra, now=now)
            held -= set(extra)
        elif len(held) < share:
            held |= rows.claim(url, self.worker, share - len(held), now=now, ttl=ttl)
        lost = self._owned - held
        gained = held - self._owned
        if gained or lost:
            log.info(
                "live worker %s: holds %d series (+%d, -%d), %d worker(s) alive",
                self.worker,
                len(held),
                len(gained),
                len(lost),
                self.workers_alive,
            )
        with self._lock:
            self._owned = frozenset(held)
            self._pending = (self._pending | gained) - lost
        return gained

    def stop(self) -> None:
        """Give every series back at once (a clean stop needs no expiry to be taken over)."""
        try:
            rows.release(self.database_url, self.worker, now=utcnow())
            rows.forget_worker(self.database_url, self.worker)
        except Exception as exc:  # the leases expire anyway
            log.warning(
                "live worker %s: leases not released (%s); they expire in %g s", self.worker, exc, self.lease_seconds
            )
        with self._lock:
            self._owned = frozenset()


class LeaseKeeper(threading.Thread):
    """Runs :meth:`SeriesLeases.tick` on its own thread, so a long pass never lets a lease lapse."""

    def __init__(
        self,
        leases: SeriesLeases,
        known: Callable[[], Iterable[Series]],
        stop: threading.Event,
        wake: threading.Event | None = None,
    ) -> None:
        super().__init__(name="live-leases", daemon=True)
        self.leases, self.known, self.stop_event, self.wake = leases, known, stop, wake

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.leases.tick(self.known()) and self.wake is not None:
                    self.wake.set()
            except Exception as exc:  # a database blip: the next tick retries, well inside the lease
                log.warning("live worker %s: lease tick failed (%s: %s)", self.leases.worker, type(exc).__name__, exc)
            self.stop_event.wait(self.leases.interval)
