"""The bridge's side of closing the loop (docs/trades.md): the execution policy at the
terminal, trades reported from the deals history (also those closed while the bridge
was down), and reconciliation with the API; the real API on loopback, the stand-in
terminal, the clock driven by the test."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from mt5_pipeline.clock import as_utc, iso_z
from mt5_pipeline.signals import queue
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import trades as trades_table
from mt5_pipeline_tests.bridge_support import API_KEY, build_rig
from mt5_pipeline_tests.ea_server import make_signal

MAGIC = 4242


def api_trades(url: str) -> dict[int, dict]:
    with get_engine(url).connect() as conn:
        return {int(r["ticket"]): dict(r) for r in conn.execute(select(trades_table)).mappings()}


def signal(rig, side: str = "BUY", symbol: str = "EURUSD", **meta) -> dict:
    now = rig.clock()
    body = make_signal(
        symbol,
        side=side,
        ts=now.replace(second=0, microsecond=0) - timedelta(minutes=1),
        expires_at=now + timedelta(minutes=5),
    )
    body["meta"].update(pip_size=0.0001 if symbol == "EURUSD" else 0.01, **meta)
    queue.enqueue(rig.url, body, now=now)
    return body


@pytest.fixture
def reverse_rig(sqlite_url, tmp_path):
    r = build_rig(sqlite_url, tmp_path, ENTRY_POLICY="reverse")
    yield r
    r.close()


def test_a_signal_the_policy_skips_is_acked_rejected_with_why_and_no_order(rig):
    first = signal(rig, "BUY")
    code, answer = rig.bridge.executor.handle(first)
    assert code == 200 and answer["success"], answer
    sent = len(rig.mt5.requests)
    second = signal(rig, "SELL")
    code, answer = rig.bridge.executor.handle(second)
    assert code == 200 and not answer["success"]
    assert answer["message"].startswith("skipped by the execution policy (one_per_symbol_timeframe)"), answer
    assert str(answer["ticket"] if "ticket" in answer else first_ticket(rig, first)) in answer["message"]
    assert len(rig.mt5.requests) == sent  # nothing sent to the terminal
    ack = rig.bridge.store.ack_row(second["signal_id"])
    assert '"status": "REJECTED"' in ack["body"] and "skipped by the execution policy" in ack["body"]
    # Another symbol, or the same one under the policy the signal carries, is not held back.
    code, answer = rig.bridge.executor.handle(signal(rig, "SELL", symbol="USDJPY"))
    assert answer["success"], answer
    code, answer = rig.bridge.executor.handle(signal(rig, "SELL", entry_policy="stack", max_hold_bars=60))
    assert answer["success"], answer
    assert len(rig.mt5.positions) == 3


def first_ticket(rig, body) -> int:
    return int(rig.bridge.store.execution(body["signal_id"])["ticket"])


def test_reverse_closes_the_opposite_position_first_and_the_trade_says_why(reverse_rig):
    rig = reverse_rig
    buy = signal(rig, "BUY")
    assert rig.bridge.executor.handle(buy)[1]["success"]
    same = signal(rig, "BUY")
    assert rig.bridge.executor.handle(same)[1]["message"].startswith("skipped by the execution policy (reverse)")
    rig.clock.advance(60)
    sell = signal(rig, "SELL")
    code, answer = rig.bridge.executor.handle(sell)
    assert answer["success"], answer
    assert [p.type for p in rig.mt5.positions.values()] == [rig.mt5.ORDER_TYPE_SELL]
    rig.bridge.reconciler.cycle()
    rows = api_trades(rig.url)
    closed = rows[first_ticket(rig, buy)]
    assert closed["exit_reason"] == "opposite_signal" and closed["close_time"] is not None
    assert closed["signal_id"] == buy["signal_id"] and not closed["unknown_signal"]
    assert rows[first_ticket(rig, sell)]["close_time"] is None


def test_time_exit_at_the_close_of_the_last_bar(rig):
    body = signal(rig, "BUY", max_hold_bars=3, entry_policy="one_per_symbol_timeframe")
    assert rig.bridge.executor.handle(body)[1]["success"]
    ticket = first_ticket(rig, body)
    # Entered at the bar after the signal's: 3 bars are held through the close of bar +3.
    entry = rig.clock().replace(second=0, microsecond=0)
    rig.clock.now = entry + timedelta(minutes=2, seconds=59)
    assert rig.bridge.positions.time_exits() == []  # the 3rd bar has not closed
    rig.clock.now = entry + timedelta(minutes=3, seconds=1)
    assert rig.bridge.positions.time_exits() == [ticket]
    assert ticket not in rig.mt5.positions
    rig.bridge.reconciler.cycle()
    row = api_trades(rig.url)[ticket]
    assert row["exit_reason"] == "time" and row["pips"] is not None
    assert rig.bridge.health()[1]["positions"]["time_exits"] == 1


def test_a_trade_closed_while_the_bridge_was_down_is_reported_when_it_comes_back(rig):
    rig.mt5.commission_per_lot = 3.5
    body = signal(rig, "BUY")
    assert rig.bridge.executor.handle(body)[1]["success"]
    ticket = first_ticket(rig, body)
    rig.bridge.reconciler.cycle()
    row = api_trades(rig.url)[ticket]
    assert row["close_time"] is None and row["open_price"] > 0 and row["timeframe"] == "M1"
    assert rig.bridge.store.report_counts()["pending"] == 0

    rig.api_server.stop()  # the API is down too while it closes: nothing is lost
    rig.bridge_server.stop()
    rig.bridge.close()
    pos = rig.mt5.positions[ticket]
    server_bar = int(rig.clock().timestamp()) + 7200 + 60
    [deal] = rig.mt5.feed_bars(
        "EURUSD", [(server_bar, pos.price_open, pos.price_open + 0.001, pos.sl - 0.0001, pos.price_open, 10, 0, 0)]
    )
    assert deal.reason == rig.mt5.DEAL_REASON_SL
    rig.clock.advance(180)
    rig.api_server.start()
    rig.restart_bridge()
    rig.bridge.reconciler.cycle()
    row = api_trades(rig.url)[ticket]
    assert row["exit_reason"] == "sl" and row["close_price"] == pytest.approx(pos.sl)
    assert row["pips"] == pytest.approx(-20, abs=0.2)
    assert row["profit"] == pytest.approx(deal.profit) and row["commission"] == pytest.approx(-0.7)
    # UTC: the deal's server time less the server's offset.
    assert int(as_utc(row["close_time"]).timestamp()) == deal.time - 7200
    # Read again: nothing new to send, nothing changes.
    updated = row["updated_at"]
    rig.bridge.reconciler.cycle()
    assert rig.bridge.store.report_counts()["pending"] == 0
    assert api_trades(rig.url)[ticket]["updated_at"] == updated


def _buy_by_hand(mt5, magic: int, **extra):
    """0.05 lots of EURUSD bought at the ask in the terminal itself, not through the bridge."""
    tick = mt5.symbol_info_tick("EURUSD")
    return mt5.order_send(
        {
            "action": 1,
            "symbol": "EURUSD",
            "volume": 0.05,
            "type": 0,
            "price": tick.ask,
            "deviation": 10,
            "magic": magic,
            **extra,
            "type_filling": 0,
        }
    )


def test_reconciliation_records_unknown_positions_and_leaves_them_open(rig):
    # A position a person opened with the bridge's magic: no signal, no record.
    ticket = int(_buy_by_hand(rig.mt5, MAGIC, comment="by hand").order)
    # Another one without the magic is none of the bridge's business.
    _buy_by_hand(rig.mt5, 0)
    # The API believes in a trade this terminal does not hold.
    with httpx.Client(base_url=rig.api_server.base_url, headers={"X-API-Key": API_KEY}) as api:
        ghost = {
            "ticket": 777,
            "symbol": "EURUSD",
            "side": "SELL",
            "volume": 0.1,
            "open_time": iso_z(rig.clock() - timedelta(hours=1)),
            "open_price": 1.08,
            "magic": MAGIC,
        }
        assert api.post("/ea/trades", json={"trades": [ghost]}).status_code == 200
    rig.bridge.trade_reports.scan = lambda: 0  # compare before the history is read, as on a first start
    status = rig.bridge.reconciler.cycle()
    assert status.unknown == [ticket] and status.missing == [777]
    health = rig.bridge.health()[1]
    assert health["reconciliation"]["state"] == "differences" and health["reconciliation"]["unknown"] == [ticket]
    metrics = httpx.get(f"{rig.bridge_server.base_url}/metrics").text
    assert 'mt5_bridge_reconciliation_differences{kind="unknown"} 1.0' in metrics
    assert 'mt5_bridge_reconciliation_differences{kind="missing"} 1.0' in metrics
    assert ticket in rig.mt5.positions  # recorded, never closed
    row = api_trades(rig.url)[ticket]
    assert row["unknown_signal"] and row["close_time"] is None and row["magic"] == MAGIC
    # Next minute: the unknown one is known now; the ghost stays missing (no close in this history).
    status = rig.bridge.reconciler.cycle()
    assert status.unknown == [] and status.missing == [777]
    # A person closes the position: reported as manual, and the record is in sync again.
    pos = rig.mt5.positions[ticket]
    tick = rig.mt5.symbol_info_tick("EURUSD")
    rig.mt5.order_send(
        {
            "action": 1,
            "symbol": "EURUSD",
            "volume": pos.volume,
            "type": 1,
            "position": ticket,
            "price": tick.bid,
            "deviation": 10,
            "magic": 0,
        }
    )
    del rig.bridge.trade_reports.scan
    rig.bridge.reconciler.cycle()
    assert api_trades(rig.url)[ticket]["exit_reason"] == "manual"


def test_a_position_due_at_the_bar_close_is_closed_before_the_next_signal_is_judged(rig):
    """The backtest frees the slot at the close of the last bar; a signal arriving before
    the positions loop has woken must see it free too."""
    first = signal(rig, "BUY", max_hold_bars=2, entry_policy="one_per_symbol_timeframe")
    assert rig.bridge.executor.handle(first)[1]["success"]
    entry = rig.clock().replace(second=0, microsecond=0)
    rig.clock.now = entry + timedelta(minutes=2, seconds=1)  # the 2nd bar has just closed; no loop ran
    code, answer = rig.bridge.executor.handle(
        signal(rig, "SELL", max_hold_bars=2, entry_policy="one_per_symbol_timeframe")
    )
    assert answer["success"], answer
    assert first_ticket(rig, first) not in rig.mt5.positions
    rig.bridge.reconciler.cycle()
    assert api_trades(rig.url)[first_ticket(rig, first)]["exit_reason"] == "time"


def test_trade_reports_wait_in_the_outbox_while_the_api_is_down(rig):
    body = signal(rig, "BUY")
    assert rig.bridge.executor.handle(body)[1]["success"]
    ticket = first_ticket(rig, body)
    rig.api_server.stop()
    assert rig.bridge.trade_reports.cycle() == 0
    assert rig.bridge.store.report_counts()["pending"] == 1
    health = rig.bridge.health()[1]
    assert health["trade_reports"]["pending"] == 1 and health["trade_reports"]["error"]
    assert rig.bridge.reconciler.cycle().error  # the comparison waits too, and says why
    rig.api_server.start()
    rig.bridge.trade_reports.send_due(now=float("inf"))  # past the back-off
    assert rig.bridge.store.report_counts()["pending"] == 0
    assert api_trades(rig.url)[ticket]["close_time"] is None


def test_deal_times_are_converted_with_the_servers_zone_rules(sqlite_url, tmp_path):
    """BRIDGE_SERVER_TIME_ZONE: a deal in summer is UTC+3, one in winter UTC+2, whatever
    the offset today (the core's server_time, the conversion the API applies to bars)."""
    from datetime import datetime, timezone

    rig = build_rig(sqlite_url, tmp_path, BRIDGE_SERVER_TIME_ZONE="UTC+2/+3@US")
    try:
        july = int(datetime(2024, 7, 10, 12, 0, tzinfo=timezone.utc).timestamp())
        january = int(datetime(2024, 1, 10, 12, 0, tzinfo=timezone.utc).timestamp())
        assert rig.bridge.server_to_utc([july + 3 * 3600, january + 2 * 3600]) == [july, january]
        body = signal(rig, "BUY")
        assert rig.bridge.executor.handle(body)[1]["success"]
        ticket = first_ticket(rig, body)
        # The position's IN deal as a summer server time (the history, not the clock, says when).
        rig.mt5.deals = [d._replace(time=july + 3 * 3600) if d.position_id == ticket else d for d in rig.mt5.deals]
        rig.bridge.trade_reports.report_positions([ticket])
        rig.bridge.trade_reports.send_due()
        assert int(as_utc(api_trades(rig.url)[ticket]["open_time"]).timestamp()) == july
    finally:
        rig.close()
