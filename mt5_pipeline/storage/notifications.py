"""Commit notifications: a writing transaction NOTIFYs a channel, a long-running worker
LISTENs on it and wakes at once (PostgreSQL; SQLite has none, its workers poll).

The pusher listens on the queue's channel (a signal was queued); the live worker on the
candles channel (a closed bar was committed). Notifications are a latency optimisation
only: each worker also polls, so a lost connection costs latency, never a signal.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection

from mt5_pipeline.storage.engine import is_postgres, psycopg_conninfo, redact

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 5.0
# Short slices so a stop request is seen promptly.
SLICE_SECONDS = 0.5


def notifications_supported(database_url: str) -> bool:
    """Whether commits on this database can wake a :class:`Listener`."""
    return is_postgres(database_url)


def notify(conn: Connection, channel: str, payload: str) -> None:
    """Notify `channel` when `conn`'s transaction commits: PostgreSQL delivers it then,
    never before the rows are visible and never for a rollback. Nothing on SQLite."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


class Listener:
    """LISTEN on one channel over its own autocommit connection (psycopg 3)."""

    def __init__(self, database_url: str, channel: str) -> None:
        self.database_url = database_url
        self.channel = channel
        self.conn: psycopg.Connection | None = None
        self._next_connect = 0.0

    def connect(self) -> bool:
        """Connect and LISTEN if not yet connected (rate-limited after a failure); True when listening."""
        if self.conn is not None:
            return True
        if time.monotonic() < self._next_connect:
            return False
        import psycopg  # only PostgreSQL listens: SQLite deployments never load the driver

        try:
            self.conn = conn = psycopg.connect(psycopg_conninfo(self.database_url), autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {self.channel}")
        except Exception as exc:
            self.close()
            self._next_connect = time.monotonic() + RECONNECT_SECONDS
            log.warning(
                "LISTEN %s on %s failed (%s); polling only for now",
                self.channel,
                redact(self.database_url),
                exc.__class__.__name__,
            )
            return False
        return True

    def wait(self, seconds: float, stop: threading.Event) -> list[str]:
        """Wait up to ``seconds`` for notifications; their payloads (empty on time-out or stop).

        Everything already delivered is returned at once: several commits, one wake-up.
        """
        end = time.monotonic() + max(0.0, seconds)
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return []
            if not self.connect() or self.conn is None:
                stop.wait(min(left, SLICE_SECONDS))
                continue
            try:
                got = [n.payload for n in self.conn.notifies(timeout=min(left, SLICE_SECONDS), stop_after=1)]
                if got:
                    got += [n.payload for n in self.conn.notifies(timeout=0.001)]
                    return got
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc.__class__.__name__)
                self.close()
        return []

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None
