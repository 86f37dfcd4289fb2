"""The signals outbox on both backends: one signal per bar, claims with lease and token,
order per symbol, expiry, acks; PostgreSQL's SKIP LOCKED and NOTIFY."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.exc import IntegrityError

from mt5_pipeline.clock import iso_z, utcnow
from mt5_pipeline.execution.trade_signal import PAYLOAD_KEYS
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.queue import UnknownSignalError
from mt5_pipeline.signals.queue_enqueue import row_values
from mt5_pipeline.storage.engine import get_engine, psycopg_conninfo
from mt5_pipeline.storage.schema import signals_ack, signals_queue
from mt5_pipeline_tests.ea_server import make_signal

T0 = datetime.now(timezone.utc).replace(microsecond=0)
BAR = T0.replace(second=0) - timedelta(minutes=1)


def bar(i: int) -> datetime:
    return BAR - timedelta(minutes=i)


def queued(url: str, n: int, symbol: str = "EURUSD", **kw) -> list[dict]:
    signals = [make_signal(symbol, ts=bar(n - i), **kw) for i in range(n)]  # oldest bar first
    assert queue.enqueue_many(url, signals, now=T0) == n
    return signals


def row(url: str, signal_id: str) -> dict:
    found = queue.get_signal(url, signal_id)
    assert found is not None
    return found


def test_one_signal_per_bar_whatever_the_model_version_is_the_databases_rule(db_url):
    first = make_signal(ts=BAR)
    assert queue.enqueue(db_url, first, now=T0) is True
    again = make_signal(ts=BAR)  # a new signal_id, same bar and model
    assert queue.enqueue(db_url, again, now=T0) is False
    # A retrained model is no licence for a second signal on the same bar.
    assert queue.enqueue(db_url, make_signal(ts=BAR, model_version="v-other"), now=T0) is False
    assert queue.enqueue(db_url, first, now=T0) is False  # the same signal_id twice
    assert queue.enqueue(db_url, make_signal(ts=BAR, timeframe="M5"), now=T0) is True  # another series' bar
    # Not only a check in Python: a plain INSERT of a second signal for the bar fails.
    values = row_values(make_signal(ts=BAR, model_version="v-third"), T0)
    with pytest.raises(IntegrityError):
        with get_engine(db_url).begin() as conn:
            conn.execute(insert(signals_queue).values(**values))
    assert queue.status_counts(db_url)["PENDING"] == 2
    assert queue.find_bar_signal(db_url, "EURUSD", "M1", BAR).signal_id == first["signal_id"]


def test_payload_round_trips_in_the_seeds_shape(db_url):
    signal = make_signal(ts=BAR)
    queue.enqueue(db_url, signal, now=T0)
    [payload] = [s.to_payload() for s in queue.pending_for_pull(db_url, now=T0)]
    assert payload == signal
    assert list(payload) == list(PAYLOAD_KEYS)
    assert isinstance(payload["sl_pips"], int) and payload["timestamp"].endswith("Z")


def test_claim_takes_oldest_first_up_to_the_limit_and_leases(db_url):
    signals = [make_signal(sym, ts=BAR) for sym in ("EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF")]
    for s in signals:
        queue.enqueue(db_url, s, now=T0)
    first = queue.claim_batch(db_url, 3, lease_seconds=30, now=T0)
    assert [c.signal_id for c in first] == [s["signal_id"] for s in signals[:3]]
    assert {c.attempts for c in first} == {1}
    assert len({c.claim_token for c in first}) == 1
    second = queue.claim_batch(db_url, 10, lease_seconds=30, now=T0)
    assert [c.signal_id for c in second] == [s["signal_id"] for s in signals[3:]]
    assert queue.claim_batch(db_url, 10, lease_seconds=30, now=T0) == []
    # A pusher that died leaves leases that run out; the rows come back, same signal_id.
    later = queue.claim_batch(db_url, 10, lease_seconds=30, now=T0 + timedelta(seconds=31))
    assert [c.signal_id for c in later] == [s["signal_id"] for s in signals]
    assert {c.attempts for c in later} == {2}
    assert later[0].payload == signals[0]


def test_a_pusher_that_lost_its_lease_cannot_overwrite(db_url):
    [s] = queued(db_url, 1)
    [stale] = queue.claim_batch(db_url, 10, lease_seconds=5, now=T0)
    [fresh] = queue.claim_batch(db_url, 10, lease_seconds=5, now=T0 + timedelta(seconds=6))
    assert stale.claim_token != fresh.claim_token
    assert queue.mark_rejected(db_url, stale.id, stale.claim_token, "late", now=T0) is False
    assert queue.mark_sent(db_url, stale.id, stale.claim_token, 1, now=T0) is False
    assert queue.release_claims(db_url, stale.claim_token) == 0
    assert row(db_url, s["signal_id"])["status"] == "PENDING"
    assert queue.mark_sent(db_url, fresh.id, fresh.claim_token, 777, now=T0) is True
    r = row(db_url, s["signal_id"])
    assert (r["status"], r["ticket"], r["claim_token"], r["lease_until"]) == ("SENT", 777, None, None)
    assert r["sent_at"] is not None


def test_order_per_symbol_a_later_signal_waits_for_an_earlier_one(db_url):
    eur = queued(db_url, 3, "EURUSD")
    gbp = queued(db_url, 1, "GBPUSD")
    [head] = queue.claim_batch(db_url, 1, lease_seconds=30, now=T0)
    assert head.signal_id == eur[0]["signal_id"]
    # EURUSD's later signals are behind a leased one: only GBPUSD may go.
    assert [c.signal_id for c in queue.claim_batch(db_url, 10, lease_seconds=30, now=T0)] == [gbp[0]["signal_id"]]
    retry_at = T0 + timedelta(seconds=5)
    assert queue.mark_retry(db_url, head.id, head.claim_token, "EA down", retry_at, now=T0)
    # Still behind it while it waits for its retry.
    assert queue.claim_batch(db_url, 10, lease_seconds=30, now=T0 + timedelta(seconds=1)) == []
    assert queue.next_due_at(db_url, now=T0 + timedelta(seconds=1)) == retry_at
    after = queue.claim_batch(db_url, 10, lease_seconds=30, now=retry_at)
    assert [c.signal_id for c in after] == [s["signal_id"] for s in eur]
    assert [c.attempts for c in after] == [2, 1, 1]


def test_an_expired_earlier_signal_does_not_block_its_symbol(db_url):
    old = make_signal(ts=bar(2), expires_at=T0 + timedelta(seconds=1))
    new = make_signal(ts=bar(1))
    queue.enqueue_many(db_url, [old, new], now=T0)
    [held] = queue.claim_batch(db_url, 1, lease_seconds=30, now=T0)
    assert held.signal_id == old["signal_id"]
    assert queue.mark_retry(db_url, held.id, held.claim_token, "x", T0 + timedelta(seconds=10), now=T0)
    later = T0 + timedelta(seconds=2)
    assert [c.signal_id for c in queue.claim_batch(db_url, 10, lease_seconds=30, now=later)] == [new["signal_id"]]
    assert queue.expire_stale(db_url, now=later) == 1
    assert row(db_url, old["signal_id"])["status"] == "EXPIRED"


def test_release_gives_back_untried_rows_without_counting_the_attempt(db_url):
    signals = [make_signal(sym, ts=BAR) for sym in ("EURUSD", "GBPUSD")]
    queue.enqueue_many(db_url, signals, now=T0)
    claims = queue.claim_batch(db_url, 10, lease_seconds=30, now=T0)
    hold = T0 + timedelta(seconds=7)
    assert queue.release_claims(db_url, claims[0].claim_token, not_before=hold) == 2
    for s in signals:
        r = row(db_url, s["signal_id"])
        assert (r["attempts"], r["claim_token"], r["lease_until"], r["next_attempt_at"]) == (0, None, None, hold)
    assert queue.claim_batch(db_url, 10, lease_seconds=30, now=T0) == []
    assert len(queue.claim_batch(db_url, 10, lease_seconds=30, now=hold)) == 2


def test_expire_stale_never_sends_late_signals_and_leaves_leased_rows_to_their_holder(db_url):
    late = make_signal(ts=bar(3), expires_at=T0 - timedelta(seconds=1))
    leased = make_signal("GBPUSD", ts=bar(2), expires_at=T0 + timedelta(seconds=2))
    queue.enqueue_many(db_url, [late, leased], now=T0 - timedelta(seconds=5))
    [held] = queue.claim_batch(db_url, 10, lease_seconds=30, now=T0)
    assert held.signal_id == leased["signal_id"]  # the late one is never claimable
    assert queue.expire_stale(db_url, now=T0 + timedelta(seconds=5)) == 1
    assert row(db_url, late["signal_id"])["status"] == "EXPIRED"
    assert row(db_url, leased["signal_id"])["status"] == "PENDING"
    assert queue.mark_expired(db_url, held.id, held.claim_token, now=T0 + timedelta(seconds=5))
    assert row(db_url, leased["signal_id"])["status"] == "EXPIRED"


def test_record_ack_moves_to_acked_repeats_harmlessly_and_refuses_unknown_ids(db_url):
    sent, pulled, refused = (make_signal(sym, ts=BAR) for sym in ("EURUSD", "GBPUSD", "USDJPY"))
    queue.enqueue_many(db_url, [sent, pulled, refused], now=T0)
    claims = {c.signal_id: c for c in queue.claim_batch(db_url, 10, lease_seconds=30, now=T0)}
    c = claims[sent["signal_id"]]
    assert queue.mark_sent(db_url, c.id, c.claim_token, 4242, now=T0)
    r = claims[refused["signal_id"]]
    assert queue.mark_rejected(db_url, r.id, r.claim_token, "EA refused: market closed", now=T0)

    first = queue.record_ack(db_url, sent["signal_id"], 4242, "FILLED", "ok", now=T0)
    assert first["status"] == "ACKED" and first["repeated"] is False
    again = queue.record_ack(db_url, sent["signal_id"], 4242, "FILLED", "ok", now=T0 + timedelta(seconds=9))
    assert again["status"] == "ACKED" and again["repeated"] is True
    r1 = row(db_url, sent["signal_id"])
    assert (r1["status"], r1["ticket"], r1["acked_at"]) == ("ACKED", 4242, T0)
    with get_engine(db_url).connect() as conn:
        acks = conn.execute(select(signals_ack).where(signals_ack.c.signal_id == sent["signal_id"])).all()
    assert len(acks) == 1 and acks[0].status == "FILLED"

    # Pull mode: the EA took a PENDING signal from GET /ea/signals and acks it.
    assert queue.record_ack(db_url, pulled["signal_id"], 99, "FILLED", now=T0)["status"] == "ACKED"
    # A signal the EA refused stays REJECTED; its ack is still kept.
    assert queue.record_ack(db_url, refused["signal_id"], None, "REJECTED", "no", now=T0)["status"] == "REJECTED"
    with pytest.raises(ValueError, match="status: expected one of FILLED"):
        queue.record_ack(db_url, refused["signal_id"], None, "ERROR", "no", now=T0)

    with pytest.raises(UnknownSignalError, match="unknown signal_id"):
        queue.record_ack(db_url, "00000000-0000-4000-8000-000000000000", 1, "FILLED", now=T0)
    with pytest.raises(ValueError, match="status"):
        queue.record_ack(db_url, sent["signal_id"], 1, "", now=T0)


def test_an_ack_that_beats_the_pushers_own_update_is_kept(db_url):
    [s] = queued(db_url, 1)
    [c] = queue.claim_batch(db_url, 10, lease_seconds=30, now=T0)
    queue.record_ack(db_url, s["signal_id"], 555, "FILLED", now=T0)  # the EA's ack lands first
    assert queue.mark_sent(db_url, c.id, c.claim_token, 555, now=T0)
    r = row(db_url, s["signal_id"])
    assert (r["status"], r["ticket"], r["claim_token"]) == ("ACKED", 555, None)
    assert r["sent_at"] is not None


def test_status_views(db_url):
    signals = queued(db_url, 3)
    [c] = queue.claim_batch(db_url, 1, lease_seconds=30, now=T0)
    queue.mark_sent(db_url, c.id, c.claim_token, 1, now=T0)
    status = queue.queue_status(db_url, since=T0 - timedelta(days=1))
    assert status == {"PENDING": {"count": 2, "latest": iso_z(T0)}, "SENT": {"count": 1, "latest": iso_z(T0)}}
    assert queue.queue_status(db_url, since=T0 + timedelta(seconds=1)) == {}
    assert queue.status_counts(db_url) == {
        "PENDING": 2,
        "SENT": 1,
        "ACKED": 0,
        "FAILED": 0,
        "EXPIRED": 0,
        "REJECTED": 0,
    }
    assert queue.count_deliverable(db_url, now=T0) == 2
    assert queue.count_pending(db_url, now=T0) == 2
    assert [p.signal_id for p in queue.pending_for_pull(db_url, limit=1, now=T0)] == [signals[1]["signal_id"]]
    assert queue.next_due_at(db_url, now=T0) == T0


def test_concurrent_claims_on_postgres_never_overlap(pg_url):
    queued(pg_url, 200, "EURUSD")
    for sym in ("GBPUSD", "USDJPY", "AUDUSD"):
        queued(pg_url, 100, sym)
    taken: list[list[int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        mine = []
        while True:
            claims = queue.claim_batch(pg_url, 7, lease_seconds=60)
            if not claims:
                if queue.count_deliverable(pg_url) == 0:
                    break
                continue
            mine.extend(c.id for c in claims)
            queue.apply_marks(pg_url, [queue.Mark(c.id, c.claim_token, "SENT", utcnow(), ticket=c.id) for c in claims])
        with lock:
            taken.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [i for mine in taken for i in mine]
    assert len(every) == len(set(every)) == 500
    assert queue.status_counts(pg_url)["SENT"] == 500


def test_enqueue_notifies_listeners_on_postgres(pg_url):
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        signal = make_signal(ts=BAR)
        assert queue.enqueue(pg_url, signal)
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in got] == [queue.NOTIFY_CHANNEL]
        # A duplicate queues nothing and wakes nobody.
        assert queue.enqueue(pg_url, make_signal(ts=BAR)) is False
        assert list(listener.notifies(timeout=0.3)) == []


def test_on_postgres_a_claim_a_flush_of_marks_and_the_expiry_are_one_round_trip_each(pg_url):
    """The claim (with its unflushed commit), the marks and the expiry sweep are each one string sent once, in
    autocommit: no BEGIN, no separate SET, no COMMIT. What they write is what the portable
    statements write."""
    signals = queued(pg_url, 3)
    sent: list[str] = []
    engine = get_engine(pg_url)

    def count(*args) -> None:
        sent.append(args[2] if len(args) > 2 else "begin")

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "begin", count)
    try:
        claims = queue.claim_batch(pg_url, 10, lease_seconds=30, now=T0)
        assert [c.signal_id for c in claims] == [s["signal_id"] for s in signals]
        assert all(c.expires_at.utcoffset() == timedelta(0) and c.attempts == 1 for c in claims)
        assert claims[0].payload == {**signals[0], "meta": signals[0]["meta"]}
        marks = [queue.Mark(claims[0].id, claims[0].claim_token, "SENT", T0, ticket=7)]
        marks.append(queue.Mark(claims[1].id, claims[1].claim_token, "RETRY", T0, error="x", next_attempt_at=T0))
        marks.append(queue.Mark(claims[2].id, "not-the-token", "SENT", T0, ticket=8))
        applied = queue.apply_marks(pg_url, marks)
        # The cycle's other statements on the way: the expiry sweep (nothing to expire here).
        assert queue.expire_stale(pg_url, now=T0) == 0
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "begin", count)
    assert sent == []  # neither went through SQLAlchemy's execution (nor opened a transaction)
    assert applied == {claims[0].id, claims[1].id}
    first, second, third = (row(pg_url, s["signal_id"]) for s in signals)
    assert (first["status"], first["ticket"]) == ("SENT", 7)
    assert (second["status"], second["last_error"]) == ("PENDING", "x")
    assert third["status"] == "PENDING"  # a stale token writes nothing
    with psycopg.connect(psycopg_conninfo(pg_url)) as check:  # committed: seen from another session
        statuses = check.execute("SELECT status, claim_token FROM signals_queue ORDER BY id").fetchall()
    assert statuses == [("SENT", None), ("PENDING", None), ("PENDING", claims[2].claim_token)]


def test_the_one_round_trip_statements_run_on_a_connection_the_pool_pinged(pg_url, monkeypatch):
    """A pooled connection idle past PING_AFTER_IDLE_SECONDS is pinged on checkout (as after
    an idle worker's quiet minute): the claim, marks and expiry run on it as on any other."""
    from mt5_pipeline.storage import engine as engine_module

    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # every checkout pings
    signals = queued(pg_url, 2)
    claims = queue.claim_batch(pg_url, 10, lease_seconds=30, now=T0)
    assert [c.signal_id for c in claims] == [s["signal_id"] for s in signals]
    assert queue.apply_marks(pg_url, [queue.Mark(c.id, c.claim_token, "SENT", T0) for c in claims]) == {
        c.id for c in claims
    }
    assert queue.expire_stale(pg_url, now=T0) == 0
    assert queue.status_counts(pg_url)["SENT"] == 2
