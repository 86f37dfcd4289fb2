"""Acks from the store's outbox to a scripted API on loopback: taken, dropped, retried."""

from __future__ import annotations

import threading

import pytest

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.bridge.acks import MAX_BACKOFF, AckSender, backoff
from mt5_pipeline.bridge.client import ApiClient
from mt5_pipeline_tests.bridge.parts import KEY, signal_body, signal_of


def _queue(store, symbol: str = "XAUUSD", status: str = "FILLED", ticket: int | None = 50000001) -> str:
    signal = signal_of(signal_body(symbol))
    ack = {"signal_id": signal.signal_id, "ticket": ticket, "status": status, "message": "m"}
    store.finish(signal, status, ticket=ticket, retcode=10009, message="m", answer={"success": True}, ack=ack)
    return signal.signal_id


def _due_now(store) -> float:
    return max(store.ack_row(row["signal_id"])["next_attempt"] for row in store.due_acks(now=4e9)) + 1


def test_backoff_doubles_from_a_second_up_to_a_minute():
    assert [backoff(n) for n in (0, 1, 2, 5)] == [1.0, 2.0, 4.0, 32.0]
    assert backoff(6) == backoff(40) == MAX_BACKOFF == 60.0


def test_every_due_ack_is_posted_once_and_marked_taken(api, peer, store):
    ids = [_queue(store, "XAUUSD"), _queue(store, "USDJPY", "REJECTED", None)]
    sender = AckSender(api, store)
    now = _due_now(store)
    assert sender.send_due(now) == 2
    assert [c.body["signal_id"] for c in peer.calls("/ea/ack")] == ids
    assert peer.calls("/ea/ack")[1].body["status"] == "REJECTED"
    assert store.counts()["acks_pending"] == 0
    assert sender.send_due(now + 3600) == 0 and len(peer.calls("/ea/ack")) == 2


@pytest.mark.parametrize("status", [404, 422])
def test_an_ack_the_api_can_never_take_is_dropped_with_the_reason(api, peer, store, status):
    signal_id = _queue(store, "US30")
    peer.answer("/ea/ack", (status, {"error": "unknown_signal"}))
    assert AckSender(api, store).send_due(_due_now(store)) == 0
    row = store.ack_row(signal_id)
    assert row["acked_at"] is not None and f"HTTP {status}" in row["last_error"] and row["attempts"] == 0


def test_a_failing_api_gets_the_ack_again_later_backing_off(api, peer, store):
    signal_id = _queue(store, "USDHUF")
    peer.answer("/ea/ack", (503, {}), (500, {}))
    sender = AckSender(api, store)
    now = _due_now(store)
    assert sender.send_due(now) == 0
    assert store.ack_row(signal_id)["next_attempt"] == pytest.approx(now + 1.0)
    assert sender.send_due(now + 0.5) == 0 and len(peer.calls("/ea/ack")) == 1  # not due yet
    assert sender.send_due(now + 1.0) == 0
    row = store.ack_row(signal_id)
    assert row["attempts"] == 2 and row["next_attempt"] == pytest.approx(now + 3.0) and "HTTP 500" in row["last_error"]
    assert "HTTP 500" in sender.last_error
    assert sender.send_due(now + 3.0) == 1 and sender.last_error == ""


def test_an_api_that_is_down_leaves_the_ack_pending(store):
    _queue(store, "DE40")
    client = ApiClient(f"http://127.0.0.1:{free_port()}", KEY, timeout=2)
    try:
        sender = AckSender(client, store)
        assert sender.send_due(_due_now(store)) == 0
    finally:
        client.close()
    assert "POST /ea/ack" in sender.last_error and store.counts()["acks_pending"] == 1


def test_the_loop_sends_when_woken_and_stops(api, peer, store):
    sender = AckSender(api, store)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    signal_id = _queue(store, "XAUUSD")
    sender.wake.set()
    for _ in range(200):
        if store.ack_row(signal_id)["acked_at"] is not None:
            break
        threading.Event().wait(0.02)
    stop.set()
    sender.wake.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [c.body["signal_id"] for c in peer.calls("/ea/ack")] == [signal_id]
