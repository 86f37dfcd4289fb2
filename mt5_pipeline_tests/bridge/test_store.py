"""The bridge's SQLite store on a real file: outcomes with their acks, the bars cursor,
the positions it opened and the trade reports' outbox."""

from __future__ import annotations

import pytest

from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline_tests.bridge.parts import signal_body, signal_of

ANSWER = {"success": True, "ticket": 50000001}


def _position(signal, ticket: int = 50000001, **change) -> dict:
    return {
        "ticket": ticket, "signal_id": signal.signal_id, "symbol": signal.symbol, "timeframe": "H1",
        "side": signal.side, "entry_bar": 1736935200, "entry_policy": "stack", "max_hold_bars": 12,
        "sl": 2378.5, "tp": 2410.25, **change,
    }  # fmt: skip


def _fill(store: BridgeStore, signal, ticket: int = 50000001, position: dict | None = None) -> None:
    ack = {"signal_id": signal.signal_id, "ticket": ticket, "status": "FILLED", "message": "filled"}
    store.finish(
        signal, "FILLED", ticket=ticket, retcode=10009, message="filled", answer=ANSWER, ack=ack, position=position
    )


def test_an_outcome_its_ack_and_its_position_are_written_together(store):
    signal = signal_of(signal_body("XAUUSD"))
    _fill(store, signal, position=_position(signal))
    row = store.execution(signal.signal_id)
    assert row["status"] == "FILLED" and row["ticket"] == 50000001 and row["answer"] == ANSWER
    [ack] = store.due_acks(now=row["updated_at"] + 1)
    assert ack["signal_id"] == signal.signal_id and ack["body"]["status"] == "FILLED" and ack["attempts"] == 0
    assert store.positions([50000001])[50000001]["max_hold_bars"] == 12
    assert store.signal_of_ticket(50000001) == signal.signal_id
    assert store.counts() == {"FILLED": 1, "acks_pending": 1}


def test_a_failed_write_leaves_neither_the_outcome_nor_its_ack(store):
    signal = signal_of(signal_body("USDJPY"))
    ack = {
        "signal_id": signal.signal_id,
        "status": "FILLED",
        "at": object(),
    }  # not JSON: fails after the outcome's INSERT
    with pytest.raises(TypeError):
        store.finish(signal, "FILLED", ticket=9, retcode=10009, message="filled", answer=ANSWER, ack=ack)
    assert store.execution(signal.signal_id) is None
    assert store.ack_row(signal.signal_id) is None and store.positions() == {}


def test_sending_then_retry_then_sending_again(store):
    signal = signal_of(signal_body("US30"))
    store.begin(signal)
    assert store.execution(signal.signal_id)["status"] == "SENDING"
    store.retry_later(signal.signal_id, 10031, "No connection with the trade server")
    row = store.execution(signal.signal_id)
    assert (row["status"], row["retcode"], row["answer"]) == ("RETRY", 10031, None)
    store.begin(signal)
    assert store.execution(signal.signal_id)["status"] == "SENDING"
    assert store.signal_of_ticket(0) is None  # nothing filled


def test_acks_come_due_in_order_and_retries_wait(store):
    first, second = signal_of(signal_body("XAUUSD")), signal_of(signal_body("USDHUF", "SELL"))
    _fill(store, first, 1)
    _fill(store, second, 2)
    now = store.ack_row(second.signal_id)["next_attempt"] + 1
    store.ack_retry(first.signal_id, "HTTP 503 " + "x" * 600, now + 30)
    assert [a["signal_id"] for a in store.due_acks(now)] == [second.signal_id]
    assert [a["signal_id"] for a in store.due_acks(now + 31)] == [second.signal_id, first.signal_id]
    row = store.ack_row(first.signal_id)
    assert row["attempts"] == 1 and len(row["last_error"]) == 500
    assert store.next_ack_at() == store.ack_row(second.signal_id)["next_attempt"]
    store.ack_done(second.signal_id)
    store.ack_done(first.signal_id, note="HTTP 404: unknown signal")
    assert store.due_acks(now + 31) == [] and store.next_ack_at() is None
    assert store.ack_row(first.signal_id)["last_error"] == "HTTP 404: unknown signal"


def test_the_newest_bar_sent_never_moves_back_and_is_kept_per_series(store):
    store.set_last_bar("XAUUSD", "H1", 1736935200)
    store.set_last_bar("XAUUSD", "H1", 1736931600)  # an older bar re-sent
    store.set_last_bar("XAUUSD", "M1", 1736938800)
    assert store.last_bar("XAUUSD", "H1") == 1736935200
    assert store.last_bar("XAUUSD", "M1") == 1736938800
    assert store.last_bar("USDJPY", "H1") is None


def test_a_report_is_queued_once_and_a_close_is_never_replaced_by_an_open(store):
    opened = {"ticket": 7, "symbol": "DE40", "side": "SELL", "open_price": 18000.5}
    closed = {**opened, "close_price": 17990.0, "exit_reason": "tp"}
    assert store.queue_report(7, "open", opened) is True
    assert store.queue_report(7, "open", dict(opened)) is False  # nothing new
    [due] = store.due_reports(now=2e9)
    assert store.queue_report(7, "closed", closed) is True
    store.reports_sent([(7, due["body"])])  # the open report's answer, arriving after the close was queued
    assert store.report_counts() == {"pending": 1, "closed_reported": 0}
    assert store.queue_report(7, "open", opened) is False
    store.reports_sent([(7, closed)])
    assert store.report_counts() == {"pending": 0, "closed_reported": 1}
    assert store.report_state(7) == "closed"


def test_the_deals_cursor_only_moves_forward(store):
    assert store.cursor("deals") is None
    store.set_cursor("deals", 1736942400)
    store.set_cursor("deals", 1736940000)
    assert store.cursor("deals") == 1736942400


def test_everything_survives_a_restart_of_the_bridge(tmp_path):
    path = tmp_path / "nested" / "bridge.sqlite3"
    store = BridgeStore(path)
    signal = signal_of(signal_body("XAUUSD"))
    _fill(store, signal, position=_position(signal))
    store.set_last_bar("XAUUSD", "H1", 1736935200)
    store.close()
    again = BridgeStore(path)
    try:
        assert again.execution(signal.signal_id)["answer"] == ANSWER  # what stops a second order
        assert again.last_bar("XAUUSD", "H1") == 1736935200
        assert list(again.positions()) == [50000001]
    finally:
        again.close()
