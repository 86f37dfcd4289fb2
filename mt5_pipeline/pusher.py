"""Delivering queued signals to the EA: one push cycle, and the worker that repeats it.

A cycle (:func:`push_pending`): claim a batch (oldest first, order kept per symbol;
expired rows are never claimed), send one by one, record each outcome, then mark what
is too late EXPIRED. `POST /ea/push-signals`,
the Dagster push job and the worker all call it.

Decisions worth knowing:
- The first "retry" outcome (EA down, timeout, 5xx, 429) ends the cycle: the EA is unwell,
  so the signal that hit it backs off, and the rest of the batch is released untried (no
  attempt counted) and held back until the same time. This also keeps a symbol's later
  signal from overtaking one that must be retried.
- 401 ends the cycle too, loudly, releasing every claim with its attempt undone: a wrong
  key is not the signal's fault.
- Outcomes are written in small groups (every 25 sends or 0.25 s, and at the end) rather
  than one commit per send. If the process dies in between, those rows keep their lease,
  it runs out, and they are sent again with the same signal_id; the EA dedupes.
- Backoff: ``1 s * 2**(attempt-1)`` with equal jitter (x0.5..1), raised to the EA's
  Retry-After, and capped at half the TTL and so that the retry still starts at least
  one request timeout before ``expires_at``.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mt5_pipeline import queue
from mt5_pipeline.clock import as_utc, resolve_now, utcnow
from mt5_pipeline.ea_client import EAClient
from mt5_pipeline.listen import Listener
from mt5_pipeline.queue import Claimed, Mark
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage.engine import is_postgres

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
FLUSH_EVERY = 25
FLUSH_SECONDS = 0.25
# Renew the lease when less than one request timeout plus this is left.
LEASE_MARGIN_SECONDS = 2.0
MIN_IDLE_SECONDS = 0.05
# Pull mode: how often the worker turns PENDING signals past their deadline into EXPIRED.
PULL_EXPIRY_SECONDS = 1.0


def default_lease_seconds(settings: Settings) -> float:
    """How long a claim is held before another pusher may take the rows: long enough for a
    few requests (it is renewed while sending), short enough that a crashed pusher's rows
    come back well within a signal's TTL."""
    return max(30.0, 3.0 * settings.ea_request_timeout)


def backoff_seconds(attempt: int, *, seconds_left: float, settings: Settings, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 = after the first failure)."""
    rng = rng or random
    delay = BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1) * (0.5 + 0.5 * rng.random())
    if retry_after is not None:
        delay = max(delay, retry_after)
    cap = min(settings.signal_ttl_seconds / 2.0, seconds_left - settings.ea_request_timeout)
    return max(0.0, min(delay, cap))


@dataclass
class PushResult:
    claimed: int = 0
    sent: int = 0
    rejected: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    auth_error: bool = False
    duration_s: float = 0.0
    released: int = 0  # claimed but not tried (auth error, EA unwell, stop requested)
    lost: int = 0  # our lease ran out and another pusher took the row
    error: str = ""  # the auth error or the error that ended the cycle early

    @property
    def message(self) -> str:
        if self.auth_error:
            return f"EA refused our API key; nothing sent ({self.error})"
        return f"Successfully pushed {self.sent} signals to EA"


def _clock(now: datetime | None) -> Callable[[], datetime]:
    """A pinned start time still advances with real time, so deadlines inside a cycle work."""
    if now is None:
        return utcnow
    start, t0 = as_utc(now), time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - t0)


def _describe(c: Claimed) -> str:
    return f"{c.symbol} {c.side} (confidence: {c.confidence * 100:.1f}%)"


def push_pending(
    settings: Settings,
    *,
    client: EAClient | None = None,
    now: datetime | None = None,
    lease_seconds: float | None = None,
    stop: threading.Event | None = None,
    rng: random.Random | None = None,
) -> PushResult:
    """One push cycle. Pushes whatever EA_PUSH_ENABLED says (that switch is for the
    automatic callers). ``stop`` ends the cycle after the request in flight."""
    started = time.monotonic()
    clock = _clock(now)
    url = settings.database_url
    lease = lease_seconds if lease_seconds is not None else default_lease_seconds(settings)
    own_client = client is None
    client = client or EAClient(settings)
    result = PushResult()
    claims: list[Claimed] = []
    done: set[int] = set()
    marks: list[Mark] = []
    hold_until: datetime | None = None
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if marks:
            applied = queue.apply_marks(url, marks)
            lost = [m for m in marks if m.id not in applied]
            if lost:
                result.lost += len(lost)
                log.warning("Lost the lease on %d signals before recording them (another pusher took them over; the EA dedupes by signal_id)", len(lost))
            marks.clear()
        last_flush = time.monotonic()

    try:
        claims = queue.claim_batch(url, settings.ea_batch_size, lease_seconds=lease, now=clock())
        result.claimed = len(claims)
        held: set[int] | None = None
        lease_until = claims[0].lease_until if claims else None
        for c in claims:
            if stop is not None and stop.is_set():
                log.info("Stop requested: releasing %d unsent signals", len(claims) - len(done))
                break
            at = clock()
            if at >= c.expires_at:
                marks.append(Mark(c.id, c.claim_token, "EXPIRED", at, error="expired before delivery"))
                done.add(c.id)
                result.expired += 1
                log.warning("Signal expired before delivery, not sent: %s %s", c.signal_id, _describe(c))
                continue
            if lease_until is not None and (lease_until - at).total_seconds() < client.timeout + LEASE_MARGIN_SECONDS:
                flush()
                held = queue.extend_lease(url, c.claim_token, lease_seconds=lease, now=at)
                lease_until = at + timedelta(seconds=lease)
            if held is not None and c.id not in held:
                done.add(c.id)
                result.lost += 1
                continue

            outcome = client.send(c.payload)
            at = clock()
            if outcome.kind == "ok":
                marks.append(Mark(c.id, c.claim_token, "SENT", at, ticket=outcome.ticket))
                done.add(c.id)
                result.sent += 1
                log.info("✅ Signal sent to EA: %s", _describe(c))
            elif outcome.kind == "auth":
                result.auth_error = True
                result.error = outcome.error
                log.error("❌ %s. Stopping this push cycle; no attempts counted. Nothing will reach the EA until the key is fixed.", outcome.error)
                break
            elif outcome.kind == "reject":
                marks.append(Mark(c.id, c.claim_token, "REJECTED", at, error=outcome.error))
                done.add(c.id)
                result.rejected += 1
                log.warning("❌ Signal rejected by EA: %s: %s", _describe(c), outcome.error)
            else:
                done.add(c.id)
                result.error = outcome.error
                left = (c.expires_at - at).total_seconds()
                delay = backoff_seconds(c.attempts, seconds_left=left, settings=settings, retry_after=outcome.retry_after, rng=rng)
                hold_until = at + timedelta(seconds=delay)
                if c.attempts >= settings.ea_max_attempts:
                    marks.append(Mark(c.id, c.claim_token, "FAILED", at, error=f"gave up after {c.attempts} attempts: {outcome.error}"))
                    result.failed += 1
                    log.error("❌ Giving up on signal %s after %d attempts: %s: %s", c.signal_id, c.attempts, _describe(c), outcome.error)
                else:
                    marks.append(Mark(c.id, c.claim_token, "RETRY", at, error=outcome.error, next_attempt_at=hold_until))
                    result.retried += 1
                    log.warning("⚠️ Will retry %s in %.1f s (attempt %d of %d): %s", _describe(c), delay, c.attempts, settings.ea_max_attempts, outcome.error)
                # The EA is unwell: the rest of the batch waits, untried.
                break
            if len(marks) >= FLUSH_EVERY or time.monotonic() - last_flush >= FLUSH_SECONDS:
                flush()
        # The claim never takes expired rows, so recording them can wait until the
        # fresh signals are out.
        result.expired += queue.expire_stale(url, now=clock())
    finally:
        try:
            flush()
        finally:
            untried = [c.id for c in claims if c.id not in done]
            if untried:
                result.released += queue.release_claims(url, claims[0].claim_token, ids=untried, not_before=hold_until)
            if own_client:
                client.close()
    result.duration_s = time.monotonic() - started
    if result.sent:
        log.info("📤 Pushed %d signals to EA", result.sent)
    return result


# ---- the worker ------------------------------------------------------------------------------


def _idle_seconds(settings: Settings, result: PushResult | None, *, now: datetime | None = None) -> float:
    """How long to wait before the next cycle."""
    interval = settings.ea_push_interval
    if result is None or result.auth_error:
        return interval
    if result.claimed >= settings.ea_batch_size and not result.retried and not result.released:
        return 0.0  # a full batch went out: there is probably more
    due = queue.next_due_at(settings.database_url, now=now)
    if due is None:
        return interval
    return max(MIN_IDLE_SECONDS, min(interval, (due - resolve_now(now)).total_seconds()))


def run_worker(
    settings: Settings,
    *,
    once: bool = False,
    lease_seconds: float | None = None,
    stop: threading.Event | None = None,
    listen: bool | None = None,
) -> int:
    """The pusher worker: a cycle every EA_PUSH_INTERVAL seconds (sooner when a retry falls
    due, at once on NOTIFY with PostgreSQL). With EA_PUSH_ENABLED=false (pull mode) it
    sends nothing but still expires: signals past their deadline become EXPIRED about
    every second, whatever the delivery mode -- this worker is where expiry runs.

    SIGTERM/SIGINT (or ``stop``) end it cleanly: the request in flight finishes, unsent
    claims are released, exit code 0. ``once``: one cycle; exit code 1 if it failed or the
    EA refused the key. ``listen`` defaults to on for PostgreSQL.
    """
    stop = stop or threading.Event()
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: object) -> None:
            if not stop.is_set():
                log.info("Received %s: finishing the request in flight, then stopping", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)

    # httpx logs every request at INFO; the pusher logs one line per signal itself.
    if logging.getLogger("httpx").level == logging.NOTSET:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    use_listen = is_postgres(settings.database_url) if listen is None else listen
    listener = Listener(settings.database_url, queue.NOTIFY_CHANNEL) if use_listen and not once else None
    client = EAClient(settings)
    log.info(
        "EA pusher started: EA %s, every %g s, batch %d%s",
        client.url,
        settings.ea_push_interval,
        settings.ea_batch_size,
        ", woken by LISTEN/NOTIFY" if listener else "",
    )
    if not client._key:
        log.warning("EA_API_KEY is empty: the EA will likely refuse every signal (401)")
    idle_logged = False
    try:
        while not stop.is_set():
            if not settings.ea_push_enabled:
                if not idle_logged:
                    log.info("EA_PUSH_ENABLED=false: not pushing (pull mode: the EA polls GET /ea/signals); expiring what passes its deadline")
                    idle_logged = True
                try:
                    expired = queue.expire_stale(settings.database_url)
                    if expired:
                        log.warning("%d signals passed their deadline unacknowledged (pull mode): EXPIRED", expired)
                except Exception as exc:
                    log.warning("Expiring signals failed (%s); trying again shortly", exc.__class__.__name__)
                if once:
                    return 0
                stop.wait(PULL_EXPIRY_SECONDS)
                continue
            result: PushResult | None
            try:
                result = push_pending(settings, client=client, lease_seconds=lease_seconds, stop=stop)
            except Exception as exc:
                log.exception("Push cycle failed (%s); trying again in %g s", exc.__class__.__name__, settings.ea_push_interval)
                result = None
            if once:
                return 1 if result is None or result.auth_error else 0
            if stop.is_set():
                break
            try:
                idle = _idle_seconds(settings, result)
            except Exception:
                idle = settings.ea_push_interval
            if idle <= 0:
                continue
            if listener is not None:
                listener.wait(idle, stop)
            else:
                stop.wait(idle)
    finally:
        client.close()
        if listener is not None:
            listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    log.info("EA pusher stopped")
    return 0
