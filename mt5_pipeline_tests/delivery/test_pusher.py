"""Delivery end to end: the real queue, the reference EA on loopback, pushers in this
process and in separate processes (killed, terminated, racing each other)."""

from __future__ import annotations

import collections
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mt5_pipeline.apps.push_worker import run_push_worker
from mt5_pipeline.delivery import breaker
from mt5_pipeline.delivery.push_round import backoff_seconds
from mt5_pipeline.delivery.pusher import LEASE_SECONDS, idle_seconds, push_pending
from mt5_pipeline.learning.prediction import Prediction
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.generation import generate_signal
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_queue
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.ea_server import BODY_KEYS, ReferenceEA, ServerThread, make_signal, wait_for

REPO = ROOT


@pytest.fixture
def pg_settings(pg_url, settings_for, reference_ea):
    return reference_ea.settings(settings_for(pg_url))


def enqueue(url: str, signals: list[dict]) -> list[dict]:
    assert queue.enqueue_many(url, signals) == len(signals)
    return signals


def rows(url: str) -> list[dict]:
    with get_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(signals_queue).order_by(signals_queue.c.id))]


def by_symbol(n: int, symbols: int, **kw) -> list[dict]:
    """n signals over `symbols` symbols, each symbol's signals together and in bar order."""
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    per = n // symbols
    return [
        make_signal(f"SYM{s:03d}", ts=base - timedelta(minutes=per - i), **kw)
        for s in range(symbols)
        for i in range(per)
    ]


def test_the_ea_receives_the_seeds_body_and_headers(db_url, settings_for, reference_ea, caplog):
    caplog.set_level(logging.INFO, logger="mt5_pipeline")
    s = reference_ea.settings(settings_for(db_url))
    now = datetime.now(timezone.utc)
    bar = now.replace(second=0, microsecond=0) - timedelta(minutes=1)

    def predict(settings, symbol, timeframe):
        return Prediction(symbol, timeframe, bar, 1.0950, 0.785, "v1", now - timedelta(hours=1), "horizon", 5)

    generated = generate_signal(s, "EURUSD", "M1", now=now, predictor=predict)
    assert generated.status == "queued"
    result = push_pending(s)
    assert (result.claimed, result.sent, result.auth_error) == (1, 1, False)

    [(headers, body)] = reference_ea.received
    assert body == generated.signal.to_payload()
    assert list(body) == BODY_KEYS
    assert headers["content-type"] == "application/json"
    assert headers["x-api-key"] == reference_ea.api_key
    assert headers["idempotency-key"] == body["signal_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", body["timestamp"])
    assert (body["sl_pips"], body["tp_pips"]) == (20, 40) and type(body["sl_pips"]) is int
    assert (body["side"], body["confidence"], body["price"]) == ("BUY", 0.785, 1.095)
    assert {"model", "label", "model_version", "probability"} <= set(body["meta"])

    [r] = rows(s.database_url)
    assert (r["status"], r["attempts"], r["ticket"]) == (
        "SENT",
        1,
        reference_ea.ea.by_signal[body["signal_id"]]["ticket"],
    )
    assert r["sent_at"] is not None and r["claim_token"] is None
    assert "✅ Signal sent to EA: EURUSD BUY (confidence: 78.5%)" in caplog.text
    assert "📤 Pushed 1 signals to EA" in caplog.text


def breaker_state(settings):
    return breaker.read_state(settings.database_url, breaker.ea_key(settings.ea_server_url))


def next_cycle_at(settings, at: datetime) -> datetime:
    """When the worker would run its next cycle: the breaker's probe or the next due row
    (the pinned clock jumps there instead of sleeping)."""
    state = breaker_state(settings)
    if not state.closed and state.probe_at is not None:
        return max(at, state.probe_at)
    due = queue.next_due_at(settings.database_url, now=at)
    return max(at, due) if due is not None else at


def drain(settings, t: datetime, *, cycles: int = 60, feed=None) -> datetime:
    """Push cycles on a pinned clock until nothing is pending (``feed(i)`` may queue more)."""
    for i in range(cycles):
        if feed is not None:
            feed(i)
        if queue.count_pending(settings.database_url, now=t) == 0:
            return t
        t = next_cycle_at(settings, t)
        push_pending(settings, now=t)
    raise AssertionError("the queue never drained")


def test_ea_down_holds_every_signal_without_burning_attempts_then_delivers_in_order(pg_settings, reference_ea, caplog):
    caplog.set_level(logging.INFO, logger="mt5_pipeline")
    url = pg_settings.database_url
    signals = enqueue(
        url,
        [
            make_signal(sym, ts=datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=m))
            for m, sym in ((3, "EURUSD"), (2, "GBPUSD"), (1, "EURUSD"))
        ],
    )
    reference_ea.stop()
    t0 = datetime.now(timezone.utc)
    r = push_pending(pg_settings, now=t0)
    assert (r.claimed, r.sent, r.retried, r.released) == (3, 0, 1, 2)
    state = breaker_state(pg_settings)
    assert state.state == "outage" and state.suspect_id is not None and "cannot connect" in state.last_error
    assert t0 < state.probe_at <= t0 + timedelta(seconds=0.5 + r.duration_s)
    assert push_pending(
        pg_settings, now=state.probe_at - timedelta(seconds=0.2)
    ).held_back  # nobody sends until the probe

    # The probe fails too: that is an outage, and the first signal gets its attempt back.
    r = push_pending(pg_settings, now=state.probe_at)
    assert (r.claimed, r.sent, r.outage) == (1, 0, True)
    assert [x["attempts"] for x in rows(url)] == [0, 0, 0]
    assert all(x["status"] == "PENDING" and x["claim_token"] is None for x in rows(url))
    again = breaker_state(pg_settings)
    assert again.failures == 2 and again.suspect_id is None and again.probe_at > state.probe_at

    reference_ea.start()
    # Once the probe and every held signal are due: under load the cycles' own clocks (which
    # run on from `now`) can put a held signal's retry a little past the probe time.
    due = max([again.probe_at, *(x["next_attempt_at"] for x in rows(url))])
    r = push_pending(pg_settings, now=due)
    assert r.sent == 3 and breaker_state(pg_settings).closed
    assert reference_ea.signal_ids() in (
        [s["signal_id"] for s in signals],  # the probe was the oldest, then the rest in order
        [signals[1]["signal_id"], signals[0]["signal_id"], signals[2]["signal_id"]],  # or GBPUSD probed first
    )
    assert [x["attempts"] for x in rows(url)] == [1, 1, 1]  # only the successful sends count
    assert "EA answering again" in caplog.text


def test_a_burst_of_500s_loses_nothing(db_url, settings_for, reference_ea):
    s = reference_ea.settings(settings_for(db_url, ea_max_attempts=5))
    signals = enqueue(db_url, by_symbol(10, 5))
    reference_ea.app_state.fail_next = 10  # the next ten requests fail: twice the attempt budget of any one signal
    drain(s, datetime.now(timezone.utc))
    assert queue.status_counts(db_url)["SENT"] == 10
    assert {x["status"] for x in rows(db_url)} == {"SENT"}
    assert len(reference_ea.ea.positions) == 10
    assert set(reference_ea.ea.by_signal) == {x["signal_id"] for x in signals}
    assert len(reference_ea.received) == 20


def test_an_outage_past_the_attempt_budget_ends_delivered_or_expired_never_failed(pg_url, settings_for, reference_ea):
    # A "20 s" outage on a pinned clock: TTL 12 s for the early signals, 10 min for the rest.
    s = reference_ea.settings(settings_for(pg_url, ea_max_attempts=2, signal_ttl_seconds=12))
    t0 = datetime.now(timezone.utc)
    short = enqueue(pg_url, [make_signal(f"S{i}", expires_at=t0 + timedelta(seconds=12)) for i in range(4)])
    long = enqueue(pg_url, [make_signal(f"L{i}") for i in range(4)])
    reference_ea.stop()
    t = t0
    probes = 0
    while t < t0 + timedelta(seconds=20):
        r = push_pending(s, now=t)
        probes += r.claimed
        t = next_cycle_at(s, t + timedelta(milliseconds=1))
    assert probes >= 5  # many more tries than EA_MAX_ATTEMPTS, one signal at a time
    assert breaker_state(s).failures >= 5
    # The spacing is capped at TTL/12 = 1 s: the EA's return is noticed within a second.
    assert breaker_state(s).probe_at - t <= timedelta(seconds=1)

    reference_ea.start()
    drain(s, t)
    by_id = {x["signal_id"]: x for x in rows(pg_url)}
    assert {by_id[x["signal_id"]]["status"] for x in short} == {"EXPIRED"}
    assert {by_id[x["signal_id"]]["status"] for x in long} == {"SENT"}
    assert queue.status_counts(pg_url)["FAILED"] == 0
    assert set(reference_ea.ea.by_signal) == {x["signal_id"] for x in long}  # the expired ones never reached it


def test_a_poison_signal_is_failed_while_the_others_flow(pg_url, settings_for, reference_ea, caplog):
    s = reference_ea.settings(settings_for(pg_url, ea_max_attempts=3))
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    poison, after = enqueue(
        pg_url,
        [make_signal("EURUSD", ts=base - timedelta(minutes=2)), make_signal("EURUSD", ts=base - timedelta(minutes=1))],
    )
    reference_ea.app_state.poison = {poison["signal_id"]}
    feed: list[dict] = []

    t = start = datetime.now(timezone.utc)

    def live(i: int) -> None:  # the other symbols keep producing signals (due at once on the pinned clock)
        feed.append(make_signal(f"FEED{i:02d}"))
        assert queue.enqueue_many(pg_url, feed[-1:], now=start) == 1

    for i in range(40):
        live(i)
        t = next_cycle_at(s, t + timedelta(seconds=0.5))  # a signal every half second
        push_pending(s, now=t)
        if queue.get_signal(pg_url, poison["signal_id"])["status"] != "PENDING":
            break
    drain(s, t)
    row = queue.get_signal(pg_url, poison["signal_id"])
    assert row["status"] == "FAILED" and row["attempts"] == 3
    assert (
        "gave up after 3 attempts while the EA accepted other signals" in row["last_error"]
        and "EA answered 500" in row["last_error"]
    )
    assert queue.get_signal(pg_url, after["signal_id"])["status"] == "SENT"  # it waited for the poison, then went
    assert {queue.get_signal(pg_url, f["signal_id"])["status"] for f in feed} == {"SENT"}
    assert reference_ea.signal_ids().count(poison["signal_id"]) == 3
    assert f"Giving up on signal {poison['signal_id']}" in caplog.text


def test_a_lone_signal_that_always_fails_expires_rather_than_failing(pg_url, settings_for, reference_ea):
    # With no other signal to show the EA is up, a failing signal cannot be told from an outage.
    s = reference_ea.settings(settings_for(pg_url, ea_max_attempts=2))
    t0 = datetime.now(timezone.utc)
    [sig] = enqueue(pg_url, [make_signal(expires_at=t0 + timedelta(seconds=8))])
    reference_ea.app_state.poison = {sig["signal_id"]}
    t = t0
    while t < t0 + timedelta(seconds=10):
        push_pending(s, now=t)
        t = next_cycle_at(s, t + timedelta(milliseconds=1))
    push_pending(s, now=t)  # past the deadline: the cycle records it EXPIRED
    row = queue.get_signal(pg_url, sig["signal_id"])
    assert row["status"] == "EXPIRED" and row["attempts"] <= 1
    assert reference_ea.signal_ids().count(sig["signal_id"]) >= 3


def test_ea_500_is_retried_with_the_same_signal_id(pg_settings, reference_ea):
    [s] = enqueue(pg_settings.database_url, [make_signal()])
    reference_ea.app_state.status = 500
    t0 = datetime.now(timezone.utc)
    assert push_pending(pg_settings, now=t0).retried == 1
    row = queue.get_signal(pg_settings.database_url, s["signal_id"])
    assert row["status"] == "PENDING" and "EA answered 500" in row["last_error"]
    reference_ea.app_state.status = None
    assert push_pending(pg_settings, now=row["next_attempt_at"]).sent == 1
    assert [h["idempotency-key"] for h, _ in reference_ea.received] == [s["signal_id"]] * 2
    assert reference_ea.signal_ids() == [s["signal_id"]] * 2
    assert len(reference_ea.ea.positions) == 1


def test_ea_says_no_and_the_signal_is_rejected_with_its_message(pg_settings, reference_ea):
    [s] = enqueue(pg_settings.database_url, [make_signal()])
    reference_ea.app_state.reject = "trading disabled for EURUSD"
    assert push_pending(pg_settings).rejected == 1
    row = queue.get_signal(pg_settings.database_url, s["signal_id"])
    assert row["status"] == "REJECTED" and "trading disabled for EURUSD" in row["last_error"]
    assert push_pending(pg_settings).claimed == 0
    assert len(reference_ea.received) == 1


def test_a_signal_past_its_ttl_expires_and_is_never_sent(pg_settings, reference_ea):
    late = make_signal(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    fresh = make_signal("GBPUSD")
    enqueue(pg_settings.database_url, [late, fresh])
    r = push_pending(pg_settings)
    assert (r.expired, r.sent) == (1, 1)
    assert reference_ea.signal_ids() == [fresh["signal_id"]]
    assert queue.get_signal(pg_settings.database_url, late["signal_id"])["status"] == "EXPIRED"


def test_401_stops_the_cycle_and_burns_no_attempts(pg_url, settings_for, reference_ea, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "a-wrong-key-nobody-may-see"
    s = reference_ea.settings(settings_for(pg_url)).replace(ea_api_key=secret)
    enqueue(pg_url, [make_signal(sym) for sym in ("EURUSD", "GBPUSD", "USDJPY")])
    r = push_pending(s)
    assert r.auth_error is True and (r.sent, r.retried, r.released) == (0, 0, 3)
    assert len(reference_ea.received) == 1  # stopped at the first 401
    assert [(x["status"], x["attempts"], x["claim_token"]) for x in rows(pg_url)] == [("PENDING", 0, None)] * 3
    assert any(rec.levelno == logging.ERROR and "401" in rec.getMessage() for rec in caplog.records)
    assert secret not in caplog.text


def test_backoff_grows_with_jitter_and_stays_inside_the_ttl(settings):
    rng = random.Random(7)
    for attempt, (low, high) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0)}.items():
        for _ in range(20):
            assert low <= backoff_seconds(attempt, seconds_left=600, settings=settings, rng=rng) <= high
    # TTL 60 s: never more than half of it, and the retry starts a request timeout before expiry.
    assert backoff_seconds(12, seconds_left=600, settings=settings, rng=rng) <= 30
    assert backoff_seconds(5, seconds_left=15, settings=settings, rng=rng) <= 5
    assert backoff_seconds(1, seconds_left=600, settings=settings, retry_after=9, rng=rng) == 9


def test_a_long_batch_renews_its_lease_so_no_other_pusher_takes_it(pg_url, settings_for, reference_ea):
    s = reference_ea.settings(settings_for(pg_url, ea_request_timeout=1))
    enqueue(pg_url, by_symbol(8, 1))  # one symbol: its signals go one after the other
    reference_ea.app_state.delay = 0.3  # 8 sends take > 2.4 s, longer than the 2 s lease
    results: list = []
    pusher = threading.Thread(target=lambda: results.append(push_pending(s, lease_seconds=2.0)))
    started = datetime.now(timezone.utc)
    pusher.start()
    assert wait_for(lambda: datetime.now(timezone.utc) > started + timedelta(seconds=2.1), timeout=5)
    still_sending = pusher.is_alive()
    rival = queue.claim_batch(pg_url, 10, lease_seconds=30)
    pusher.join(timeout=30)
    assert still_sending and rival == []  # the first lease ran out, but it was renewed
    assert (results[0].sent, results[0].lost) == (8, 0)
    assert len(reference_ea.received) == 8


def test_the_eas_ack_moves_the_signal_to_acked(pg_url, settings_for):
    async def ack(request: Request) -> JSONResponse:
        body = await request.json()
        queue.record_ack(pg_url, body["signal_id"], body["ticket"], body["status"], body["message"])
        return JSONResponse({"success": True})

    api = ServerThread(Starlette(routes=[Route("/ea/ack", ack, methods=["POST"])]))
    api.start()
    ea = ReferenceEA(ack_url=f"{api.base_url}/ea/ack", ack_api_key="k")
    ea.start()
    try:
        s = ea.settings(settings_for(pg_url))
        [sig] = enqueue(pg_url, [make_signal()])
        assert push_pending(s).sent == 1
        assert wait_for(lambda: queue.get_signal(pg_url, sig["signal_id"])["status"] == "ACKED", timeout=10)
        row = queue.get_signal(pg_url, sig["signal_id"])
        assert row["ticket"] == ea.ea.by_signal[sig["signal_id"]]["ticket"] and row["sent_at"] is not None
    finally:
        ea.stop()
        ea.ea.close()
        api.stop()


# ---- the worker ------------------------------------------------------------------------------


def test_worker_wakes_on_notify_instead_of_waiting_for_the_poll(pg_url, settings_for, reference_ea):
    s = reference_ea.settings(settings_for(pg_url, ea_push_interval=600))
    stop = threading.Event()
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(run_push_worker(s, stop=stop)))
    worker.start()
    try:
        wait_for(lambda: False, timeout=1.0)  # let it run its first (empty) cycle and start waiting
        [sig] = enqueue(pg_url, [make_signal()])
        # The next poll is 600 s away: only the NOTIFY can bring this in.
        assert wait_for(lambda: reference_ea.signal_ids() == [sig["signal_id"]], timeout=20)
    finally:
        stop.set()
        worker.join(timeout=20)
    assert codes == [0]
    assert queue.get_signal(pg_url, sig["signal_id"])["status"] == "SENT"


def test_worker_idles_while_pushing_is_disabled(pg_url, settings_for, reference_ea):
    s = reference_ea.settings(settings_for(pg_url, ea_push_enabled="false"))
    enqueue(pg_url, [make_signal()])
    assert run_push_worker(s, once=True) == 0
    assert reference_ea.received == []
    assert queue.status_counts(pg_url)["PENDING"] == 1


@pytest.mark.parametrize("push_enabled", ["true", "false"])
def test_expiry_runs_in_push_and_in_pull_mode(db_url, settings_for, reference_ea, push_enabled):
    """Pull mode sends nothing, yet a signal nobody fetched or acked still ends EXPIRED at its deadline."""
    s = reference_ea.settings(settings_for(db_url, ea_push_enabled=push_enabled))
    now = datetime.now(timezone.utc)
    late, fresh = make_signal(expires_at=now - timedelta(seconds=1)), make_signal("GBPUSD", ttl=600)
    enqueue(db_url, [late, fresh])
    stop = threading.Event()
    worker = threading.Thread(target=run_push_worker, args=(s,), kwargs={"stop": stop, "listen": False}, daemon=True)
    worker.start()
    try:
        assert wait_for(lambda: queue.get_signal(db_url, late["signal_id"])["status"] == "EXPIRED", timeout=10)
    finally:
        stop.set()
        worker.join(10)
    assert queue.get_signal(db_url, fresh["signal_id"])["status"] in (
        ("SENT", "ACKED") if push_enabled == "true" else ("PENDING",)
    )
    assert late["signal_id"] not in reference_ea.signal_ids()


def env_for(url: str, ea: ReferenceEA, **extra) -> dict:
    env = dict(os.environ)
    env.update({"DATABASE_URL": url, "EA_SERVER_URL": ea.url, "EA_API_KEY": ea.api_key, "LOG_LEVEL": "INFO"})
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


def test_the_seeds_worker_entry_point_runs_from_the_repo_and_from_api(sqlite_url, reference_ea, tmp_path):
    env = env_for(sqlite_url, reference_ea)
    for cwd, script in ((REPO, "api/run_ea_pusher.py"), (REPO / "api", "run_ea_pusher.py")):
        [sig] = enqueue(
            sqlite_url, [make_signal(ts=datetime.now(timezone.utc) - timedelta(minutes=len(reference_ea.received) + 1))]
        )
        done = subprocess.run(
            [sys.executable, script, "--once"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert reference_ea.signal_ids()[-1] == sig["signal_id"]
        assert "📤 Pushed 1 signals to EA" in done.stderr
    assert queue.status_counts(sqlite_url)["SENT"] == 2


PUSH_LOOP = """
import sys, time
from mt5_pipeline.delivery import breaker
from mt5_pipeline.signals import queue
from mt5_pipeline.delivery.pusher import push_pending
from mt5_pipeline.settings import load_settings

settings = load_settings(env_file=None)
lease = float(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # wait for "go"
sent = 0
while True:
    r = push_pending(settings, lease_seconds=lease)
    sent += r.sent
    if r.claimed == 0:
        if queue.count_pending(settings.database_url) == 0:
            break
        time.sleep(0.05)
print("sent", sent, flush=True)
"""


def start_pusher(tmp_path: Path, env: dict, lease: float) -> subprocess.Popen:
    script = tmp_path / "push_loop.py"
    script.write_text(PUSH_LOOP)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(lease)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def go(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


@pytest.mark.slow
def test_two_pusher_processes_deliver_each_of_500_signals_once(pg_url, reference_ea, tmp_path):
    signals = enqueue(pg_url, by_symbol(500, 50))
    env = env_for(pg_url, reference_ea, ea_batch_size=20, log_level="WARNING")
    a, b = start_pusher(tmp_path, env, 30), start_pusher(tmp_path, env, 30)
    go(a, b)
    outs = [p.communicate(timeout=120) for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [0, 0], [o[1][-2000:] for o in outs]
    sent = [int(o[0].split()[-1]) for o in outs]
    assert sum(sent) == 500 and min(sent) > 0  # both really took part
    counts = collections.Counter(reference_ea.signal_ids())
    assert set(counts) == {s["signal_id"] for s in signals}
    twice = [(r["symbol"], r["attempts"], r["last_error"]) for r in rows(pg_url) if counts[r["signal_id"]] > 1]
    assert twice == [], (twice, [o[1][-3000:] for o in outs])
    assert queue.status_counts(pg_url)["SENT"] == 500


@pytest.mark.slow
def test_a_pusher_killed_mid_batch_loses_nothing_after_restart(pg_url, reference_ea, tmp_path):
    signals = enqueue(pg_url, by_symbol(150, 30))
    env = env_for(pg_url, reference_ea, ea_batch_size=100, ea_request_timeout=1, log_level="WARNING")
    reference_ea.app_state.delay = 0.01
    lease = 3.0
    a = start_pusher(tmp_path, env, lease)
    go(a)
    assert wait_for(lambda: len(reference_ea.received) >= 30, timeout=30)
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    with get_engine(pg_url).connect() as conn:
        leased = conn.execute(
            select(func.count()).select_from(signals_queue).where(signals_queue.c.claim_token.is_not(None))
        ).scalar_one()
    assert leased > 0  # it died holding claims

    b = start_pusher(tmp_path, env, lease)
    go(b)
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err[-2000:]
    ids = [s["signal_id"] for s in signals]
    # SIGKILL can cut a request mid-body: the EA then reads a truncated, unparsable body
    # (refused, nothing traded). That is not a delivery, so it is left out of the count.
    whole = [(headers, body) for headers, body in reference_ea.received if isinstance(body, dict)]
    cut = len(reference_ea.received) - len(whole)
    assert cut <= 1, f"{cut} truncated requests: only the one in flight at the kill can be cut"
    counts = collections.Counter(body.get("signal_id") for _, body in whole)
    assert set(counts) == set(ids)  # every signal received
    for headers, body in whole:
        if counts[body["signal_id"]] > 1:  # a repeat carries the same signal_id and key
            assert headers["idempotency-key"] == body["signal_id"]
    assert len(reference_ea.ea.positions) == 150  # the EA's dedupe: one position each
    assert queue.status_counts(pg_url)["SENT"] == 150


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_and_releases_claims(pg_url, reference_ea, tmp_path):
    enqueue(pg_url, by_symbol(40, 4))
    reference_ea.app_state.delay = 0.05
    env = env_for(pg_url, reference_ea, ea_push_interval=30)
    worker = subprocess.Popen(
        [sys.executable, "-m", "mt5_pipeline.apps.cli", "push"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: len(reference_ea.received) >= 3, timeout=30)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err[-2000:]
    assert "SIGTERM" in err and "EA pusher stopped" in err
    table = rows(pg_url)
    assert all(r["claim_token"] is None for r in table)
    sent = {r["signal_id"] for r in table if r["status"] == "SENT"}
    assert sent == set(reference_ea.signal_ids())  # what reached the EA is recorded as sent
    assert all(r["attempts"] == 0 for r in table if r["status"] == "PENDING")
    assert 3 <= len(sent) < 40


PUSH_ONCE = """
from mt5_pipeline.delivery.pusher import push_pending
from mt5_pipeline.settings import load_settings

settings = load_settings(env_file=None)
print("ready", flush=True)
push_pending(settings)
print("done", flush=True)
"""


@pytest.mark.slow
def test_a_pusher_killed_mid_request_is_taken_over_within_the_short_lease(pg_url, settings_for, reference_ea, tmp_path):
    [sig] = enqueue(pg_url, [make_signal()])
    reference_ea.app_state.delay = 6.0  # the EA sits on the request longer than a lease
    script = tmp_path / "push_once.py"
    script.write_text(PUSH_ONCE)
    env = env_for(pg_url, reference_ea, ea_request_timeout=30, log_level="WARNING")
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for(lambda: len(reference_ea.received) == 1, timeout=30)
        first_lease = queue.get_signal(pg_url, sig["signal_id"])["lease_until"]
        # The heartbeat renews the lease while the request is in flight.
        assert wait_for(lambda: queue.get_signal(pg_url, sig["signal_id"])["lease_until"] > first_lease, timeout=10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = datetime.now(timezone.utc)
    row = queue.get_signal(pg_url, sig["signal_id"])
    assert proc.returncode == -signal.SIGKILL and row["status"] == "PENDING" and row["claim_token"] is not None
    assert row["lease_until"] <= killed_at + timedelta(seconds=LEASE_SECONDS)  # free again within 5 s of the kill
    assert queue.claim_batch(pg_url, 10, lease_seconds=LEASE_SECONDS, now=killed_at) == []  # not before

    reference_ea.app_state.delay = 0
    s = reference_ea.settings(settings_for(pg_url))
    r = push_pending(s, now=row["lease_until"] + timedelta(milliseconds=1))
    assert (r.claimed, r.sent) == (1, 1)
    assert reference_ea.signal_ids() == [sig["signal_id"]] * 2  # the same signal_id, twice
    assert wait_for(lambda: reference_ea.ea.requests == 2, timeout=15)  # the hung first request completes too
    assert len(reference_ea.ea.positions) == 1  # the EA's dedupe: one position
    assert queue.get_signal(pg_url, sig["signal_id"])["status"] == "SENT"


@pytest.mark.parametrize(("fault", "status"), [("/signal", 404), ("/health", 405), (403, 403), (415, 415)])
def test_configuration_errors_stop_the_cycle_and_keep_the_signals_pending(
    pg_url, settings_for, reference_ea, caplog, fault, status
):
    caplog.set_level(logging.INFO, logger="mt5_pipeline")
    s = reference_ea.settings(settings_for(pg_url))
    if isinstance(fault, str):  # a wrong path in EA_SERVER_URL: the EA's own 404 or 405
        s = s.replace(ea_server_url_override=reference_ea.base_url + fault)
    else:
        reference_ea.app_state.status = fault
    enqueue(pg_url, [make_signal(sym) for sym in ("EURUSD", "GBPUSD", "USDJPY")])
    r = push_pending(s)
    assert (
        r.config_error
        and r.status_code == status
        and (r.sent, r.rejected, r.retried, r.failed, r.released) == (0, 0, 0, 0, 3)
    )
    assert f"({status})" in r.error and s.ea_server_url in r.error
    assert [(x["status"], x["attempts"], x["claim_token"]) for x in rows(pg_url)] == [("PENDING", 0, None)] * 3
    assert any(rec.levelno == logging.ERROR and f"({status})" in rec.getMessage() for rec in caplog.records)
    state = breaker_state(s)
    assert (state.state, state.status_code) == ("config", status)
    assert len(reference_ea.received) == (0 if isinstance(fault, str) else 1)  # stopped at the first answer
    # Well before the next probe is due (the cycle's clock runs on from `now`: building the
    # client alone takes ~0.15 s, so a margin of a fraction of a second made this test racy).
    held = push_pending(s, now=state.probe_at - timedelta(seconds=3))
    assert held.held_back and held.config_error and held.claimed == 0
    if isinstance(fault, int):  # fixed on the EA's side: the next probe delivers everything, in order
        reference_ea.app_state.status = None
        assert push_pending(s, now=state.probe_at).sent == 3
        assert breaker_state(s).closed


def test_a_422_on_a_well_formed_signal_stays_the_eas_rejection(pg_settings, reference_ea):
    [sig] = enqueue(pg_settings.database_url, [make_signal()])
    reference_ea.app_state.status = 422
    reference_ea.app_state.reject = "lot size below the broker's minimum"
    r = push_pending(pg_settings)
    assert (r.rejected, r.config_error) == (1, False) and breaker_state(pg_settings).closed
    row = queue.get_signal(pg_settings.database_url, sig["signal_id"])
    assert row["status"] == "REJECTED" and "lot size below the broker's minimum" in row["last_error"]


def test_the_worker_waits_for_the_breakers_probe_not_the_poll(pg_url, settings_for, reference_ea):

    s = reference_ea.settings(settings_for(pg_url, ea_push_interval=600))
    enqueue(pg_url, [make_signal()])
    reference_ea.stop()
    t0 = datetime.now(timezone.utc)
    r = push_pending(s, now=t0)
    assert r.hold_until == breaker_state(s).probe_at
    assert 0 < idle_seconds(s, r, now=t0) <= 0.5 + r.duration_s  # the probe, not EA_PUSH_INTERVAL=600
    reference_ea.start()


def test_a_backlog_behind_a_retrying_signal_does_not_hide_the_other_symbols(pg_url, settings_for, reference_ea):
    s = reference_ea.settings(settings_for(pg_url, ea_batch_size=5))
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    stuck = enqueue(pg_url, [make_signal("EURUSD", ts=base - timedelta(minutes=30 - i)) for i in range(20)])
    other = enqueue(pg_url, [make_signal("GBPUSD")])
    with get_engine(pg_url).begin() as conn:  # the first EURUSD signal waits for its retry
        conn.execute(
            signals_queue.update()
            .where(signals_queue.c.signal_id == stuck[0]["signal_id"])
            .values(next_attempt_at=base + timedelta(hours=1))
        )
    # More than a batch of EURUSD rows waits behind it; GBPUSD is still found and sent.
    r = push_pending(s)
    assert (r.claimed, r.sent) == (1, 1)
    assert reference_ea.signal_ids() == [other[0]["signal_id"]]


def test_a_signal_the_ea_refuses_as_too_late_is_expired_not_rejected(pg_settings, reference_ea):
    # The deadline passes while the request is on its way (the EA sits on it for a moment).
    [sig] = enqueue(
        pg_settings.database_url, [make_signal(expires_at=datetime.now(timezone.utc) + timedelta(seconds=2))]
    )
    reference_ea.app_state.delay = 3.0
    r = push_pending(pg_settings)
    assert (r.expired, r.rejected, r.sent) == (1, 0, 0)
    row = queue.get_signal(pg_settings.database_url, sig["signal_id"])
    assert (
        row["status"] == "EXPIRED"
        and "expired on its way to the EA" in row["last_error"]
        and "not traded" in row["last_error"]
    )
    assert reference_ea.ea.positions == {}


def test_the_breaker_is_shared_and_only_one_pusher_probes(db_url):
    ea = breaker.ea_key("https://user:secret@ea.example:8443/signals?x=1")
    assert ea == "https://ea.example:8443/signals"  # no user info (a secret) in the key
    t0 = datetime.now(timezone.utc)
    f = breaker.record_failure(
        db_url,
        ea,
        kind=breaker.OUTAGE,
        signal_row_id=None,
        chargeable=False,
        error="down",
        status_code=None,
        ttl_seconds=60,
        now=t0,
    )
    assert breaker.read_state(db_url, ea).holds(t0) and not breaker.claim_probe(db_url, ea, now=t0, hold_seconds=5)
    assert breaker.claim_probe(db_url, ea, now=f.probe_at, hold_seconds=5)  # the first pusher at probe time
    assert not breaker.claim_probe(db_url, ea, now=f.probe_at, hold_seconds=5)  # the second waits
    assert breaker.record_success(db_url, ea, max_attempts=5).previous.state == "outage"
    assert breaker.read_state(db_url, ea).closed and breaker.record_success(db_url, ea, max_attempts=5) is None


def test_probe_spacing_doubles_and_is_capped_by_the_ttl():
    rng = random.Random(3)
    assert 0.25 <= breaker.probe_spacing(1, ttl_seconds=60, rng=rng) <= 0.5
    assert 1.0 <= breaker.probe_spacing(3, ttl_seconds=60, rng=rng) <= 2.0
    assert breaker.probe_spacing(20, ttl_seconds=60, rng=rng) <= 5.0  # min(5 s, TTL/12)
    assert breaker.probe_spacing(20, ttl_seconds=12, rng=rng) <= 1.0
    assert breaker.probe_spacing(1, ttl_seconds=60, retry_after=3, rng=rng) == 3.0


# ---- several requests in flight (delivery/push_round's lanes) -------------------------------


def test_lanes_overlap_requests_across_symbols_and_keep_each_symbols_order(pg_settings, reference_ea):
    url = pg_settings.database_url
    signals = enqueue(url, by_symbol(24, 4))
    reference_ea.app_state.delay = 0.05
    r = push_pending(pg_settings)
    assert (r.claimed, r.sent, r.released) == (24, 24, 0)
    received = reference_ea.signal_ids()
    for symbol in {s["symbol"] for s in signals}:
        queued = [s["signal_id"] for s in signals if s["symbol"] == symbol]
        assert [sid for sid in received if sid in queued] == queued  # each symbol in its queue order
    assert received[0] == signals[0]["signal_id"]  # the round's first request went alone
    assert len(set(reference_ea.peers)) > 1  # more than one connection: requests were in flight together


def test_two_lanes_failing_at_once_open_the_breaker_once_and_charge_one_signal(pg_settings, reference_ea):
    url = pg_settings.database_url
    signals = enqueue(url, by_symbol(12, 3))  # SYM000 x4, SYM001 x4, SYM002 x4
    heads = {signals[4]["signal_id"], signals[8]["signal_id"]}  # the first of SYM001 and of SYM002
    reference_ea.app_state.poison = heads
    reference_ea.app_state.delay = 1.0  # both heads are in flight before either answers
    r = push_pending(pg_settings)
    assert (r.retried, r.outage) == (1, False)  # one failure is the breaker's ...
    state = breaker_state(pg_settings)
    assert state.state == "outage" and state.failures == 1
    by_id = {x["signal_id"]: x for x in rows(url)}
    charged = [sid for sid in heads if by_id[sid]["attempts"] == 1]
    assert len(charged) == 1 and by_id[charged[0]]["id"] == state.suspect_id
    [spared] = heads - set(charged)  # ... the other failed beside it: given back, attempt undone
    assert by_id[spared]["status"] == "PENDING" and by_id[spared]["attempts"] == 0
    assert "EA answered 500" in by_id[spared]["last_error"]
    received = reference_ea.signal_ids()
    for head in heads:  # nothing of a failed symbol was sent after its failure
        later = [s["signal_id"] for s in signals if s["symbol"] == by_id[head]["symbol"]][1:]
        assert not set(later) & set(received)
    assert all(x["claim_token"] is None for x in rows(url))
    assert r.sent + r.retried + r.released == 12
