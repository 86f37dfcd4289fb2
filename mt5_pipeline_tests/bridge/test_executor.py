"""One signal in, at most one order out: the executor on the stand-in terminal and a real
store, with the clock of the signal's bar."""

from __future__ import annotations

import pytest

from mt5_pipeline.bridge import fake_mt5
from mt5_pipeline.bridge.executor import Executor
from mt5_pipeline.bridge.orders import OrderSettings
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.execution.execution_policy import ExecutionPolicy
from mt5_pipeline_tests.bridge.parts import MAGIC, OFFSET_S, signal_body, signal_of

CFG = OrderSettings(lots=0.1, magic=MAGIC, deviation=10)


@pytest.fixture
def acks() -> list[int]:
    return []


@pytest.fixture
def executor(terminal, store, clock, acks) -> Executor:
    return Executor(terminal, store, CFG, clock=clock, on_ack=lambda: acks.append(1))


def _ack(store, signal_id: str) -> dict:
    return store.due_acks(now=4e9)[[a["signal_id"] for a in store.due_acks(now=4e9)].index(signal_id)]["body"]


def test_a_body_that_breaks_the_contract_is_422_and_nothing_is_kept(executor, store, mt5):
    body = signal_body("XAUUSD")
    del body["expires_at"]
    body["side"] = "HOLD"
    code, answer = executor.handle(body)
    assert (
        code == 422
        and "expires_at: required" in answer["message"]
        and "side: expected BUY or SELL" in answer["message"]
    )
    assert store.counts() == {"acks_pending": 0} and mt5.requests == []


def test_a_fill_is_answered_stored_and_acked_once(executor, store, mt5, acks):
    body = signal_body("USDJPY", "SELL")
    code, answer = executor.handle(body)
    assert code == 200 and answer["success"] and answer["ticket"] in mt5.positions
    assert store.execution(body["signal_id"])["status"] == "FILLED"
    assert _ack(store, body["signal_id"]) == {
        "signal_id": body["signal_id"], "ticket": answer["ticket"], "status": "FILLED", "message": answer["message"],
    }  # fmt: skip
    assert acks == [1]


def test_a_repeated_signal_gets_the_same_answer_and_no_second_order(executor, mt5, acks):
    body = signal_body("XAUUSD")
    first = executor.handle(body)
    again = executor.handle(dict(body))
    assert again == (200, {**first[1], "duplicate": True})
    assert len(mt5.requests) == 1 and acks == [1]


def test_an_expired_signal_is_acked_expired_and_never_traded(executor, store, mt5, clock):
    body = signal_body("US30", ttl=60)
    clock.advance(60)
    code, answer = executor.handle(body)
    assert (code, answer["reason"]) == (200, "expired") and answer["message"].startswith("signal expired at ")
    assert mt5.requests == [] and _ack(store, body["signal_id"])["status"] == "EXPIRED"


def test_a_terminal_that_is_gone_is_503_and_nothing_is_recorded(executor, store, mt5):
    mt5.shutdown()
    mt5.available = False
    body = signal_body("XAUUSD")
    code, answer = executor.handle(body)
    assert code == 503 and "-10003" in answer["message"]
    assert store.execution(body["signal_id"]) is None and store.counts()["acks_pending"] == 0


def test_a_transient_refusal_is_503_then_the_next_try_trades_it(executor, store, mt5):
    mt5.script("DE40", [10031])  # no connection with the trade server
    body = signal_body("DE40", "SELL")
    code, answer = executor.handle(body)
    assert code == 503 and answer["transient"] and answer["retcode"] == 10031
    row = store.execution(body["signal_id"])
    assert row["status"] == "RETRY" and store.counts()["acks_pending"] == 0
    code, answer = executor.handle(body)
    assert code == 200 and answer["success"] and len(mt5.requests) == 2
    assert store.execution(body["signal_id"])["status"] == "FILLED"


def test_a_rejection_is_final_and_its_ack_carries_the_retcode(executor, store, mt5):
    mt5.market_closed.add("USDHUF")
    body = signal_body("USDHUF")
    code, answer = executor.handle(body)
    assert code == 200 and not answer["success"] and answer["retcode"] == 10018
    assert answer["message"].startswith("rejected by the terminal: retcode 10018")
    ack = _ack(store, body["signal_id"])
    assert ack["status"] == "REJECTED" and ack["retcode"] == 10018 and ack["ticket"] is None


def test_an_order_send_interrupted_by_a_crash_is_looked_up_not_sent_again(executor, store, mt5):
    placed = signal_body("XAUUSD")
    lost = signal_body("USDJPY")
    for body in (placed, lost):
        store.begin(signal_of(body))  # the bridge died after this, before recording the outcome
    ticket = mt5.order_send(
        {"action": 1, "symbol": "XAUUSD", "volume": 0.1, "type": 0, "price": mt5.symbol_info_tick("XAUUSD").ask,
         "deviation": 10, "magic": MAGIC, "comment": placed["signal_id"][:31],
         "type_filling": fake_mt5.ORDER_FILLING_RETURN},
    ).order  # fmt: skip
    code, answer = executor.handle(placed)
    assert code == 200 and answer["ticket"] == ticket and "recovered" in answer["message"]
    code, answer = executor.handle(lost)
    assert code == 200 and not answer["success"] and "not sent again" in answer["message"]
    assert len(mt5.requests) == 1


def test_the_execution_policy_can_skip_a_signal_and_fills_are_remembered(terminal, store, clock, mt5):
    keeper = PositionKeeper(
        terminal, store, CFG, ExecutionPolicy("one_per_symbol_timeframe", 5),
        to_utc=lambda ts: [int(t) - OFFSET_S for t in ts], clock=clock,
    )  # fmt: skip
    executor = Executor(terminal, store, CFG, clock=clock, positions=keeper)
    first = signal_body("XAUUSD", timeframe="M5")
    code, answer = executor.handle(first)
    assert code == 200 and store.positions()[answer["ticket"]]["timeframe"] == "M5"
    code, skipped = executor.handle(signal_body("XAUUSD", "SELL", timeframe="M5"))
    assert code == 200 and skipped["reason"] == "execution_policy"
    assert skipped["message"].startswith("skipped by the execution policy (one_per_symbol_timeframe)")
    assert len(mt5.positions) == 1
