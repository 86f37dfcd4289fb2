"""Pull mode: the poller against a scripted API on loopback, trading through a real
executor on the stand-in terminal."""

from __future__ import annotations

import threading

import pytest

from mt5_pipeline.bridge.acks import AckSender
from mt5_pipeline.bridge.executor import Executor
from mt5_pipeline.bridge.orders import OrderSettings
from mt5_pipeline.bridge.poller import Poller
from mt5_pipeline_tests.bridge.parts import MAGIC, signal_body


@pytest.fixture
def poller(api, terminal, store, clock) -> Poller:
    executor = Executor(terminal, store, OrderSettings(lots=0.1, magic=MAGIC, deviation=10), clock=clock)
    return Poller(api, executor, AckSender(api, store), interval=0.02, limit=3)


def test_each_pulled_signal_is_traded_in_order(poller, peer, mt5):
    gold, yen = signal_body("XAUUSD"), signal_body("USDJPY", "SELL")
    peer.answer("/ea/signals", (200, {"signals": [gold, yen]}))
    answers = poller.poll_once()
    assert [a["success"] for a in answers] == [True, True]
    assert [r["symbol"] for r in mt5.requests] == ["XAUUSD", "USDJPY"]
    assert peer.calls("/ea/signals")[0].query == {"status": "PENDING", "limit": "3"}
    assert poller.polls == 1 and poller.last_error == ""


def test_a_signal_pulled_again_before_its_ack_is_not_traded_twice(poller, peer, mt5):
    index = signal_body("US30")
    peer.answer("/ea/signals", (200, {"signals": [index]}), (200, {"signals": [index]}))
    [first] = poller.poll_once()
    [again] = poller.poll_once()
    assert again == {**first, "duplicate": True} and len(mt5.requests) == 1


def test_a_bad_or_untradeable_signal_does_not_stop_the_rest(poller, peer, mt5):
    broken = {**signal_body("DE40"), "side": "HOLD"}
    mt5.market_closed.add("USDHUF")
    closed, fine = signal_body("USDHUF"), signal_body("XAUUSD")
    peer.answer("/ea/signals", (200, {"signals": [broken, closed, fine]}))
    answers = poller.poll_once()
    assert "side: expected BUY or SELL" in answers[0]["message"]
    assert answers[1]["retcode"] == 10018 and answers[2]["success"]


@pytest.mark.parametrize("status", [503, 401])
def test_a_failed_poll_is_remembered_and_the_next_one_clears_it(poller, peer, status):
    peer.answer("/ea/signals", (status, {"error": "nope"}))
    assert poller.poll_once() == [] and f"HTTP {status}" in poller.last_error and poller.polls == 0
    assert poller.poll_once() == [] and poller.last_error == "" and poller.polls == 1


def test_the_loop_polls_until_stopped(poller, peer):
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    for _ in range(500):
        if poller.polls >= 3:
            break
        threading.Event().wait(0.01)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and poller.polls >= 3
    assert len(peer.calls("/ea/signals")) == poller.polls
