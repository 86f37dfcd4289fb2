"""Delivering queued signals to the EA: one push cycle, and the worker that repeats it.

A cycle (:func:`push_pending`): ask the EA circuit breaker (mt5_pipeline.delivery.breaker) whether
the EA may be tried, claim a batch (oldest first, order kept per symbol; expired rows are
never claimed), send one by one, record each outcome, then mark what is too late EXPIRED.
`POST /ea/push-signals`, the Dagster push job and the worker all call it.

Decisions worth knowing:
- An EA outage is the EA's, not the signals': the first failed request (refused, timeout,
  5xx, 429) opens the breaker and ends the cycle, the rest of the batch released untried.
  While it is open no pusher sends; one probes with a single signal at growing intervals
  (0.5 s doubling, capped at min(5 s, TTL/12)); when the EA answers, the held signals go
  out in order in the same cycle. An attempt is only charged to a signal that fails while
  the EA accepts others (a poison signal, FAILED after EA_MAX_ATTEMPTS); during an outage
  signals keep their place and their attempts, and EXPIRE at their deadline if the EA is
  not back by then. The breaker's state is shared through the database by every pusher;
  mt5_pipeline.delivery.breaker explains the rules and why.
- A configuration error (401, 403, 404, 405, 415) ends the cycle too, releasing every
  claim with its attempt undone: the signals stay PENDING. The breaker's ``config`` state
  carries the reason to /health, /metrics and the push sensor, the worker logs it at
  ERROR (again every minute while it lasts), and probes continue at the same spacing.
- A 422 or ``success: false`` is the EA's verdict on that signal: REJECTED, message kept.
- Leases are short (5 s) and renewed every third of that by a heartbeat thread for as
  long as the cycle runs, a request in flight included. A pusher that dies stops
  renewing: its rows are claimable again within 5 s, re-sent with the same signal_id.
- Outcomes are written in small groups (every 25 sends or 0.25 s, and at the end) rather
  than one commit per send. If the process dies in between, those rows are sent again
  (same signal_id) once the lease runs out; the EA dedupes.
- A suspect signal's own retry waits ``1 s * 2**(attempt-1)`` with equal jitter (x0.5..1),
  raised to the EA's Retry-After and to the breaker's next probe, capped at half the TTL
  and so that the retry still starts at least one request timeout before ``expires_at``.
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

from mt5_pipeline.clock import as_utc, resolve_now, utcnow
from mt5_pipeline.delivery import breaker
from mt5_pipeline.delivery.ea_client import EAClient
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.queue import Claimed, Mark
from mt5_pipeline.storage.notifications import Listener, notifications_supported

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
FLUSH_EVERY = 25
FLUSH_SECONDS = 0.25
# A claim's lease. Short, so a dead pusher's rows come back within a few seconds; the
# heartbeat renews it every third of it while the holder is alive.
LEASE_SECONDS = 5.0
# The probing pusher holds the probe this long beyond one request timeout.
PROBE_HOLD_MARGIN_SECONDS = 2.0
# A configuration error is logged at ERROR when it starts or changes, and again this often.
CONFIG_ERROR_LOG_EVERY_SECONDS = 60.0
MIN_IDLE_SECONDS = 0.05
# Pull mode: how often the worker turns PENDING signals past their deadline into EXPIRED.
PULL_EXPIRY_SECONDS = 1.0

_config_logged: dict[str, float] = {}


def default_lease_seconds(settings: Settings) -> float:
    """How long a claim is held before another pusher may take the rows. It does not grow
    with EA_REQUEST_TIMEOUT: the heartbeat keeps it alive during a long request."""
    return LEASE_SECONDS


def backoff_seconds(
    attempt: int,
    *,
    seconds_left: float,
    settings: Settings,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` of one signal (1 = after the first failure)."""
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


def _clock(now: datetime | None) -> Callable[[], datetime]:
    """A pinned start time still advances with real time, so deadlines inside a cycle work."""
    if now is None:
        return utcnow
    start, t0 = as_utc(now), time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - t0)


def _describe(c: Claimed) -> str:
    return f"{c.symbol} {c.side} (confidence: {c.confidence * 100:.1f}%)"


class _Heartbeat:
    """Renews a claim's lease every third of it, in a thread, for as long as the cycle
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


def _held_back(result: PushResult, state: breaker.BreakerState) -> None:
    result.held_back = True
    result.hold_until = state.probe_at
    result.error = state.last_error or ""
    result.status_code = state.status_code
    if state.state == breaker.CONFIG:
        result.config_error = True
        result.auth_error = state.status_code == 401


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
    ea = breaker.ea_key(settings.ea_server_url)  # the key /health, /metrics and the sensor read too
    result = PushResult()

    def send_round(claims: list[Claimed], probing: bool) -> tuple[bool, bool]:
        """Send ``claims`` (one claim token). Returns (the EA answered a probe, a request was sent)."""
        token = claims[0].claim_token
        marks: list[Mark] = []
        done: set[int] = set()
        give_back: dict[int, str] = {}  # tried, but the failure is not the signal's
        answered = tried = False
        last_flush = time.monotonic()
        heartbeat = _Heartbeat(url, token, lease, clock)

        def flush() -> None:
            nonlocal last_flush
            if marks:
                applied = queue.apply_marks(url, marks)
                lost = [m for m in marks if m.id not in applied]
                if lost:
                    result.lost += len(lost)
                    log.warning(
                        "Lost the lease on %d signals before recording them (another pusher took them over; the EA dedupes by signal_id)",
                        len(lost),
                    )
                marks.clear()
            last_flush = time.monotonic()

        try:
            for c in claims:
                if stop is not None and stop.is_set():
                    log.info("Stop requested: releasing %d unsent signals", len(claims) - len(done))
                    break
                at = clock()
                if at >= c.expires_at:
                    marks.append(Mark(c.id, token, "EXPIRED", at, error="expired before delivery"))
                    done.add(c.id)
                    result.expired += 1
                    log.warning("Signal expired before delivery, not sent: %s %s", c.signal_id, _describe(c))
                    continue
                held = heartbeat.held
                if held is not None and c.id not in held:
                    done.add(c.id)
                    result.lost += 1
                    continue

                tried = True
                outcome = client.send(c.payload)
                at = clock()
                if outcome.kind in ("ok", "reject"):
                    done.add(c.id)
                    if outcome.kind == "ok":
                        marks.append(Mark(c.id, token, "SENT", at, ticket=outcome.ticket))
                        result.sent += 1
                        log.info("✅ Signal sent to EA: %s", _describe(c))
                    elif at >= c.expires_at:
                        # Sent in time, but the deadline passed on the way: the EA refused it as
                        # too late, which is what EXPIRED means.
                        marks.append(
                            Mark(c.id, token, "EXPIRED", at, error=f"expired on its way to the EA: {outcome.error}")
                        )
                        result.expired += 1
                        log.warning(
                            "Signal expired on its way to the EA, not traded: %s: %s", _describe(c), outcome.error
                        )
                    else:
                        marks.append(Mark(c.id, token, "REJECTED", at, error=outcome.error))
                        result.rejected += 1
                        log.warning("❌ Signal rejected by EA: %s: %s", _describe(c), outcome.error)
                    if probing and not answered:
                        answered = True
                        flush()  # the suspect's verdict below reads the queue
                        recovery = breaker.record_success(url, ea, max_attempts=settings.ea_max_attempts, now=at)
                        if recovery is not None:
                            since = recovery.previous.opened_at
                            log.info(
                                "✅ EA answering again%s; delivering the held signals in order",
                                f" after {(at - since).total_seconds():.1f} s" if since else "",
                            )
                            if recovery.failed_signal_id:
                                result.failed += 1
                                log.error(
                                    "❌ Giving up on signal %s: %s", recovery.failed_signal_id, recovery.failed_error
                                )
                elif outcome.config_error:
                    failure = breaker.record_failure(
                        url, ea, kind=breaker.CONFIG, signal_row_id=c.id, chargeable=False, error=outcome.error,
                        status_code=outcome.status_code, ttl_seconds=settings.signal_ttl_seconds, now=at, rng=rng,
                    )  # fmt: skip
                    give_back[c.id] = outcome.error
                    result.config_error = True
                    result.auth_error = outcome.kind == "auth"
                    result.status_code = outcome.status_code
                    result.error = outcome.error
                    result.hold_until = failure.probe_at
                    _log_config_error(ea, outcome.error, failure.changed)
                    break
                else:
                    failure = breaker.record_failure(
                        url, ea, kind=breaker.OUTAGE, signal_row_id=c.id,
                        # 408/429: the EA is busy; that is never one signal's fault.
                        chargeable=outcome.status_code not in (408, 429), error=outcome.error,
                        status_code=outcome.status_code, ttl_seconds=settings.signal_ttl_seconds, now=at,
                        retry_after=outcome.retry_after, rng=rng,
                    )  # fmt: skip
                    result.error = outcome.error
                    result.status_code = outcome.status_code
                    result.hold_until = failure.probe_at
                    if failure.charged:
                        done.add(c.id)
                        left = (c.expires_at - at).total_seconds()
                        delay = backoff_seconds(
                            c.attempts, seconds_left=left, settings=settings, retry_after=outcome.retry_after, rng=rng
                        )
                        retry_at = max(at + timedelta(seconds=delay), failure.probe_at)
                        marks.append(Mark(c.id, token, "RETRY", at, error=outcome.error, next_attempt_at=retry_at))
                        result.retried += 1
                        log.warning(
                            "⚠️ EA failed %s (attempt %d of %d): %s. Holding every signal until a probe in %.1f s tells an EA outage from a bad signal",
                            _describe(c), c.attempts, settings.ea_max_attempts, outcome.error, (failure.probe_at - at).total_seconds(),
                        )  # fmt: skip
                    else:
                        give_back[c.id] = outcome.error
                        result.outage = True
                        level = logging.WARNING if failure.failures <= 2 or failure.changed else logging.INFO
                        log.log(
                            level,
                            "⚠️ EA outage (%d failed requests in a row): %s. Signals stay PENDING with their attempts; next probe in %.1f s",
                            failure.failures, outcome.error, (failure.probe_at - at).total_seconds(),
                        )  # fmt: skip
                    break
                if len(marks) >= FLUSH_EVERY or time.monotonic() - last_flush >= FLUSH_SECONDS:
                    flush()
        finally:
            heartbeat.stop()
            try:
                flush()
            finally:
                for row_id, error in give_back.items():
                    result.released += queue.release_claims(url, token, ids=[row_id], error=error)
                untried = [c.id for c in claims if c.id not in done and c.id not in give_back]
                if untried:
                    result.released += queue.release_claims(url, token, ids=untried)
        return answered, tried

    try:
        state = breaker.read_state(url, ea)
        probing = False
        if not state.closed:
            if breaker.claim_probe(url, ea, now=clock(), hold_seconds=client.timeout + PROBE_HOLD_MARGIN_SECONDS):
                probing = True
            else:
                _held_back(result, breaker.read_state(url, ea))
        while not result.held_back:
            if probing:
                # Probe with one signal, not the suspect if another is due (only another
                # signal can show the EA is back while the suspect keeps failing), the
                # first of its symbol, preferably one that never failed.
                claims = queue.claim_batch(
                    url, 1, lease_seconds=lease, now=clock(), exclude_id=state.suspect_id, probe=True
                )
                if not claims and state.suspect_id is not None:
                    claims = queue.claim_batch(url, 1, lease_seconds=lease, now=clock(), probe=True)
                if not claims:
                    breaker.reschedule_probe(url, ea, clock())  # the next signal probes at once
                    break
            else:
                claims = queue.claim_batch(url, settings.ea_batch_size, lease_seconds=lease, now=clock())
                if not claims:
                    break
            result.claimed += len(claims)
            answered, tried = send_round(claims, probing)
            if probing and not tried:  # the probe expired or we were stopped: the next signal probes
                breaker.reschedule_probe(url, ea, clock())
            if probing and answered and not (stop is not None and stop.is_set()):
                probing = False  # the EA is back: the held signals, in order, this cycle
                continue
            break
        # The claim never takes expired rows, so recording them can wait until the
        # fresh signals are out.
        result.expired += queue.expire_stale(url, now=clock())
    finally:
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
    if result is None:
        return interval
    if result.hold_until is not None:
        # The breaker is open (outage or configuration error): the next probe is due then.
        return max(MIN_IDLE_SECONDS, min(interval, (result.hold_until - resolve_now(now)).total_seconds()))
    if result.auth_error:
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
    use_listen = notifications_supported(settings.database_url) if listen is None else listen
    listener = Listener(settings.database_url, queue.NOTIFY_CHANNEL) if use_listen and not once else None
    client = EAClient(settings)
    log.info(
        "EA pusher started: EA %s, every %g s, batch %d%s",
        client.url,
        settings.ea_push_interval,
        settings.ea_batch_size,
        ", woken by LISTEN/NOTIFY" if listener else "",
    )
    if not client.has_key:
        log.warning("EA_API_KEY is empty: the EA will likely refuse every signal (401)")
    idle_logged = False
    try:
        while not stop.is_set():
            if not settings.ea_push_enabled:
                if not idle_logged:
                    log.info(
                        "EA_PUSH_ENABLED=false: not pushing (pull mode: the EA polls GET /ea/signals); expiring what passes its deadline"
                    )
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
                log.exception(
                    "Push cycle failed (%s); trying again in %g s", exc.__class__.__name__, settings.ea_push_interval
                )
                result = None
            if once:
                return 1 if result is None or result.auth_error or result.config_error else 0
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
