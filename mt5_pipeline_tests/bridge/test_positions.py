"""The execution policy at the terminal: what the keeper records of a fill, which signals
it lets open, the opposite close and the time exit, on the stand-in terminal (UTC+2)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mt5_pipeline.bridge import fake_mt5
from mt5_pipeline.bridge.orders import Execution, OrderSettings, place
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.execution.execution_policy import ExecutionPolicy
from mt5_pipeline_tests.bridge.parts import MAGIC, OFFSET_S, signal_body, signal_of

CFG = OrderSettings(lots=0.1, magic=MAGIC, deviation=10)


def _keeper(terminal, store, clock, entry: str = "one_per_symbol_timeframe", hold: int = 2) -> PositionKeeper:
    to_utc = lambda ts: [int(t) - OFFSET_S for t in ts]  # noqa: E731 - the server's fixed UTC+2
    return PositionKeeper(terminal, store, CFG, ExecutionPolicy(entry, hold), to_utc=to_utc, clock=clock)


def _open(keeper: PositionKeeper, symbol: str = "XAUUSD", side: str = "BUY", **kw) -> int:
    signal = signal_of(signal_body(symbol, side, **kw))
    execution = place(keeper.terminal, signal, CFG)
    record = keeper.record(signal, execution)
    assert record is not None and execution.ticket is not None, execution.message
    keeper.store.remember_position(record)
    return execution.ticket


def test_a_fill_is_recorded_with_its_entry_bar_and_the_policy_it_carried(terminal, store, clock):
    keeper = _keeper(terminal, store, clock)
    signal = signal_of(signal_body("USDJPY", "SELL", timeframe="H1", entry_policy="stack", max_hold_bars=3))
    record = keeper.record(signal, Execution("FILLED", ticket=77, sl=151.5, tp=150.7))
    assert record["entry_bar"] == int((signal.bar + timedelta(hours=1)).timestamp())
    assert (record["entry_policy"], record["max_hold_bars"], record["timeframe"], record["side"]) == (
        "stack",
        3,
        "H1",
        "SELL",
    )
    assert (record["sl"], record["tp"]) == (151.5, 150.7)
    assert keeper.record(signal, Execution("REJECTED", retcode=10018)) is None


def test_one_position_per_symbol_and_timeframe(terminal, store, clock):
    keeper = _keeper(terminal, store, clock)
    ticket = _open(keeper, "XAUUSD", timeframe="M5")
    verdict, why = keeper.entry(signal_of(signal_body("XAUUSD", "BUY", timeframe="M5")))
    assert verdict == "skip" and why.startswith("skipped by the execution policy (one_per_symbol_timeframe)")
    assert str(ticket) in why
    assert keeper.entry(signal_of(signal_body("XAUUSD", "BUY", timeframe="M15"))) == ("open", "")
    assert keeper.entry(signal_of(signal_body("USDJPY", "BUY", timeframe="M5"))) == ("open", "")


def test_reverse_closes_the_opposite_position_first_and_says_why(terminal, store, clock, mt5):
    keeper = _keeper(terminal, store, clock, "reverse")
    ticket = _open(keeper, "US30", "BUY", timeframe="M5")
    assert keeper.entry(signal_of(signal_body("US30", "SELL", timeframe="M5"))) == ("open", "")
    assert ticket not in mt5.positions and keeper.opposite_closes_done == 1
    assert store.positions([ticket])[ticket]["close_reason"] == "opposite_signal"
    out = [d for d in mt5.deals if d.position_id == ticket and d.entry == fake_mt5.DEAL_ENTRY_OUT]
    assert len(out) == 1 and out[0].reason == fake_mt5.DEAL_REASON_EXPERT


def test_an_opposite_close_the_terminal_refuses_is_retried_later(terminal, store, clock, mt5):
    keeper = _keeper(terminal, store, clock, "reverse")
    ticket = _open(keeper, "DE40", "SELL", timeframe="M5")
    mt5.market_closed.add("DE40")
    verdict, why = keeper.entry(signal_of(signal_body("DE40", "BUY", timeframe="M5")))
    assert verdict == "retry" and f"ticket {ticket} not closed" in why and "10018" in why
    assert ticket in mt5.positions


def test_the_time_exit_closes_at_the_close_of_the_last_bar_held(terminal, store, clock, mt5):
    keeper = _keeper(terminal, store, clock, hold=2)
    ticket = _open(keeper, "USDJPY")  # signal bar 09:59 UTC: enters at 10:00, holds 10:00 and 10:01
    clock.advance(60)  # 10:01:30: the 10:00 bar closed, one bar held
    assert keeper.time_exits() == [] and ticket in mt5.positions
    clock.advance(35)  # 10:02:05: the 10:01 bar closed
    assert keeper.time_exits() == [ticket] and ticket not in mt5.positions
    assert keeper.time_exits_done == 1 and store.positions([ticket])[ticket]["close_reason"] == "time"
    assert keeper.last_error == ""


def test_positions_the_bridge_did_not_open_are_left_alone(terminal, store, clock, mt5):
    keeper = _keeper(terminal, store, clock, hold=1)
    mine = _open(keeper, "XAUUSD")
    by_hand = place(terminal, signal_of(signal_body("XAUUSD")), CFG).ticket  # the magic, but no record
    other = place(terminal, signal_of(signal_body("XAUUSD")), OrderSettings(0.1, MAGIC + 1, 10)).ticket
    assert {int(p.ticket) for p in keeper.terminal_positions()} == {mine, by_hand}
    assert [op.ticket for op, _ in keeper.open_positions()] == [mine]
    clock.advance(3600)
    assert keeper.time_exits() == [mine]
    assert by_hand in mt5.positions and other in mt5.positions


@pytest.mark.parametrize(("state", "status"), [("gone", "FILLED"), ("market closed", "REJECTED")])
def test_close_of_a_position_already_gone_counts_as_closed(terminal, store, clock, mt5, state, status):
    keeper = _keeper(terminal, store, clock)
    ticket = _open(keeper, "USDHUF")
    if state == "gone":
        del mt5.positions[ticket]  # its stop was hit a moment ago
    else:
        mt5.market_closed.add("USDHUF")
    done = keeper.close(ticket, "time")
    assert done.status == status
    assert store.positions([ticket])[ticket]["close_reason"] == "time"  # written before the close is sent
