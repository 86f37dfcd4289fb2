"""The EA circuit breaker: while the EA fails every request, the pushers back off as a whole.

A failed send (connection refused, timeout, 5xx, 429) is first a fact about the EA, not
about the signal. The breaker tells the two apart without burning the signals' budget:

- CLOSED: pushers send normally. The first failure opens the breaker (state ``outage``)
  and makes the failing signal the *suspect*: its attempt is charged, provisionally.
- OPEN: nobody sends until ``probe_at``. Then exactly one pusher (an atomic update of
  ``probe_at`` decides which) sends ONE signal: not the suspect's symbol if another is
  due, the first of its symbol (order is kept), preferably one that never failed (so a
  second poison signal does not pass for an outage).
  - The probe succeeds (or the EA answers it with a verdict, REJECTED): the EA is back;
    the breaker closes. The suspect failed while the EA accepted another signal, so its
    charged attempt stands; a suspect at ``EA_MAX_ATTEMPTS`` becomes FAILED (a poison
    signal). Every other signal goes out in order.
  - The probe fails too: two requests in a row failed, that is an outage. Both the
    suspect's and the probe's attempts are given back, and the next probe is spaced
    further (0.5 s doubling, with jitter, capped at min(5 s, TTL/12)). Signals keep their
    place, and EXPIRE at their deadline if the EA is not back by then; never FAILED.
  So FAILED needs the EA to accept another signal right after failing this one, up to
  ``EA_MAX_ATTEMPTS`` times. A lone signal that always fails cannot be told from an outage;
  it expires.
- A configuration error (401, 403, 404, 405, 415: wrong key, path, method or content
  type) puts the breaker in state ``config``: nothing is charged, the cycle stops, and
  the probes continue at the same spacing until the EA answers otherwise. The state and
  the reason are what /health, /metrics and the push sensor show.

The spacing is capped so that the EA coming back is noticed within min(5 s, TTL/12):
an outage anywhere inside a signal's TTL costs it at most that much of its life.

Where the state lives: one row per EA URL in ``ea_delivery_state``, shared through the
database by every pusher (workers, the API's manual push, Dagster runs), not per
process. It costs one primary-key read per push cycle and a write only when the state
changes; in exchange two pushers never probe at once, a new pusher does not hammer an EA
the others know is down, and the API and Dagster (other processes) can show why
delivery stopped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection, Row

from mt5_pipeline.clock import as_utc, resolve_now
from mt5_pipeline.storage.dialect import DriverStatement, insert_on_conflict
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import ea_delivery_state, signals_queue

t = ea_delivery_state
q = signals_queue

CLOSED, OUTAGE, CONFIG = "closed", "outage", "config"
FIRST_PROBE_SECONDS = 0.5
MAX_PROBE_SECONDS = 5.0
MIN_PROBE_CAP_SECONDS = 0.5


def ea_key(url: str) -> str:
    """The row key for an EA: its signals URL without user info (which may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))[:512]


def probe_cap_seconds(ttl_seconds: float) -> float:
    return min(MAX_PROBE_SECONDS, max(MIN_PROBE_CAP_SECONDS, ttl_seconds / 12.0))


def probe_spacing(
    failures: int, *, ttl_seconds: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds until the next probe after ``failures`` failed requests in a row: 0.5 s
    doubling with equal jitter, at least the EA's Retry-After, never more than the cap."""
    jitter = rng.random() if rng is not None else random.random()
    delay = FIRST_PROBE_SECONDS * 2 ** max(0, failures - 1) * (0.5 + 0.5 * jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, probe_cap_seconds(ttl_seconds))


@dataclass(frozen=True)
class BreakerState:
    ea: str
    state: str = CLOSED
    failures: int = 0
    probe_at: datetime | None = None
    suspect_id: int | None = None
    status_code: int | None = None
    last_error: str | None = None
    opened_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def holds(self, now: datetime) -> bool:
        """True while nobody may send (open, and the next probe is not due)."""
        return not self.closed and self.probe_at is not None and as_utc(self.probe_at) > as_utc(now)


def _state_from(row: Row[Any]) -> BreakerState:
    return _state_from_mapping(dict(row._mapping))


def _state_from_mapping(m: Mapping[str, Any]) -> BreakerState:
    return BreakerState(
        ea=m["ea"],
        state=m["state"],
        failures=int(m["failures"]),
        probe_at=as_utc(m["probe_at"]) if m["probe_at"] is not None else None,
        suspect_id=m["suspect_id"],
        status_code=m["status_code"],
        last_error=m["last_error"],
        opened_at=as_utc(m["opened_at"]) if m["opened_at"] is not None else None,
        updated_at=as_utc(m["updated_at"]) if m["updated_at"] is not None else None,
    )


# Every push cycle reads the state first, on the way from a fresh signal to the EA: one
# round trip on PostgreSQL (no transaction around a one-row read).
_READ = DriverStatement(select(t).where(t.c.ea == bindparam("ea", type_=t.c.ea.type)))
_READ_NAMES = list(t.columns.keys())


def read_state(database_url: str, ea: str) -> BreakerState:
    with get_engine(database_url).connect() as conn:
        rows = _READ.run(conn, {"ea": ea})
    if not rows:
        return BreakerState(ea)
    return _state_from_mapping(dict(zip(_READ_NAMES, rows[0], strict=True)))


def _locked(conn: Connection, ea: str, now: datetime) -> BreakerState:
    """The row, created if missing, locked for this transaction (PostgreSQL; SQLite's
    single writer serialises the transaction anyway)."""
    conn.execute(
        insert_on_conflict(conn, t).values(ea=ea, state=CLOSED, failures=0, updated_at=now).on_conflict_do_nothing()
    )
    return _state_from(conn.execute(select(t).where(t.c.ea == ea).with_for_update()).one())


def claim_probe(database_url: str, ea: str, *, now: datetime | None = None, hold_seconds: float) -> bool:
    """Become the one pusher that probes an open breaker: True if the probe was due and
    is now ours (``probe_at`` moves ``hold_seconds`` ahead so nobody else probes meanwhile;
    if we die, the next pusher probes after that)."""
    at = resolve_now(now)
    stmt = (
        update(t)
        .where(t.c.ea == ea, t.c.state != CLOSED, (t.c.probe_at.is_(None)) | (t.c.probe_at <= at))
        .values(probe_at=at + timedelta(seconds=hold_seconds), updated_at=at)
    )
    with get_engine(database_url).begin() as conn:
        return conn.execute(stmt).rowcount == 1


def reschedule_probe(database_url: str, ea: str, at: datetime) -> None:
    """Give the probe back (there was nothing to probe with): the next signal may probe at ``at``."""
    with get_engine(database_url).begin() as conn:
        conn.execute(
            update(t).where(t.c.ea == ea, t.c.state != CLOSED).values(probe_at=as_utc(at), updated_at=as_utc(at))
        )


@dataclass(frozen=True)
class Failure:
    charged: bool  # the failing signal keeps its attempt (it may be the one at fault)
    changed: bool  # the state or the status changed: worth a loud log line
    probe_at: datetime
    failures: int
    refunded_suspect: int | None  # signals_queue.id whose provisional attempt was given back
    previous: BreakerState


def _refund(conn: Connection, row_id: int) -> None:
    conn.execute(
        update(q).where(q.c.id == row_id, q.c.status == "PENDING", q.c.attempts > 0).values(attempts=q.c.attempts - 1)
    )


def record_failure(
    database_url: str,
    ea: str,
    *,
    kind: str,
    signal_row_id: int | None,
    chargeable: bool,
    error: str,
    status_code: int | None,
    ttl_seconds: float,
    now: datetime | None = None,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> Failure:
    """A request failed (``kind`` OUTAGE) or met a configuration error (CONFIG): open the
    breaker, decide whether the failing signal is charged, give back the suspect's
    attempt when this proves an outage. The caller undoes the failing signal's own
    attempt when ``charged`` is False."""
    if kind not in (OUTAGE, CONFIG):
        raise ValueError(f"unknown failure kind {kind!r}")
    at = resolve_now(now)
    with get_engine(database_url).begin() as conn:
        before = _locked(conn, ea, at)
        charged = kind == OUTAGE and chargeable and before.closed and signal_row_id is not None
        refunded = None
        if not charged and before.suspect_id is not None:
            _refund(conn, before.suspect_id)
            refunded = before.suspect_id
        failures = (0 if before.closed else before.failures) + 1
        probe_at = at + timedelta(
            seconds=probe_spacing(failures, ttl_seconds=ttl_seconds, retry_after=retry_after, rng=rng)
        )
        conn.execute(
            update(t)
            .where(t.c.ea == ea)
            .values(
                state=kind,
                failures=failures,
                probe_at=probe_at,
                suspect_id=signal_row_id if charged else None,
                status_code=status_code,
                last_error=error,
                opened_at=before.opened_at if not before.closed and before.opened_at else at,
                updated_at=at,
            )
        )
    changed = before.state != kind or before.status_code != status_code
    return Failure(charged, changed, probe_at, failures, refunded, before)


@dataclass(frozen=True)
class Recovery:
    previous: BreakerState
    failed_signal_id: str | None  # the suspect, now FAILED as a poison signal
    failed_error: str | None


def record_success(database_url: str, ea: str, *, max_attempts: int, now: datetime | None = None) -> Recovery | None:
    """The EA accepted (or gave its verdict on) a request: close the breaker. A suspect at
    ``max_attempts`` charged attempts is FAILED: the EA kept failing it while accepting
    others. None when the breaker was already closed."""
    at = resolve_now(now)
    with get_engine(database_url).begin() as conn:
        row = conn.execute(select(t).where(t.c.ea == ea).with_for_update()).first()
        if row is None:
            return None
        before = _state_from(row)
        if before.closed:
            return None
        failed_id = failed_error = None
        if before.suspect_id is not None:
            suspect = conn.execute(
                select(q.c.signal_id, q.c.attempts, q.c.last_error).where(
                    q.c.id == before.suspect_id,
                    q.c.status == "PENDING",
                    q.c.attempts >= max_attempts,
                    (q.c.claim_token.is_(None)) | (q.c.lease_until < at),
                )
            ).first()
            if suspect is not None:
                failed_error = (
                    f"gave up after {suspect.attempts} attempts while the EA accepted other signals: "
                    f"{suspect.last_error or ''}"
                ).strip()
                conn.execute(
                    update(q)
                    .where(q.c.id == before.suspect_id, q.c.status == "PENDING")
                    .values(status="FAILED", last_error=failed_error, claim_token=None, lease_until=None)
                )
                failed_id = suspect.signal_id
        conn.execute(
            update(t)
            .where(t.c.ea == ea)
            .values(
                state=CLOSED,
                failures=0,
                probe_at=None,
                suspect_id=None,
                status_code=None,
                last_error=None,
                opened_at=None,
                updated_at=at,
            )
        )
    return Recovery(before, failed_id, failed_error)


def delivery_status(database_url: str, ea_url: str) -> dict:
    """What /health, /metrics and the push sensor show: ``{"state": "ok" | "outage" |
    "config_error", "status_code", "error", "since", "next_probe_at", "updated_at"}``
    (``updated_at``: the last time a pusher tried the EA while the breaker was open)."""
    s = read_state(database_url, ea_key(ea_url))
    name = {CLOSED: "ok", OUTAGE: "outage", CONFIG: "config_error"}.get(s.state, s.state)
    return {
        "state": name,
        "status_code": s.status_code,
        "error": s.last_error,
        "since": s.opened_at,
        "next_probe_at": s.probe_at,
        "updated_at": s.updated_at,
    }
