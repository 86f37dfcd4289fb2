"""Trade reports from the stand-in terminal's deals history (server at UTC+2) to a
scripted API on loopback: what a report says, when it is queued, and how it is sent."""

from __future__ import annotations

import pytest

from mt5_pipeline.bridge.orders import OrderSettings, place
from mt5_pipeline.bridge.positions import PositionKeeper
from mt5_pipeline.bridge.trade_reports import CURSOR, TradeReporter
from mt5_pipeline.execution.execution_policy import ExecutionPolicy
from mt5_pipeline_tests.bridge.parts import MAGIC, NOW, OFFSET_S, signal_body, signal_of

CFG = OrderSettings(lots=0.1, magic=MAGIC, deviation=10)


def to_utc(times):
    return [int(t) - OFFSET_S for t in times]


@pytest.fixture
def reporter(terminal, api, store, clock) -> TradeReporter:
    return TradeReporter(terminal, api, store, MAGIC, to_utc=to_utc, clock=clock)


def _open(terminal, store, symbol="XAUUSD", side="BUY", cfg=CFG) -> tuple[int, str]:
    signal = signal_of(signal_body(symbol, side, timeframe="M5"))
    execution = place(terminal, signal, cfg)
    keeper = PositionKeeper(terminal, store, cfg, ExecutionPolicy(), to_utc=to_utc)
    record = keeper.record(signal, execution)
    assert record is not None and execution.ticket is not None, execution.message
    store.remember_position(record)
    return execution.ticket, signal.signal_id


def _bar_through(mt5, symbol: str, level: float) -> tuple:
    t = int(NOW.timestamp()) // 60 * 60 + OFFSET_S  # this minute's bar, server time
    return (t, level, level + 1, level - 1, level, 10, 0, 0)


def test_an_open_position_is_reported_with_its_signal_and_utc_times(reporter, terminal, store):
    ticket, signal_id = _open(terminal, store, "XAUUSD")
    state, body = reporter.build(ticket, list(terminal.mt5.history_deals_get(position=ticket)))
    position = terminal.mt5.positions[ticket]
    assert state == "open"
    assert body == {
        "ticket": ticket, "signal_id": signal_id, "symbol": "XAUUSD", "timeframe": "M5", "side": "BUY", "volume": 0.1,
        "open_time": int(NOW.timestamp()), "open_price": position.price_open, "sl": position.sl, "tp": position.tp,
        "magic": MAGIC, "account": 5000001, "swap": 0.0, "commission": 0.0,
    }  # fmt: skip


def test_a_take_profit_is_reported_closed_with_the_profit(reporter, terminal, store):
    mt5 = terminal.mt5
    mt5.commission_per_lot = 3.5
    ticket, _ = _open(terminal, store, "XAUUSD")
    tp = mt5.positions[ticket].tp
    mt5.feed_bars("XAUUSD", [_bar_through(mt5, "XAUUSD", tp)])
    state, body = reporter.build(ticket, list(mt5.history_deals_get(position=ticket)))
    assert state == "closed" and body["exit_reason"] == "tp" and body["close_price"] == tp
    assert body["profit"] == pytest.approx(40.0)  # 4.00 x 0.1 lot x 100 oz
    assert body["commission"] == pytest.approx(-0.7) and body["close_time"] == int(NOW.timestamp())


@pytest.mark.parametrize(("by", "reason"), [("bridge", "time"), ("hand", "manual")])
def test_who_closed_it_decides_the_exit_reason(reporter, terminal, store, clock, by, reason):
    mt5 = terminal.mt5
    ticket, _ = _open(terminal, store, "USDJPY", "SELL")
    if by == "bridge":
        PositionKeeper(terminal, store, CFG, ExecutionPolicy(), to_utc=to_utc, clock=clock).close(ticket, "time")
    else:
        ask = mt5.symbol_info_tick("USDJPY").ask
        mt5.order_send(
            {
                "action": 1,
                "symbol": "USDJPY",
                "volume": 0.1,
                "type": 0,
                "position": ticket,
                "price": ask,
                "deviation": 5,
            }
        )
    state, body = reporter.build(ticket, list(mt5.history_deals_get(position=ticket)))
    assert (state, body["exit_reason"]) == ("closed", reason)


def test_another_eas_position_is_not_reported(reporter, terminal, store):
    ticket, _ = _open(terminal, store, "US30", cfg=OrderSettings(0.1, MAGIC + 1, 10))
    assert reporter.build(ticket, list(terminal.mt5.history_deals_get(position=ticket))) is None
    assert reporter.scan() == 0


def test_a_scan_queues_what_changed_since_the_cursor_once(reporter, terminal, store):
    mt5 = terminal.mt5
    ticket, _ = _open(terminal, store, "XAUUSD")
    assert reporter.scan() == 1 and store.report_state(ticket) == "open"
    assert store.cursor(CURSOR) == max(d.time for d in mt5.deals)
    assert reporter.scan() == 0  # the same deals read again: nothing new
    mt5.feed_bars("XAUUSD", [_bar_through(mt5, "XAUUSD", mt5.positions[ticket].sl)])
    assert reporter.scan() == 1 and store.report_state(ticket) == "closed"


def test_one_bad_report_does_not_hold_back_the_others(reporter, peer, terminal, store):
    first, _ = _open(terminal, store, "XAUUSD")
    second, _ = _open(terminal, store, "USDHUF")
    reporter.scan()
    peer.answer("/ea/trades", (422, {"error": "validation_error"}), (200, {}), (422, {"error": "validation_error"}))
    assert reporter.send_due(now=4e9) == 1
    batches = [[t["ticket"] for t in c.body["trades"]] for c in peer.calls("/ea/trades")]
    assert batches == [[first, second], [first], [second]]
    assert store.report_counts()["pending"] == 0


def test_reports_wait_while_the_api_is_down(reporter, peer, terminal, store):
    ticket, _ = _open(terminal, store, "DE40")
    peer.answer("/ea/trades", (503, {}))
    assert reporter.cycle() == 0 and "HTTP 503" in reporter.last_error
    assert store.report_counts()["pending"] == 1
    assert reporter.send_due(now=4e9) == 1 and reporter.last_error == ""
    assert peer.calls("/ea/trades")[-1].body["trades"][0]["ticket"] == ticket


def test_nothing_is_read_while_the_servers_offset_is_unknown(terminal, api, store, clock):
    _open(terminal, store, "XAUUSD")
    reporter = TradeReporter(terminal, api, store, MAGIC, to_utc=lambda times: None, clock=clock)
    assert reporter.cycle() == 0 and "UTC offset is not known" in reporter.last_error
    assert store.cursor(CURSOR) is None and store.report_counts()["pending"] == 0
