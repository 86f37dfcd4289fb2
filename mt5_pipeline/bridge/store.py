"""The bridge's own small SQLite file: what it executed, acks not yet taken, bars sent.

Local on purpose: it must survive the API being down and the bridge restarting, and it
is what stops a signal being traded twice. One connection, one lock (the bridge's few
threads write rarely); WAL so a crash leaves a consistent file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from mt5_pipeline.trade_signal import Signal

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    signal_id   TEXT PRIMARY KEY,
    symbol      TEXT NOT NULL,
    side        TEXT NOT NULL,
    status      TEXT NOT NULL,          -- SENDING (order_send in flight), RETRY (not placed yet: look up, then send again), FILLED, REJECTED, EXPIRED
    ticket      INTEGER,
    retcode     INTEGER,
    message     TEXT NOT NULL DEFAULT '',
    answer      TEXT,                   -- the JSON answer, returned again to a repeat
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS acks (
    signal_id     TEXT PRIMARY KEY,
    body          TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    acked_at      REAL,
    last_error    TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS bars_sent (
    symbol     TEXT NOT NULL,
    timeframe  TEXT NOT NULL,
    last_time  INTEGER NOT NULL,        -- open time (UTC epoch s) of the newest bar the API took
    PRIMARY KEY (symbol, timeframe)
);
"""


class BridgeStore:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a FILLED row must be on disk before the answer
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- executions ---------------------------------------------------------------
    def execution(self, signal_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM executions WHERE signal_id = ?", (signal_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["answer"] = json.loads(out["answer"]) if out["answer"] else None
        return out

    def begin(self, signal: Signal) -> None:
        """Record that ``order_send`` is about to run (a crash after this is reconciled
        from the terminal's history, never re-sent blindly)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO executions (signal_id, symbol, side, status, created_at, updated_at) VALUES (?, ?, ?, 'SENDING', ?, ?) "
                "ON CONFLICT(signal_id) DO UPDATE SET status = 'SENDING', updated_at = excluded.updated_at",
                (signal.signal_id, signal.symbol, signal.side, now, now),
            )

    def retry_later(self, signal_id: str, retcode: int | None, message: str) -> None:
        """The terminal said "not now" (or lost its answer and has no such order): nothing
        final, no ack; the next try looks the order up and then sends again."""
        with self._lock:
            self._db.execute(
                "UPDATE executions SET status = 'RETRY', retcode = ?, message = ?, updated_at = ? WHERE signal_id = ?",
                (retcode, message, time.time(), signal_id),
            )

    def finish(self, signal: Signal, status: str, *, ticket: int | None, retcode: int | None, message: str, answer: dict, ack: dict) -> None:
        """The outcome and its ack, in one transaction: no outcome without an ack to send."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    """INSERT INTO executions (signal_id, symbol, side, status, ticket, retcode, message, answer, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(signal_id) DO UPDATE SET status=excluded.status, ticket=excluded.ticket, retcode=excluded.retcode,
                           message=excluded.message, answer=excluded.answer, updated_at=excluded.updated_at""",
                    (signal.signal_id, signal.symbol, signal.side, status, ticket, retcode, message, json.dumps(answer), now, now),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO acks (signal_id, body, attempts, next_attempt, acked_at, last_error) VALUES (?, ?, 0, ?, NULL, '')",
                    (signal.signal_id, json.dumps(ack), now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM executions GROUP BY status").fetchall()
            pending = self._db.execute("SELECT COUNT(*) FROM acks WHERE acked_at IS NULL").fetchone()[0]
        out = {status: int(n) for status, n in rows}
        out["acks_pending"] = int(pending)
        return out

    # ---- acks ---------------------------------------------------------------------
    def due_acks(self, now: float, limit: int = 50) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT signal_id, body, attempts FROM acks WHERE acked_at IS NULL AND next_attempt <= ? ORDER BY next_attempt LIMIT ?", (now, limit)
            ).fetchall()
        return [{"signal_id": r["signal_id"], "body": json.loads(r["body"]), "attempts": r["attempts"]} for r in rows]

    def next_ack_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt) FROM acks WHERE acked_at IS NULL").fetchone()
        return row[0]

    def ack_done(self, signal_id: str, note: str = "") -> None:
        with self._lock:
            self._db.execute("UPDATE acks SET acked_at = ?, last_error = ? WHERE signal_id = ?", (time.time(), note, signal_id))

    def ack_retry(self, signal_id: str, error: str, next_attempt: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE acks SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE signal_id = ?", (next_attempt, error[:500], signal_id)
            )

    def ack_row(self, signal_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM acks WHERE signal_id = ?", (signal_id,)).fetchone()
        return dict(row) if row else None

    # ---- bars ---------------------------------------------------------------------
    def last_bar(self, symbol: str, timeframe: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT last_time FROM bars_sent WHERE symbol = ? AND timeframe = ?", (symbol, timeframe)).fetchone()
        return None if row is None else int(row[0])

    def set_last_bar(self, symbol: str, timeframe: str, last_time: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO bars_sent (symbol, timeframe, last_time) VALUES (?, ?, ?) "
                "ON CONFLICT(symbol, timeframe) DO UPDATE SET last_time = MAX(last_time, excluded.last_time)",
                (symbol, timeframe, int(last_time)),
            )


