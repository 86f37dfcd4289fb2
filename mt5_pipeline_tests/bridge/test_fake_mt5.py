"""The fake terminal closes positions as a trade server does and keeps the deals history
the bridge will read (phase 2 of issue 20 reports trades from it)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mt5_pipeline.bridge import fake_mt5 as mt5
from mt5_pipeline.bridge.fake_mt5 import FakeMT5

NOW = datetime(2024, 6, 11, 10, 0, 30, tzinfo=timezone.utc)
OFFSET = 2 * 3600  # server time = UTC + 2 h


@pytest.fixture
def term() -> FakeMT5:
    t = FakeMT5(clock=lambda: NOW, server_offset_hours=2)
    assert t.initialize()
    t.symbol_select("EURUSD")
    # Put the market where the test wants it: one bar closing at 1.10000.
    bar_open = int(NOW.timestamp()) + OFFSET - 30
    t.feed_bars("EURUSD", [(bar_open - 60, 1.1, 1.1, 1.1, 1.1, 10, 0, 0)])
    return t


def _open(t: FakeMT5, side: int, *, sl_pips: float = 20, tp_pips: float = 40, volume: float = 0.1, magic: int = 250101):
    tick = t.symbol_info_tick("EURUSD")
    price = tick.ask if side == mt5.ORDER_TYPE_BUY else tick.bid
    s = 1 if side == mt5.ORDER_TYPE_BUY else -1
    request = {
        "action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": volume, "type": side, "price": price,
        "sl": round(price - s * sl_pips * 0.0001, 5), "tp": round(price + s * tp_pips * 0.0001, 5),
        "deviation": 10, "magic": magic, "comment": "sig-1", "type_filling": mt5.ORDER_FILLING_FOK,
    }  # fmt: skip
    result = t.order_send(request)
    assert result.retcode == mt5.TRADE_RETCODE_DONE, result
    return t.positions[result.order]


def _bar(minute: int, o: float, h: float, lo: float, c: float, spread: int = 12):
    start = int(NOW.timestamp()) + OFFSET - 30
    return (start + 60 * minute, o, h, lo, c, 10, spread, 0)


def test_a_bar_touching_the_take_profit_closes_the_long_there_with_in_and_out_deals(term):
    pos = _open(term, mt5.ORDER_TYPE_BUY)
    assert pos.price_open == pytest.approx(1.10012)  # the ask: 12 points of spread
    assert term.feed_bars("EURUSD", [_bar(1, 1.1001, 1.1010, 1.0995, 1.1005)]) == []  # neither level
    [out] = term.feed_bars("EURUSD", [_bar(2, 1.1005, 1.1050, 1.1000, 1.1040)])
    assert term.positions_get() == ()
    deals = term.history_deals_get(position=pos.ticket)
    assert [d.entry for d in deals] == [mt5.DEAL_ENTRY_IN, mt5.DEAL_ENTRY_OUT]
    assert [d.type for d in deals] == [mt5.DEAL_TYPE_BUY, mt5.DEAL_TYPE_SELL]
    assert deals[0].reason == mt5.DEAL_REASON_EXPERT and out.reason == mt5.DEAL_REASON_TP
    assert out.price == pytest.approx(pos.tp) and out.position_id == pos.ticket and out.magic == 250101
    assert out.profit == pytest.approx(40.0)  # 40 pips x 0.1 lot x $1 per pip per 0.1 lot
    assert term.balance == pytest.approx(10_040.0)


def test_the_stop_wins_a_bar_touching_both_and_a_short_closes_at_the_ask(term):
    short = _open(term, mt5.ORDER_TYPE_SELL)  # at the bid 1.10000; SL 1.10200, TP 1.09600
    # The bid high 1.10190 + 12 points of spread reaches the stop: a short buys back at the ask.
    [out] = term.feed_bars("EURUSD", [_bar(1, 1.1000, 1.1019, 1.0999, 1.1010)])
    assert out.reason == mt5.DEAL_REASON_SL and out.price == pytest.approx(short.sl) and out.type == mt5.DEAL_TYPE_BUY
    assert out.profit == pytest.approx(-20.0)
    long_ = _open(term, mt5.ORDER_TYPE_BUY)
    [both] = term.feed_bars("EURUSD", [_bar(2, 1.1010, 1.1100, 1.0900, 1.1000)])
    assert both.reason == mt5.DEAL_REASON_SL and both.position_id == long_.ticket


def test_order_send_with_position_closes_at_market_and_charges_commission_and_swap(term):
    term.commission_per_lot = 7.0
    term.swap_per_lot_night = 5.0
    pos = _open(term, mt5.ORDER_TYPE_BUY, volume=0.2)
    tick = term.symbol_info_tick("EURUSD")
    close = {
        "action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.2, "type": mt5.ORDER_TYPE_SELL,
        "position": pos.ticket, "price": tick.bid, "deviation": 10, "magic": 250101, "comment": "time exit",
        "type_filling": mt5.ORDER_FILLING_FOK,
    }  # fmt: skip
    result = term.order_send(close)
    assert result.retcode == mt5.TRADE_RETCODE_DONE and result.price == pytest.approx(tick.bid)
    assert term.positions_get() == ()
    deals = term.history_deals_get(position=pos.ticket)
    assert [d.commission for d in deals] == [pytest.approx(-1.4), pytest.approx(-1.4)]
    assert deals[1].reason == mt5.DEAL_REASON_EXPERT and deals[1].swap == 0.0  # closed the same day
    assert deals[1].profit == pytest.approx(-2.4)  # the spread: 12 points on 0.2 lot
    # Closing it again: the position is gone.
    assert term.order_send(close).retcode == 10036


def test_history_by_time_keeps_closed_positions(term):
    first = _open(term, mt5.ORDER_TYPE_BUY)
    term.feed_bars("EURUSD", [_bar(1, 1.1, 1.1060, 1.1, 1.105)])
    second = _open(term, mt5.ORDER_TYPE_BUY)
    server_now = NOW.timestamp() + OFFSET
    everything = term.history_deals_get(server_now - 3600, server_now + 3600)
    assert {d.position_id for d in everything} == {first.ticket, second.ticket}
    assert [d.entry for d in everything if d.position_id == second.ticket] == [mt5.DEAL_ENTRY_IN]
    assert term.history_deals_get(server_now + 7200, server_now + 9000) == ()
    term.shutdown()
    assert term.history_deals_get(0, server_now) is None


def test_a_close_is_refused_as_a_trade_server_refuses_it_and_the_position_stays(term):
    pos = _open(term, mt5.ORDER_TYPE_BUY)
    tick = term.symbol_info_tick("EURUSD")

    def close(**change):
        request = {
            "action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": pos.volume, "type": mt5.ORDER_TYPE_SELL,
            "position": pos.ticket, "price": tick.bid, "deviation": 10, "type_filling": mt5.ORDER_FILLING_FOK,
        }  # fmt: skip
        return term.order_send({**request, **change})

    assert close(type=mt5.ORDER_TYPE_BUY).retcode == mt5.TRADE_RETCODE_INVALID  # the same side opens, not closes
    assert close(volume=pos.volume * 2).retcode == mt5.TRADE_RETCODE_INVALID  # more than it holds
    far = close(price=tick.bid - 0.0050)
    # A requote quotes the market (the close price) and fills nothing.
    assert (far.retcode, far.order, far.deal, far.volume) == (mt5.TRADE_RETCODE_REQUOTE, 0, 0, 0.0)
    assert far.price == pytest.approx(tick.bid)
    term.script("EURUSD", [mt5.TRADE_RETCODE_NO_MONEY])
    assert close().retcode == mt5.TRADE_RETCODE_NO_MONEY
    term.market_closed.add("EURUSD")
    assert close().retcode == mt5.TRADE_RETCODE_MARKET_CLOSED
    assert close(symbol="GBPUSD").retcode == 10036  # not that symbol's position
    assert term.positions_get() == (pos,)
    assert [d.entry for d in term.history_deals_get(position=pos.ticket)] == [mt5.DEAL_ENTRY_IN]
    term.market_closed.clear()
    assert close().retcode == mt5.TRADE_RETCODE_DONE and term.positions_get() == ()
