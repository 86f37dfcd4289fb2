"""The bridge's own small SQLite file: what it executed, acks not yet taken, bars sent,
the positions it opened (what the execution policy needs to know about each), and the
trade reports not yet taken by the API with the deals history's cursor (docs/trades.md).

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

from mt5_pipeline.execution.trade_signal import Signal

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    signal_id   TEXT PRIMARY KEY,
    symbol      TEXT NOT NULL,
    side        TEXT NOT NULL,
    -- SENDING (order_send in flight), RETRY (not placed yet: look up, then send again), FILLED, REJECTED, EXPIRED
    status      TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS positions (
    ticket        INTEGER PRIMARY KEY,  -- the position's ticket (POSITION_IDENTIFIER)
    signal_id     TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    timeframe     TEXT NOT NULL,
    side          TEXT NOT NULL,
    entry_bar     INTEGER NOT NULL,     -- open time (UTC epoch s) of the bar it entered at: the signal's bar + 1
    entry_policy  TEXT NOT NULL,        -- the policy the signal carried (meta.entry_policy)
    max_hold_bars INTEGER NOT NULL,
    sl            REAL,
    tp            REAL,
    close_reason  TEXT,                 -- written before the bridge closes it (time, opposite_signal)
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trade_reports (
    ticket        INTEGER PRIMARY KEY,  -- outbox: the newest report per position
    state         TEXT NOT NULL,        -- open | closed (what the body says; a closed one is final)
    body          TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    sent_at       REAL,
    last_error    TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS cursors (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
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
                "INSERT INTO executions (signal_id, symbol, side, status, created_at, updated_at) VALUES (?, ?, ?, "
                "'SENDING', ?, ?) "
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

    def finish(
        self,
        signal: Signal,
        status: str,
        *,
        ticket: int | None,
        retcode: int | None,
        message: str,
        answer: dict,
        ack: dict,
        position: dict | None = None,
    ) -> None:
        """The outcome and its ack, in one transaction: no outcome without an ack to send,
        and no position the bridge opened without what the policy needs to know of it."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    """INSERT INTO executions
                           (signal_id, symbol, side, status, ticket, retcode, message, answer, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(signal_id) DO UPDATE SET status=excluded.status, ticket=excluded.ticket,
                           retcode=excluded.retcode, message=excluded.message, answer=excluded.answer,
                           updated_at=excluded.updated_at""",
                    (
                        signal.signal_id,
                        signal.symbol,
                        signal.side,
                        status,
                        ticket,
                        retcode,
                        message,
                        json.dumps(answer),
                        now,
                        now,
                    ),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO acks (signal_id, body, attempts, next_attempt, acked_at, last_error) "
                    "VALUES (?, ?, 0, ?, NULL, '')",
                    (signal.signal_id, json.dumps(ack), now),
                )
                if position is not None:
                    self._put_position(position, now)
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
    def _due(self, query: str, now: float, limit: int) -> list[dict]:
        """The outbox rows `query` finds due at `now` (at most `limit`), their JSON bodies read."""
        with self._lock:
            rows = self._db.execute(query, (now, limit)).fetchall()
        return [{**dict(r), "body": json.loads(r["body"])} for r in rows]

    def due_acks(self, now: float, limit: int = 50) -> list[dict]:
        return self._due(
            "SELECT signal_id, body, attempts FROM acks WHERE acked_at IS NULL AND next_attempt <= ? ORDER BY "
            "next_attempt LIMIT ?",
            now,
            limit,
        )

    def next_ack_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt) FROM acks WHERE acked_at IS NULL").fetchone()
        return row[0]

    def ack_done(self, signal_id: str, note: str = "") -> None:
        with self._lock:
            self._db.execute(
                "UPDATE acks SET acked_at = ?, last_error = ? WHERE signal_id = ?", (time.time(), note, signal_id)
            )

    def ack_retry(self, signal_id: str, error: str, next_attempt: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE acks SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE signal_id = ?",
                (next_attempt, error[:500], signal_id),
            )

    def ack_row(self, signal_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM acks WHERE signal_id = ?", (signal_id,)).fetchone()
        return dict(row) if row else None

    # ---- bars ---------------------------------------------------------------------
    def last_bar(self, symbol: str, timeframe: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT last_time FROM bars_sent WHERE symbol = ? AND timeframe = ?", (symbol, timeframe)
            ).fetchone()
        return None if row is None else int(row[0])

    def set_last_bar(self, symbol: str, timeframe: str, last_time: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO bars_sent (symbol, timeframe, last_time) VALUES (?, ?, ?) "
                "ON CONFLICT(symbol, timeframe) DO UPDATE SET last_time = MAX(last_time, excluded.last_time)",
                (symbol, timeframe, int(last_time)),
            )

    # ---- positions the bridge opened ---------------------------------------------------
    _POSITION_COLUMNS = (
        "ticket",
        "signal_id",
        "symbol",
        "timeframe",
        "side",
        "entry_bar",
        "entry_policy",
        "max_hold_bars",
        "sl",
        "tp",
    )

    def _put_position(self, position: dict, now: float) -> None:
        cols = self._POSITION_COLUMNS
        self._db.execute(
            f"INSERT OR IGNORE INTO positions ({', '.join(cols)}, created_at) VALUES ({', '.join('?' * len(cols))}, ?)",
            (*(position.get(c) for c in cols), now),
        )

    def remember_position(self, position: dict) -> None:
        with self._lock:
            self._put_position(position, time.time())

    def positions(self, tickets: list[int] | None = None) -> dict[int, dict]:
        with self._lock:
            if tickets is None:
                rows = self._db.execute("SELECT * FROM positions").fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT * FROM positions WHERE ticket IN ({', '.join('?' * len(tickets))})", list(tickets)
                ).fetchall()
        return {int(r["ticket"]): dict(r) for r in rows}

    def set_close_reason(self, ticket: int, reason: str) -> None:
        with self._lock:
            self._db.execute("UPDATE positions SET close_reason = ? WHERE ticket = ?", (reason, ticket))

    def signal_of_ticket(self, ticket: int) -> str | None:
        """The whole signal_id of an order the bridge placed (the comment holds only 31 characters)."""
        with self._lock:
            row = self._db.execute(
                "SELECT signal_id FROM executions WHERE ticket = ? AND status = 'FILLED'", (ticket,)
            ).fetchone()
        return None if row is None else str(row[0])

    # ---- trade reports (outbox) and the deals history's cursor --------------------------
    def queue_report(self, ticket: int, state: str, body: dict) -> bool:
        """Keep ``body`` as the report to send for ``ticket``; False when it says nothing new
        (the same report, or an open report after the close was queued)."""
        text = json.dumps(body, sort_keys=True)
        with self._lock:
            row = self._db.execute("SELECT state, body FROM trade_reports WHERE ticket = ?", (ticket,)).fetchone()
            if row is not None and (row["body"] == text or (row["state"] == "closed" and state != "closed")):
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO trade_reports (ticket, state, body, attempts, next_attempt, sent_at, "
                "last_error) VALUES (?, ?, ?, 0, ?, NULL, '')",
                (ticket, state, text, time.time()),
            )
        return True

    def due_reports(self, now: float, limit: int = 500) -> list[dict]:
        return self._due(
            "SELECT ticket, state, body, attempts FROM trade_reports WHERE sent_at IS NULL AND next_attempt <= ? "
            "ORDER BY ticket LIMIT ?",
            now,
            limit,
        )

    def reports_sent(self, tickets_and_bodies: list[tuple[int, dict]], note: str = "") -> None:
        """Mark these reports taken; a report replaced since it was read stays pending."""
        now = time.time()
        with self._lock:
            for ticket, body in tickets_and_bodies:
                self._db.execute(
                    "UPDATE trade_reports SET sent_at = ?, last_error = ? WHERE ticket = ? AND body = ?",
                    (now, note, ticket, json.dumps(body, sort_keys=True)),
                )

    def reports_retry(self, tickets: list[int], error: str, next_attempt: float) -> None:
        with self._lock:
            for ticket in tickets:
                self._db.execute(
                    "UPDATE trade_reports SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE ticket "
                    "= ? AND sent_at IS NULL",
                    (next_attempt, error[:500], ticket),
                )

    def report_counts(self) -> dict[str, int]:
        with self._lock:
            pending = self._db.execute("SELECT COUNT(*) FROM trade_reports WHERE sent_at IS NULL").fetchone()[0]
            closed = self._db.execute(
                "SELECT COUNT(*) FROM trade_reports WHERE state = 'closed' AND sent_at IS NOT NULL"
            ).fetchone()[0]
        return {"pending": int(pending), "closed_reported": int(closed)}

    def report_state(self, ticket: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM trade_reports WHERE ticket = ?", (ticket,)).fetchone()
        return None if row is None else str(row[0])

    def cursor(self, name: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, name: str, value: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = MAX(value, "
                "excluded.value)",
                (name, int(value)),
            )
