"""Delivering queued signals to the EA: one push cycle.

A cycle (:func:`push_pending`): ask the EA circuit breaker (mt5_pipeline.delivery.breaker) whether
the EA may be tried, claim a batch (oldest first, order kept per symbol; expired rows are
never claimed), send it and record each outcome (a round, mt5_pipeline.delivery.push_round:
the first request alone, then a few in flight across symbols, each symbol in order), then
mark what is too late EXPIRED. `POST /ea/push-signals`, the Dagster push job and the
worker (mt5_pipeline.apps.push_worker, which waits :func:`idle_seconds` between cycles)
all call it.

Decisions worth knowing:
- An EA outage is the EA's, not the signals': the first failed request (refused, timeout,
  5xx, 429) opens the breaker and ends the cycle, the rest of the batch released untried
  (requests already in flight beside it finish; one that failed too is given back, its
  attempt undone).
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
- Outcomes are written in groups (every 100 sends or 0.25 s, and at the end) rather
  than one commit per send. If the process dies in between, those rows are sent again
  (same signal_id) once the lease runs out; the EA dedupes.
- A suspect signal's own retry waits ``1 s * 2**(attempt-1)`` with equal jitter (x0.5..1),
  raised to the EA's Retry-After and to the breaker's next probe, capped at half the TTL
  and so that the retry still starts at least one request timeout before ``expires_at``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from mt5_pipeline.clock import as_utc, resolve_now, utcnow
from mt5_pipeline.delivery import breaker
from mt5_pipeline.delivery.ea_client import EAClient
from mt5_pipeline.delivery.push_round import SEND_LANES, CycleContext, PushResult, PushRound, Sender
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.queue import Claimed

__all__ = ["LEASE_SECONDS", "PushResult", "default_lease_seconds", "idle_seconds", "push_pending"]

log = logging.getLogger(__name__)

# A claim's lease. Short, so a dead pusher's rows come back within a few seconds; the
# heartbeat renews it every third of it while the holder is alive.
LEASE_SECONDS = 5.0
# The probing pusher holds the probe this long beyond one request timeout.
PROBE_HOLD_MARGIN_SECONDS = 2.0
MIN_IDLE_SECONDS = 0.05


def default_lease_seconds(settings: Settings) -> float:
    """How long a claim is held before another pusher may take the rows. It does not grow
    with EA_REQUEST_TIMEOUT: the heartbeat keeps it alive during a long request."""
    return LEASE_SECONDS


def _clock(now: datetime | None) -> Callable[[], datetime]:
    """A pinned start time still advances with real time, so deadlines inside a cycle work."""
    if now is None:
        return utcnow
    start, t0 = as_utc(now), time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - t0)


def _held_back(result: PushResult, state: breaker.BreakerState) -> None:
    result.held_back = True
    result.hold_until = state.probe_at
    result.error = state.last_error or ""
    result.status_code = state.status_code
    if state.state == breaker.CONFIG:
        result.config_error = True
        result.auth_error = state.status_code == 401


def _claim(ctx: CycleContext, state: breaker.BreakerState, probing: bool) -> list[Claimed]:
    """The next round's claim: a batch, or while probing one signal -- not the suspect if
    another is due (only another signal can show the EA is back while the suspect keeps
    failing), the first of its symbol, preferably one that never failed."""
    url, lease = ctx.settings.database_url, ctx.lease
    if not probing:
        return queue.claim_batch(url, ctx.settings.ea_batch_size, lease_seconds=lease, now=ctx.clock())
    claims = queue.claim_batch(url, 1, lease_seconds=lease, now=ctx.clock(), exclude_id=state.suspect_id, probe=True)
    if not claims and state.suspect_id is not None:
        claims = queue.claim_batch(url, 1, lease_seconds=lease, now=ctx.clock(), probe=True)
    if not claims:
        breaker.reschedule_probe(url, ctx.ea, ctx.clock())  # the next signal probes at once
    return claims


def _rounds(ctx: CycleContext, client: Sender) -> None:
    """Claim and send rounds until the queue has nothing due, the breaker holds, or a round
    ends early. A probe that the EA answers is followed by the held signals, in order."""
    url, result = ctx.settings.database_url, ctx.result
    state = breaker.read_state(url, ctx.ea)
    probing = False
    if not state.closed:
        if breaker.claim_probe(url, ctx.ea, now=ctx.clock(), hold_seconds=client.timeout + PROBE_HOLD_MARGIN_SECONDS):
            probing = True
        else:
            _held_back(result, breaker.read_state(url, ctx.ea))
    while not result.held_back:
        claims = _claim(ctx, state, probing)
        if not claims:
            return
        result.claimed += len(claims)
        answered, tried = PushRound(ctx, claims, probing=probing).run()
        if probing and not tried:  # the probe expired or we were stopped: the next signal probes
            breaker.reschedule_probe(url, ctx.ea, ctx.clock())
        if probing and answered and not (ctx.stop is not None and ctx.stop.is_set()):
            probing = False  # the EA is back: the held signals, in order, this cycle
            continue
        return


def push_pending(
    settings: Settings,
    *,
    client: Sender | None = None,
    now: datetime | None = None,
    lease_seconds: float | None = None,
    stop: threading.Event | None = None,
    rng: random.Random | None = None,
    lanes: int = SEND_LANES,
) -> PushResult:
    """One push cycle. Pushes whatever EA_PUSH_ENABLED says (that switch is for the
    automatic callers). ``stop`` ends the cycle after the requests in flight. ``lanes``:
    the most requests in flight at once (1: one at a time)."""
    started = time.monotonic()
    own_client: EAClient | None = None
    if client is None:
        client = own_client = EAClient(settings)
    ctx = CycleContext(
        settings=settings,
        client=client,
        clock=_clock(now),
        lease=lease_seconds if lease_seconds is not None else default_lease_seconds(settings),
        ea=breaker.ea_key(settings.ea_server_url),  # the key /health, /metrics and the sensor read too
        result=PushResult(),
        stop=stop,
        rng=rng,
        lanes=max(1, lanes),
    )
    try:
        _rounds(ctx, client)
        # The claim never takes expired rows, so recording them can wait until the
        # fresh signals are out.
        ctx.result.expired += queue.expire_stale(settings.database_url, now=ctx.clock())
    finally:
        if own_client is not None:
            own_client.close()
    ctx.result.duration_s = time.monotonic() - started
    if ctx.result.sent:
        log.info("📤 Pushed %d signals to EA", ctx.result.sent)
    return ctx.result


def idle_seconds(settings: Settings, result: PushResult | None, *, now: datetime | None = None) -> float:
    """How long the worker waits before the next cycle."""
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
