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

from mt5_pipeline import queue
from mt5_pipeline.model import Prediction
from mt5_pipeline.pusher import backoff_seconds, push_pending, run_worker
from mt5_pipeline.signals import generate_signal
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_queue
from mt5_pipeline_tests.ea_server import ReferenceEA, ServerThread, make_signal, wait_for

REPO = Path(__file__).resolve().parent.parent
SEED_KEYS = ["signal_id", "timestamp", "symbol", "timeframe", "side", "confidence", "sl_pips", "tp_pips", "price", "meta"]


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
    return [make_signal(f"SYM{s:03d}", ts=base - timedelta(minutes=per - i), **kw) for s in range(symbols) for i in range(per)]


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
    assert list(body) == SEED_KEYS + ["expires_at"]
    assert headers["content-type"] == "application/json"
    assert headers["x-api-key"] == reference_ea.api_key
    assert headers["idempotency-key"] == body["signal_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", body["timestamp"])
    assert (body["sl_pips"], body["tp_pips"]) == (20, 40) and type(body["sl_pips"]) is int
    assert (body["side"], body["confidence"], body["price"]) == ("BUY", 0.785, 1.095)
    assert {"model", "label", "model_version", "probability"} <= set(body["meta"])

    [r] = rows(s.database_url)
    assert (r["status"], r["attempts"], r["ticket"]) == ("SENT", 1, reference_ea.ea.by_signal[body["signal_id"]]["ticket"])
    assert r["sent_at"] is not None and r["claim_token"] is None
    assert "✅ Signal sent to EA: EURUSD BUY (confidence: 78.5%)" in caplog.text
    assert "📤 Pushed 1 signals to EA" in caplog.text


def test_ea_down_retries_with_backoff_then_delivers(pg_settings, reference_ea):
    url = pg_settings.database_url
    eur, gbp, jpy = enqueue(url, [make_signal(sym) for sym in ("EURUSD", "GBPUSD", "USDJPY")])
    reference_ea.stop()
    t0 = datetime.now(timezone.utc)
    r = push_pending(pg_settings, now=t0)
    assert (r.claimed, r.sent, r.retried, r.released) == (3, 0, 1, 2)
    first = queue.get_signal(url, eur["signal_id"])
    assert (first["status"], first["attempts"]) == ("PENDING", 1)
    assert "cannot connect" in first["last_error"]
    retry_at = first["next_attempt_at"]
    assert t0 + timedelta(seconds=0.5) <= retry_at <= t0 + timedelta(seconds=2)
    for other in (gbp, jpy):  # held back with it, untried, no attempt counted
        o = queue.get_signal(url, other["signal_id"])
        assert (o["attempts"], o["next_attempt_at"], o["claim_token"]) == (0, retry_at, None)
    assert push_pending(pg_settings, now=t0 + timedelta(seconds=0.4)).claimed == 0  # backing off

    reference_ea.start()
    r = push_pending(pg_settings, now=retry_at)
    assert r.sent == 3
    assert sorted(reference_ea.signal_ids()) == sorted(s["signal_id"] for s in (eur, gbp, jpy))
    assert queue.get_signal(url, eur["signal_id"])["attempts"] == 2


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


def test_gives_up_after_ea_max_attempts(pg_url, settings_for, reference_ea):
    s = reference_ea.settings(settings_for(pg_url, ea_max_attempts=2))
    [sig] = enqueue(pg_url, [make_signal()])
    reference_ea.app_state.status = 503
    t0 = datetime.now(timezone.utc)
    push_pending(s, now=t0)
    due = queue.get_signal(pg_url, sig["signal_id"])["next_attempt_at"]
    assert push_pending(s, now=due).failed == 1
    row = queue.get_signal(pg_url, sig["signal_id"])
    assert row["status"] == "FAILED" and "gave up after 2 attempts" in row["last_error"]


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
    enqueue(pg_url, [make_signal(f"SYM{i}") for i in range(8)])
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
    worker = threading.Thread(target=lambda: codes.append(run_worker(s, stop=stop)))
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
    assert run_worker(s, once=True) == 0
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
    worker = threading.Thread(target=run_worker, args=(s,), kwargs={"stop": stop, "listen": False}, daemon=True)
    worker.start()
    try:
        assert wait_for(lambda: queue.get_signal(db_url, late["signal_id"])["status"] == "EXPIRED", timeout=10)
    finally:
        stop.set()
        worker.join(10)
    assert queue.get_signal(db_url, fresh["signal_id"])["status"] in (("SENT", "ACKED") if push_enabled == "true" else ("PENDING",))
    assert late["signal_id"] not in reference_ea.signal_ids()


def env_for(url: str, ea: ReferenceEA, **extra) -> dict:
    env = dict(os.environ)
    env.update({"DATABASE_URL": url, "EA_SERVER_URL": ea.url, "EA_API_KEY": ea.api_key, "LOG_LEVEL": "INFO"})
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


def test_the_seeds_worker_entry_point_runs_from_the_repo_and_from_api(sqlite_url, reference_ea, tmp_path):
    env = env_for(sqlite_url, reference_ea)
    for cwd, script in ((REPO, "api/run_ea_pusher.py"), (REPO / "api", "run_ea_pusher.py")):
        [sig] = enqueue(sqlite_url, [make_signal(ts=datetime.now(timezone.utc) - timedelta(minutes=len(reference_ea.received) + 1))])
        done = subprocess.run([sys.executable, script, "--once"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert reference_ea.signal_ids()[-1] == sig["signal_id"]
        assert "📤 Pushed 1 signals to EA" in done.stderr
    assert queue.status_counts(sqlite_url)["SENT"] == 2


PUSH_LOOP = """
import sys, time
from mt5_pipeline import queue
from mt5_pipeline.pusher import push_pending
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
        [sys.executable, str(script), str(lease)], cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
    assert set(counts.values()) == {1}
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
        leased = conn.execute(select(func.count()).select_from(signals_queue).where(signals_queue.c.claim_token.is_not(None))).scalar_one()
    assert leased > 0  # it died holding claims

    b = start_pusher(tmp_path, env, lease)
    go(b)
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err[-2000:]
    ids = [s["signal_id"] for s in signals]
    counts = collections.Counter(reference_ea.signal_ids())
    assert set(counts) == set(ids)  # every signal received
    for headers, body in reference_ea.received:
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
        [sys.executable, "-m", "mt5_pipeline.cli", "push"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
