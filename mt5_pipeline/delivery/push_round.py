"""One push round: the signals of one claim, sent to the EA and each outcome recorded.

A round holds one claim token (see :func:`mt5_pipeline.signals.queue.claim_batch`). It
renews the claim's lease while it runs (mt5_pipeline.delivery.lease_heartbeat), sends the signals,
writes each outcome as a :class:`~mt5_pipeline.signals.queue.Mark` (in small groups),
tells the EA circuit breaker what the EA did, and gives back what it did not send. The
cycle around it (which claim, probing or not) is :func:`mt5_pipeline.delivery.pusher.push_pending`.

Sending: the first request of a round goes alone. Only once the EA has answered it (sent,
or a verdict) do the rest go out over up to ``lanes`` requests in flight, one lane per
symbol at a time, so each symbol's signals still leave in order and a lane stops at its
symbol's first failure. Why the first one alone: an EA that is down, or a configuration
error, costs one request and ends the round, exactly as one-at-a-time sending would; the
lanes only ever run against an EA that just answered. Why lanes at all: a request is a
round trip during which both the pusher and the EA mostly wait on each other; a few in
flight let the two work at once (benchmarks/bench_delivery.py).

A failure in one lane halts every lane before its next request; requests already in
flight finish and are recorded. Only the first failure of a round is the breaker's (the
one a one-at-a-time round would have sent); another request that failed beside it is
given back with its attempt undone, like every signal held during an outage. Outcomes
are recorded by the round's own thread, in the order they arrive: the lanes only send.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from queue import SimpleQueue
from typing import NamedTuple, Protocol

from mt5_pipeline.delivery import breaker
from mt5_pipeline.delivery.ea_client import SendOutcome
from mt5_pipeline.delivery.lease_heartbeat import LeaseHeartbeat
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.queue import Claimed, Mark

log = logging.getLogger("mt5_pipeline.delivery.pusher")  # one logger for the whole push cycle

BACKOFF_BASE_SECONDS = 1.0
# Outcomes are written every FLUSH_EVERY sends or FLUSH_SECONDS, and at the end: a batch
# (EA_BATCH_SIZE, 100 by default) that the EA answers briskly is one statement.
FLUSH_EVERY = 100
FLUSH_SECONDS = 0.25
# Requests in flight at once once the EA has answered the round's first one. A few are
# enough to keep both the pusher and the EA busy; more only queue up at the EA.
SEND_LANES = 4
# A configuration error is logged at ERROR when it starts or changes, and again this often.
CONFIG_ERROR_LOG_EVERY_SECONDS = 60.0

_config_logged: dict[str, float] = {}


class Sender(Protocol):
    """What sends a signal: the pooled :class:`~mt5_pipeline.delivery.ea_client.EAClient`
    (or a stand-in with the same two members). Called from several threads at once."""

    timeout: float

    def send(self, payload: dict) -> SendOutcome: ...


@dataclass
class PushResult:
    """The tally of one push cycle, added to by each of its rounds."""

    claimed: int = 0
    sent: int = 0
    rejected: int = 0
    retried: int = 0  # failed while the EA looked healthy: charged, retried later
    failed: int = 0
    expired: int = 0
    auth_error: bool = False  # 401
    config_error: bool = False  # 401, 403, 404, 405, 415: nothing gets through until fixed
    outage: bool = False  # the EA failed a request that proved (or continued) an outage
    held_back: bool = False  # the breaker was open and the next probe not due: nothing tried
    status_code: int | None = None
    hold_until: datetime | None = None  # the breaker's next probe, when it is open
    duration_s: float = 0.0
    released: int = 0  # claimed, then given back with the attempt undone
    lost: int = 0  # our lease ran out and another pusher took the row
    error: str = ""  # the error that ended the cycle early

    @property
    def message(self) -> str:
        if self.auth_error:
            return f"EA refused our API key; nothing sent ({self.error})"
        if self.config_error:
            return f"EA configuration error, signals kept PENDING; sent {self.sent} ({self.error})"
        if self.held_back or self.outage:
            return f"EA outage, signals kept PENDING until it answers; sent {self.sent} ({self.error})"
        return f"Successfully pushed {self.sent} signals to EA"


def backoff_seconds(
    attempt: int,
    *,
    seconds_left: float,
    settings: Settings,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` of one signal (1 = after the first failure)."""
    jitter = rng.random() if rng is not None else random.random()
    delay = BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1) * (0.5 + 0.5 * jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    cap = min(settings.signal_ttl_seconds / 2.0, seconds_left - settings.ea_request_timeout)
    return max(0.0, min(delay, cap))


def describe(c: Claimed) -> str:
    return f"{c.symbol} {c.side} (confidence: {c.confidence * 100:.1f}%)"


def _log_config_error(ea: str, error: str, changed: bool) -> None:
    last = _config_logged.get(ea)
    if changed or last is None or time.monotonic() - last >= CONFIG_ERROR_LOG_EVERY_SECONDS:
        _config_logged[ea] = time.monotonic()
        log.error(
            "❌ %s. Delivery stopped; signals stay PENDING (no attempts counted) until the configuration is fixed.",
            error,
        )
    else:
        log.debug("Configuration error persists: %s", error)


class CycleContext(NamedTuple):
    """What every round of one push cycle shares."""

    settings: Settings
    client: Sender
    clock: Callable[[], datetime]
    lease: float
    ea: str  # the breaker's key for this EA
    result: PushResult
    stop: threading.Event | None
    rng: random.Random | None
    lanes: int


class _Event(NamedTuple):
    """What a lane reports: ``what`` is "sent" (with the outcome), "expired", "lost" or
    "error" (an exception, re-raised once the lanes are done)."""

    claim: Claimed
    what: str
    at: datetime
    outcome: SendOutcome | None = None
    exc: BaseException | None = None


class PushRound:
    """The signals of one claim token: send, record, tell the breaker, give back the rest."""

    def __init__(self, ctx: CycleContext, claims: list[Claimed], *, probing: bool) -> None:
        self.ctx = ctx
        self.url = ctx.settings.database_url
        self.result = ctx.result
        self.claims = claims
        self.token = claims[0].claim_token
        self.probing = probing
        self.marks: list[Mark] = []
        self.done: set[int] = set()
        self.give_back: dict[int, str] = {}  # tried, but the failure is not the signal's
        self.answered = False  # the EA answered this round's probe
        self.tried = False  # a request was sent
        self.failed = False  # the breaker heard of this round's failure: later ones are given back
        self.last_flush = time.monotonic()
        self.heartbeat: LeaseHeartbeat | None = None

    def run(self) -> tuple[bool, bool]:
        """Returns (the EA answered a probe, a request was sent)."""
        self.heartbeat = LeaseHeartbeat(self.url, self.token, self.ctx.lease, self.ctx.clock)
        try:
            rest = self._send_one_by_one(self.claims)
            if rest:
                self._send_in_lanes(rest)
        finally:
            self.heartbeat.stop()
            self._finish()
        return self.answered, self.tried

    # ---- sending ------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self.ctx.stop is not None and self.ctx.stop.is_set()

    def _before_send(self, c: Claimed) -> str | None:
        """Why ``c`` must not be sent ("expired" or "lost"), or None to send it."""
        if self.ctx.clock() >= c.expires_at:
            return "expired"
        held = self.heartbeat.held if self.heartbeat is not None else None
        if held is not None and c.id not in held:
            return "lost"
        return None

    def _send_one_by_one(self, claims: list[Claimed]) -> list[Claimed]:
        """Send in order until the EA has answered a request of this round; returns the
        claims left for the lanes (none when the round ended or a lane would not help)."""
        lanes_help = self.ctx.lanes > 1 and len({c.symbol for c in claims}) > 1
        for i, c in enumerate(claims):
            if self._stopping():
                return []
            skip = self._before_send(c)
            if skip is not None:
                self._skipped(c, skip, self.ctx.clock())
                continue
            self.tried = True
            outcome = self.ctx.client.send(c.payload)
            if not self._record(c, outcome, self.ctx.clock()):
                return []
            self._flush_if_due()
            if lanes_help:  # the EA answered: the rest may go several at a time
                return claims[i + 1 :]
        return []

    def _send_in_lanes(self, claims: list[Claimed]) -> None:
        by_symbol: dict[str, list[Claimed]] = {}
        for c in claims:
            by_symbol.setdefault(c.symbol, []).append(c)
        groups = iter(list(by_symbol.values()))
        events: SimpleQueue[_Event | None] = SimpleQueue()
        halt, take = threading.Event(), threading.Lock()
        lanes = [
            threading.Thread(target=self._lane, args=(groups, take, halt, events), name=f"mt5-push-lane-{i + 1}")
            for i in range(min(self.ctx.lanes, len(by_symbol)))
        ]
        for lane in lanes:
            lane.start()
        running = len(lanes)
        try:
            while running:
                event = events.get()
                if event is None:
                    running -= 1
                elif event.what == "error":
                    raise event.exc or RuntimeError("a push lane failed")
                elif event.what != "sent":
                    self._skipped(event.claim, event.what, event.at)
                elif event.outcome is not None and not self._record(event.claim, event.outcome, event.at):
                    halt.set()
                self._flush_if_due()
        except BaseException:
            halt.set()
            self._abandon(events, running)
            raise
        finally:
            for lane in lanes:
                lane.join()

    def _abandon(self, events: SimpleQueue[_Event | None], running: int) -> None:
        """Recording failed: wait for the lanes to stop. What they sent is left under our
        lease, never given back: it is sent again (same signal_id, the EA dedupes) once the
        lease runs out, as if this process had died."""
        while running:
            event = events.get()
            if event is None:
                running -= 1
            elif event.what == "sent":
                self.done.add(event.claim.id)

    def _lane(
        self, groups: Iterator[list[Claimed]], take: threading.Lock, halt: threading.Event, events: SimpleQueue
    ) -> None:
        """Send whole symbols, each in order, until none is left or the round halts."""
        try:
            while True:
                with take:
                    group = next(groups, None)
                if group is None:
                    return
                for c in group:
                    if halt.is_set() or self._stopping():
                        return
                    skip = self._before_send(c)
                    if skip is not None:
                        events.put(_Event(c, skip, self.ctx.clock()))
                        continue
                    self.tried = True
                    outcome = self.ctx.client.send(c.payload)
                    if outcome.kind not in ("ok", "reject"):
                        halt.set()  # no lane sends again; this symbol's later signals wait for it
                    events.put(_Event(c, "sent", self.ctx.clock(), outcome))
                    if halt.is_set():
                        return
        except BaseException as exc:
            halt.set()
            events.put(_Event(self.claims[0], "error", self.ctx.clock(), exc=exc))
        finally:
            events.put(None)

    # ---- recording ----------------------------------------------------------------------

    def _skipped(self, c: Claimed, why: str, at: datetime) -> None:
        self.done.add(c.id)
        if why == "lost":
            self.result.lost += 1
            return
        self.marks.append(Mark(c.id, self.token, "EXPIRED", at, error="expired before delivery"))
        self.result.expired += 1
        log.warning("Signal expired before delivery, not sent: %s %s", c.signal_id, describe(c))

    def _record(self, c: Claimed, outcome: SendOutcome, at: datetime) -> bool:
        """Record one request's outcome; False when the round must end."""
        if outcome.kind in ("ok", "reject"):
            self._verdict(c, outcome, at)
            if self.probing and not self.answered:
                self._probe_answered(at)
            return True
        if self.failed:  # a request beside the round's failure failed too: not the signal's fault
            self.give_back[c.id] = outcome.error
            return False
        self.failed = True
        if outcome.config_error:
            self._config_error(c, outcome, at)
        else:
            self._failure(c, outcome, at)
        return False

    def _verdict(self, c: Claimed, outcome: SendOutcome, at: datetime) -> None:
        """The EA took the signal or gave its verdict on it."""
        self.done.add(c.id)
        if outcome.kind == "ok":
            self.marks.append(Mark(c.id, self.token, "SENT", at, ticket=outcome.ticket))
            self.result.sent += 1
            if log.isEnabledFor(logging.INFO):  # the line is one per signal: built only when written
                log.info("✅ Signal sent to EA: %s", describe(c))
        elif at >= c.expires_at:
            # Sent in time, but the deadline passed on the way: the EA refused it as too
            # late, which is what EXPIRED means.
            self.marks.append(
                Mark(c.id, self.token, "EXPIRED", at, error=f"expired on its way to the EA: {outcome.error}")
            )
            self.result.expired += 1
            log.warning("Signal expired on its way to the EA, not traded: %s: %s", describe(c), outcome.error)
        else:
            self.marks.append(Mark(c.id, self.token, "REJECTED", at, error=outcome.error))
            self.result.rejected += 1
            log.warning("❌ Signal rejected by EA: %s: %s", describe(c), outcome.error)

    def _probe_answered(self, at: datetime) -> None:
        """The probe got an answer: the EA is back; the breaker closes (and may fail its suspect)."""
        self.answered = True
        self._flush()  # the suspect's verdict below reads the queue
        recovery = breaker.record_success(self.url, self.ctx.ea, max_attempts=self.ctx.settings.ea_max_attempts, now=at)
        if recovery is None:
            return
        since = recovery.previous.opened_at
        log.info(
            "✅ EA answering again%s; delivering the held signals in order",
            f" after {(at - since).total_seconds():.1f} s" if since else "",
        )
        if recovery.failed_signal_id:
            self.result.failed += 1
            log.error("❌ Giving up on signal %s: %s", recovery.failed_signal_id, recovery.failed_error)

    def _config_error(self, c: Claimed, outcome: SendOutcome, at: datetime) -> None:
        settings, result = self.ctx.settings, self.result
        failure = breaker.record_failure(
            self.url, self.ctx.ea, kind=breaker.CONFIG, signal_row_id=c.id, chargeable=False, error=outcome.error,
            status_code=outcome.status_code, ttl_seconds=settings.signal_ttl_seconds, now=at, rng=self.ctx.rng,
        )  # fmt: skip
        self.give_back[c.id] = outcome.error
        result.config_error = True
        result.auth_error = outcome.kind == "auth"
        result.status_code = outcome.status_code
        result.error = outcome.error
        result.hold_until = failure.probe_at
        _log_config_error(self.ctx.ea, outcome.error, failure.changed)

    def _failure(self, c: Claimed, outcome: SendOutcome, at: datetime) -> None:
        """A failed request (refused, timeout, 5xx, 429): the breaker opens; the signal is
        charged (a suspect, retried later) or keeps its place (an outage)."""
        settings, result = self.ctx.settings, self.result
        failure = breaker.record_failure(
            self.url, self.ctx.ea, kind=breaker.OUTAGE, signal_row_id=c.id,
            # 408/429: the EA is busy; that is never one signal's fault.
            chargeable=outcome.status_code not in (408, 429), error=outcome.error,
            status_code=outcome.status_code, ttl_seconds=settings.signal_ttl_seconds, now=at,
            retry_after=outcome.retry_after, rng=self.ctx.rng,
        )  # fmt: skip
        result.error = outcome.error
        result.status_code = outcome.status_code
        result.hold_until = failure.probe_at
        if failure.charged:
            self.done.add(c.id)
            left = (c.expires_at - at).total_seconds()
            delay = backoff_seconds(
                c.attempts, seconds_left=left, settings=settings, retry_after=outcome.retry_after, rng=self.ctx.rng
            )
            retry_at = max(at + timedelta(seconds=delay), failure.probe_at)
            self.marks.append(Mark(c.id, self.token, "RETRY", at, error=outcome.error, next_attempt_at=retry_at))
            result.retried += 1
            log.warning(
                "⚠️ EA failed %s (attempt %d of %d): %s. Holding every signal until a probe in %.1f s tells an EA "
                "outage from a bad signal",
                describe(c), c.attempts, settings.ea_max_attempts, outcome.error,
                (failure.probe_at - at).total_seconds(),
            )  # fmt: skip
            return
        self.give_back[c.id] = outcome.error
        result.outage = True
        level = logging.WARNING if failure.failures <= 2 or failure.changed else logging.INFO
        log.log(
            level,
            "⚠️ EA outage (%d failed requests in a row): %s. Signals stay PENDING with their attempts; next probe in "
            "%.1f s",
            failure.failures, outcome.error, (failure.probe_at - at).total_seconds(),
        )  # fmt: skip

    # ---- writing ------------------------------------------------------------------------

    def _flush_if_due(self) -> None:
        if len(self.marks) >= FLUSH_EVERY or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        if self.marks:
            applied = queue.apply_marks(self.url, self.marks)
            lost = [m for m in self.marks if m.id not in applied]
            if lost:
                self.result.lost += len(lost)
                log.warning(
                    "Lost the lease on %d signals before recording them (another pusher took them over; the EA "
                    "dedupes by signal_id)",
                    len(lost),
                )
            self.marks.clear()
        self.last_flush = time.monotonic()

    def _finish(self) -> None:
        """Record what is left; give back what was tried without the signal's fault, and what was never tried."""
        try:
            self._flush()
        finally:
            for row_id, error in self.give_back.items():
                self.result.released += queue.release_claims(self.url, self.token, ids=[row_id], error=error)
            untried = [c.id for c in self.claims if c.id not in self.done and c.id not in self.give_back]
            if untried and self._stopping():
                log.info("Stop requested: releasing %d unsent signals", len(untried))
            if untried:
                self.result.released += queue.release_claims(self.url, self.token, ids=untried)
