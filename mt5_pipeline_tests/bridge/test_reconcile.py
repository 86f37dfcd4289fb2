"""Reconciliation: the stand-in terminal's positions (server at UTC+2) against what a
scripted API on loopback holds; the differences it answers, and the next wake-up."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mt5_pipeline.bridge.orders import OrderSettings, place
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.bridge.reconcile import Reconciler, ReconcileStatus, seconds_to_next_minute
from mt5_pipeline.bridge.trade_reports import CURSOR, TradeReporter
from mt5_pipeline.execution.execution_policy import ExecutionPolicy
from mt5_pipeline_tests.bridge.parts import MAGIC, NOW, OFFSET_S, signal_body, signal_of

CFG = OrderSettings(lots=0.1, magic=MAGIC, deviation=10)


def to_utc(times):
    return [int(t) - OFFSET_S for t in times]


@pytest.fixture
def keeper(terminal, store, clock) -> PositionKeeper:
    return PositionKeeper(terminal, store, CFG, ExecutionPolicy(), to_utc=to_utc, clock=clock)


@pytest.fixture
def reconciler(keeper, terminal, api, store, clock) -> Reconciler:
    reporter = TradeReporter(terminal, api, store, MAGIC, to_utc=to_utc, clock=clock)
    return Reconciler(keeper, reporter)


def _open(keeper: PositionKeeper, symbol: str, *, record: bool = True) -> tuple[int, str]:
    signal = signal_of(signal_body(symbol, timeframe="H1"))
    execution = place(keeper.terminal, signal, CFG)
    kept = keeper.record(signal, execution)
    assert kept is not None and execution.ticket is not None, execution.message
    if record:
        keeper.store.remember_position(kept)
    return execution.ticket, signal.signal_id


def test_the_status_says_never_in_sync_or_differences():
    assert ReconcileStatus().as_dict()["state"] == "never"
    at = datetime(2025, 1, 15, 10, 1, tzinfo=timezone.utc)
    assert ReconcileStatus(checked_at=at, in_sync=True).as_dict() == {
        "state": "in_sync", "checked_at": "2025-01-15T10:01:00Z", "terminal_positions": 0, "unknown": [],
        "missing": [], "error": None,
    }  # fmt: skip
    assert ReconcileStatus(in_sync=False, unknown=[7], error="x").as_dict()["state"] == "differences"


def test_the_terminals_positions_are_sent_in_utc_with_what_the_bridge_knows(reconciler, keeper, peer):
    mine, signal_id = _open(keeper, "XAUUSD")
    by_hand, _ = _open(keeper, "USDJPY", record=False)
    status = reconciler.cycle()
    [call] = peer.calls("/ea/reconcile")
    assert call.body["magic"] == MAGIC and call.body["account"] == 5000001
    sent = {p["ticket"]: p for p in call.body["positions"]}
    assert sent[mine]["signal_id"] == signal_id and sent[mine]["timeframe"] == "H1"
    assert sent[mine]["open_time"] == int(NOW.timestamp()) and sent[mine]["side"] == "BUY"
    assert "signal_id" not in sent[by_hand] and "timeframe" not in sent[by_hand]
    assert status.in_sync is True and status.terminal_positions == 2


def test_a_trade_the_api_holds_open_gets_its_close_from_the_history(reconciler, keeper, peer, store, terminal):
    ticket, _ = _open(keeper, "US30")
    keeper.close(ticket, "time")
    store.set_cursor(CURSOR, 2_000_000_000)  # its deals are behind the cursor: only reconciliation finds them
    peer.answer("/ea/reconcile", (200, {"unknown": [], "missing": [ticket], "terminal_positions": 0}))
    status = reconciler.cycle()
    assert status.in_sync is False and status.missing == [ticket] and status.as_dict()["state"] == "differences"
    reported = [t for c in peer.calls("/ea/trades") for t in c.body["trades"]]
    assert [(t["ticket"], t["exit_reason"]) for t in reported] == [(ticket, "time")]
    assert store.report_state(ticket) == "closed"


def test_a_position_the_api_did_not_know_is_reported_and_left_open(reconciler, keeper, peer, store, terminal):
    ticket, _ = _open(keeper, "USDHUF", record=False)
    store.set_cursor(CURSOR, 2_000_000_000)
    peer.answer("/ea/reconcile", (200, {"unknown": [ticket], "missing": []}))
    status = reconciler.cycle()
    assert status.unknown == [ticket] and ticket in terminal.mt5.positions
    assert [t["ticket"] for c in peer.calls("/ea/trades") for t in c.body["trades"]] == [ticket]
    assert store.report_state(ticket) == "open"


def test_an_api_outage_keeps_the_last_verdict_and_says_why(reconciler, keeper, peer):
    _open(keeper, "DE40")
    assert reconciler.cycle().in_sync is True
    peer.answer("/ea/reconcile", (503, {}))
    status = reconciler.cycle()
    assert status.in_sync is True and "HTTP 503" in status.error and status.checked_at == NOW
    assert reconciler.status is status


def test_a_terminal_that_is_gone_is_not_compared(reconciler, terminal, peer):
    terminal.mt5.shutdown()
    terminal.mt5.available = False
    status = reconciler.cycle()
    assert status.in_sync is None and "not reachable" in status.error
    assert peer.calls("/ea/reconcile") == []


def test_the_loop_wakes_just_after_each_minute_turns():
    assert seconds_to_next_minute(datetime(2025, 1, 15, 10, 0, 30, 500000, tzinfo=timezone.utc)) == pytest.approx(30.5)
    assert seconds_to_next_minute(datetime(2025, 1, 15, 10, 0, 59, tzinfo=timezone.utc), grace=0.25) == pytest.approx(
        1.25
    )
