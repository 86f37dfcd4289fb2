"""Signal to market order on the stand-in terminal: the price grid, the stops, the volume,
the filling mode, and what each answer of order_send becomes."""

from __future__ import annotations

import math

import pytest

from mt5_pipeline.bridge import fake_mt5, orders
from mt5_pipeline.bridge.orders import OrderSettings, build_request, find_placed, place, risk_lots, stops, to_tick
from mt5_pipeline.bridge.terminal import TerminalError
from mt5_pipeline_tests.bridge.parts import MAGIC, signal_body, signal_of

CFG = OrderSettings(lots=0.1, magic=MAGIC, deviation=10)


def test_retcodes_are_described_with_the_servers_own_words():
    assert orders.describe_retcode(10018) == "Market is closed"
    assert orders.describe_retcode(10018, "Market closed") == "Market is closed (Market closed)"
    assert orders.describe_retcode(10009, "request completed") == "Request completed"
    assert orders.describe_retcode(None) == "unknown retcode" and orders.describe_retcode(19999, "odd") == "odd"


def test_the_comment_keeps_the_31_characters_mt5_keeps():
    signal_id = "0f8c3b7e-1d2a-4c5b-9e6f-7a8b9c0d1e2f"
    assert orders.order_comment(signal_id) == signal_id[:31] and len(orders.order_comment(signal_id)) == 31


def test_prices_land_on_the_symbols_tick_grid():
    assert to_tick(5200.13, 0.25, 2) == 5200.25  # an index quoted in quarter points
    assert to_tick(5200.13, 0.25, 2, math.floor) == 5200.0
    assert to_tick(5200.01, 0.25, 2, math.ceil) == 5200.25
    assert to_tick(151.23449, 0.001, 3) == 151.234
    assert to_tick(2390.456, 0.0, 2) == 2390.46  # no tick size: the digits


def test_stops_go_the_pips_from_the_price_each_way():
    sl, tp, notes = stops(
        "BUY", 151.234, 151.220, 151.234, 20, 40, pip=0.01, point=0.001, digits=3, stops_level=10, tick=0.001
    )
    assert (sl, tp, notes) == (151.034, 151.634, [])
    sl, tp, _ = stops(
        "SELL", 151.220, 151.220, 151.234, 20, 40, pip=0.01, point=0.001, digits=3, stops_level=10, tick=0.001
    )
    assert (sl, tp) == (151.42, 150.82)


def test_stops_inside_the_brokers_stops_level_are_widened_and_said():
    # Gold: stops level 50 points (0.50) from the bid a long closes at.
    sl, tp, notes = stops(
        "BUY", 2390.30, 2390.00, 2390.30, 2, 1, pip=0.1, point=0.01, digits=2, stops_level=50, tick=0.01
    )
    assert (sl, tp) == (2389.50, 2390.50)
    assert notes == [
        "sl widened from 2390.1 to 2389.5 (stops level 50 points)",
        "tp widened from 2390.4 to 2390.5 (stops level 50 points)",
    ]


def test_risk_sizing_loses_the_share_of_the_balance_at_the_stop(terminal):
    info = terminal.select("XAUUSD")  # 100 oz a lot: a 0.01 tick is $1 a lot
    assert risk_lots(10_000.0, 1.0, 2.0, info) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no tick value for XAUUSD"):
        risk_lots(10_000.0, 1.0, 2.0, info._replace(trade_tick_value=0.0))


def test_the_request_fits_each_instrument(terminal):
    mt5 = terminal.mt5
    index = signal_of(signal_body("US500", "SELL", sl_pips=8, tp_pips=16))
    info, tick = terminal.select("US500"), mt5.symbol_info_tick("US500")
    request, notes = build_request(mt5, index, info, tick, OrderSettings(lots=0.057, magic=MAGIC, deviation=10))
    assert request["type"] == fake_mt5.ORDER_TYPE_SELL and request["price"] == tick.bid
    assert request["type_filling"] == fake_mt5.ORDER_FILLING_RETURN  # exchange execution: neither FOK nor IOC
    assert request["sl"] == tick.bid + 2.0 and request["tp"] == tick.bid - 4.0 and request["sl"] % 0.25 == 0
    assert request["volume"] == 0.05 and request["comment"] == index.signal_id[:31] and notes == []
    yen = signal_of(signal_body("USDJPY", "BUY"))
    request, _ = build_request(mt5, yen, terminal.select("USDJPY"), mt5.symbol_info_tick("USDJPY"), CFG)
    assert request["type_filling"] == fake_mt5.ORDER_FILLING_IOC and request["magic"] == MAGIC
    with pytest.raises(ValueError, match="below the symbol's smallest volume"):
        build_request(mt5, yen, terminal.select("USDJPY"), mt5.symbol_info_tick("USDJPY"), OrderSettings(0.004, 1, 10))


def test_an_order_fills_with_the_stops_it_asked_for(terminal):
    signal = signal_of(signal_body("XAUUSD", "BUY"))
    execution = place(terminal, signal, CFG)
    assert execution.status == "FILLED" and execution.retcode == 10009
    position = terminal.mt5.positions[execution.ticket]
    assert (position.sl, position.tp, position.magic) == (execution.sl, execution.tp, MAGIC)
    assert position.comment == signal.signal_id[:31]
    assert execution.tp - execution.price == pytest.approx(4.0) and execution.message.startswith("filled 0.1 at ")


def test_a_requote_is_retried_once_at_the_new_price_then_it_is_transient(terminal):
    mt5 = terminal.mt5
    mt5.script("USDJPY", [fake_mt5.TRADE_RETCODE_REQUOTE])
    execution = place(terminal, signal_of(signal_body("USDJPY", "SELL")), CFG)
    assert execution.status == "FILLED" and len(execution.requests) == 2
    assert execution.requests[1]["price"] == pytest.approx(execution.requests[0]["price"] + 0.003)
    mt5.script("USDJPY", [fake_mt5.TRADE_RETCODE_REQUOTE] * 2)
    again = place(terminal, signal_of(signal_body("USDJPY", "SELL")), CFG)
    assert (again.status, again.retcode, len(again.requests)) == ("TRANSIENT", 10004, 2)


def test_a_refusal_is_final_and_says_why(terminal):
    terminal.mt5.market_closed.add("DE40")
    execution = place(terminal, signal_of(signal_body("DE40")), CFG)
    assert (execution.status, execution.retcode, execution.ticket) == ("REJECTED", 10018, None)
    assert execution.message == "retcode 10018: Market is closed (Market closed)"
    unknown = place(terminal, signal_of(signal_body("NOSUCH")), CFG)
    assert unknown.status == "REJECTED" and "symbol NOSUCH not available" in unknown.description


def test_a_lost_answer_is_found_by_the_orders_comment(terminal):
    terminal.mt5.lose_answers = 1
    signal = signal_of(signal_body("USDHUF", "BUY"))
    execution = place(terminal, signal, CFG)
    assert execution.status == "FILLED" and execution.ticket in terminal.mt5.positions
    assert "found by its comment" in execution.message and len(terminal.mt5.requests) == 1


def test_find_placed_looks_in_open_positions_then_history(terminal):
    mt5 = terminal.mt5
    signal = signal_of(signal_body("XAUUSD"))
    comment = orders.order_comment(signal.signal_id)
    ticket = place(terminal, signal, CFG).ticket
    assert find_placed(terminal, "XAUUSD", comment, MAGIC, None, None) == ticket
    assert find_placed(terminal, "XAUUSD", comment, MAGIC + 1, None, None) is None  # another EA's order
    del mt5.positions[ticket]  # closed since: only the history has it
    assert find_placed(terminal, "XAUUSD", comment, MAGIC, None, None) == ticket
    assert find_placed(terminal, "USDJPY", comment, MAGIC, None, None) is None


def test_find_placed_never_says_not_found_when_it_cannot_look(terminal):
    terminal.mt5.shutdown()
    terminal.mt5.available = False
    with pytest.raises(TerminalError, match="not reachable"):
        find_placed(terminal, "XAUUSD", "x", MAGIC, None, None)
