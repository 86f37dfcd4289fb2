"""`mt5-pipeline bridge` end to end: the real API and pusher on loopback, the bridge on
the stand-in terminal, the bar clock driven by the test (no minute is waited for)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from itertools import pairwise

import httpx
import pytest

from mt5_pipeline.bridge import orders
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.clock import iso_z
from mt5_pipeline.delivery.pusher import push_pending
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.settings import Settings, SettingsError
from mt5_pipeline.signals import queue
from mt5_pipeline.storage.candles import read_candles
from mt5_pipeline_tests.bridge_support import EA_KEY, build_rig
from mt5_pipeline_tests.ea_server import make_signal

OFFSET = 2 * 3600  # the stand-in trade server runs at UTC+2


@pytest.fixture
def pull_rig(sqlite_url, tmp_path):
    r = build_rig(sqlite_url, tmp_path, mode="pull")
    yield r
    r.close()


def stored_times(url: str, symbol: str) -> list[int]:
    frame = read_candles(url, symbol, "M1")
    return [int(ts.timestamp()) for ts in frame["ts"]]


def last_closed_open(rig) -> int:
    return int(rig.clock().timestamp()) // 60 * 60 - 60


# ---- bars ------------------------------------------------------------------------------


def test_bars_catch_up_on_start_then_each_closed_bar_as_it_closes(any_rig):
    rig = any_rig
    sent = rig.bridge.bars.cycle()
    assert sent == 3 * 120
    assert {"EURUSD", "USDJPY", "XAUUSD"} <= rig.mt5.visible  # put in Market Watch first
    for symbol in ("EURUSD", "USDJPY", "XAUUSD"):
        times = stored_times(rig.url, symbol)
        assert len(times) == 120
        assert times[-1] == last_closed_open(rig)  # the forming bar is not sent
        assert all(b - a == 60 for a, b in pairwise(times))
    # Values are the terminal's MqlRates, times moved from server time to UTC.
    rates = rig.mt5.copy_rates_from_pos("EURUSD", rig.mt5.TIMEFRAME_M1, 1, 1)
    frame = read_candles(rig.url, "EURUSD", "M1")
    newest = frame.iloc[-1]
    assert int(newest["ts"].timestamp()) == int(rates["time"][0]) - OFFSET
    assert (newest["open"], newest["high"], newest["low"], newest["close"]) == pytest.approx(
        (rates["open"][0], rates["high"][0], rates["low"][0], rates["close"][0])
    )
    assert int(newest["tick_volume"]) == int(rates["tick_volume"][0])

    assert rig.bridge.bars.cycle() == 0  # nothing closed since: nothing sent
    rig.clock.advance(60)
    assert rig.bridge.bars.cycle() == 3
    assert stored_times(rig.url, "USDJPY")[-1] == last_closed_open(rig)
    assert len(stored_times(rig.url, "USDJPY")) == 121


def test_bars_survive_the_api_being_down_and_skip_none(rig):
    rig.bridge.bars.cycle()
    before = stored_times(rig.url, "EURUSD")[-1]
    rig.api_server.stop()
    rig.clock.advance(60)
    assert rig.bridge.bars.cycle() == 0
    code, health = rig.bridge.health()
    assert health["api"] == "unreachable"
    assert "EURUSD M1" in health["bars"] and health["bars"]["EURUSD M1"]["error"]
    rig.clock.advance(180)
    assert rig.bridge.bars.cycle() == 0
    rig.api_server.start()
    assert rig.bridge.bars.cycle() == 3 * 4  # four bars closed meanwhile, per symbol
    times = stored_times(rig.url, "EURUSD")
    assert times[-1] == last_closed_open(rig) == before + 4 * 60
    assert all(b - a == 60 for a, b in pairwise(times))
    assert rig.bridge.health()[1]["api"] == "ok"


def test_bar_loop_wakes_just_after_each_close(rig):
    """The real loop, with a wait that moves the clock instead of sleeping."""
    import threading

    woke_at: list[float] = []
    newest_after: list[int] = []

    def wait(seconds: float) -> bool:
        rig.clock.advance(seconds)
        woke_at.append(rig.clock().timestamp())
        return len(woke_at) > 3

    original = rig.bridge.bars.cycle

    def cycle():
        n = original()
        newest_after.append(stored_times(rig.url, "EURUSD")[-1])
        return n

    rig.bridge.bars.cycle = cycle
    rig.bridge.bars.run(threading.Event(), wait=wait)
    for t in woke_at:
        assert 0 < t % 60 <= 1.0  # within a second after a minute closed
    # each cycle after a wake-up sent the bar that had just closed
    for t, newest in zip(woke_at[:-1], newest_after[1:], strict=True):
        assert newest == int(t) // 60 * 60 - 60


def test_h4_bars_keep_the_brokers_day_boundaries(sqlite_url, tmp_path):
    """H4 bars open at 00:00, 04:00, ... server time (UTC+2): 22:00, 02:00, ... UTC. The
    bridge sends UTC times with utc_offset_hours, which ingest checks them against."""
    rig = build_rig(sqlite_url, tmp_path, BRIDGE_TIMEFRAMES="M5,H4", BRIDGE_HISTORY_BARS="12", BRIDGE_SYMBOLS="EURUSD")
    try:
        assert rig.bridge.bars.cycle() == 24
        h4 = [int(ts.timestamp()) for ts in read_candles(rig.url, "EURUSD", "H4")["ts"]]
        assert len(h4) == 12 and all((t + OFFSET) % 14400 == 0 for t in h4)
        assert h4[-1] + 14400 <= rig.clock().timestamp()  # closed
        m5 = [int(ts.timestamp()) for ts in read_candles(rig.url, "EURUSD", "M5")["ts"]]
        assert m5[-1] == int(rig.clock().timestamp()) // 300 * 300 - 300
        # The loop wakes at the next close of either: M5 first, then H4 at a server boundary.
        now = rig.clock().timestamp()
        assert rig.bridge.bars.seconds_to_next_close() == pytest.approx(300 - now % 300 + 0.3)
        rig.bridge.bars.timeframes = ("H4",)
        assert (now + rig.bridge.bars.seconds_to_next_close() - 0.3 + OFFSET) % 14400 == pytest.approx(0, abs=1e-6)
    finally:
        rig.close()


def test_a_restarted_terminal_is_attached_again(rig):
    rig.bridge.bars.cycle()
    rig.mt5.shutdown()  # the terminal closed and came back: the IPC link is gone
    rig.clock.advance(60)
    assert rig.bridge.bars.cycle() == 3
    assert rig.mt5.initialized
    assert [c[0] for c in rig.mt5.calls].count("initialize") == 2


def test_signals_wait_while_the_terminal_is_down_and_trade_once_it_is_back(rig):
    [signal] = enqueue(rig, make_signal("EURUSD"))
    rig.mt5.shutdown()
    rig.mt5.available = False
    result = push_pending(rig.api_settings)
    assert result.sent == 0 and result.retried == 1  # a 503: asked again later, not rejected
    assert rig.bridge.store.execution(signal["signal_id"]) is None and rig.mt5.requests == []
    rig.mt5.available = True
    answer = post(rig, signal).json()  # the pusher's retry
    assert answer["success"] is True and len(rig.mt5.requests) == 1


def test_server_offset_is_measured_from_the_tick_or_taken_from_the_settings(rig, sqlite_url, tmp_path):
    assert rig.bridge.bars.offset_seconds() == OFFSET
    other = build_rig(sqlite_url, tmp_path / "fixed", BRIDGE_UTC_OFFSET_HOURS="2")
    try:
        assert other.bridge.bars.offset_seconds() == OFFSET
    finally:
        other.close()


# ---- orders through the real pusher -----------------------------------------------------


def enqueue(rig, *signals):
    assert queue.enqueue_many(rig.url, list(signals)) == len(signals)
    return signals


EXPECTED = {
    # symbol: (meta.pip_size, filling)
    "EURUSD": (0.0001, 0),  # 5 digits; FOK allowed
    "USDJPY": (0.01, 1),  # 3 digits; IOC only
    "XAUUSD": (0.1, 2),  # 2-digit gold with PIP_SIZES=XAUUSD=0.1 on the API; neither flag: RETURN
}


def with_pip(signal: dict, pip: float) -> dict:
    """A signal as the API sends it: its pip in meta.pip_size."""
    return {**signal, "meta": {**signal["meta"], "pip_size": pip}}


@pytest.mark.parametrize("side", ["BUY", "SELL"])
def test_buy_and_sell_on_each_symbol_give_the_right_request_and_an_ack(any_rig, side):
    rig = any_rig
    signals = enqueue(rig, *(with_pip(make_signal(s, side=side), EXPECTED[s][0]) for s in EXPECTED))
    ticks = {s: rig.mt5.symbol_info_tick(s) for s in EXPECTED}
    result = push_pending(rig.api_settings)
    assert result.sent == 3 and result.rejected == 0
    assert len(rig.mt5.requests) == 3
    by_symbol = {r["symbol"]: r for r in rig.mt5.requests}
    for signal in signals:
        symbol = signal["symbol"]
        pip, filling = EXPECTED[symbol]
        digits = rig.mt5.symbol_info(symbol).digits
        req = by_symbol[symbol]
        tick = ticks[symbol]
        price = tick.ask if side == "BUY" else tick.bid
        sign = 1 if side == "BUY" else -1
        assert req["action"] == rig.mt5.requests[0]["action"] == 1  # TRADE_ACTION_DEAL
        assert req["type"] == (0 if side == "BUY" else 1)
        assert req["price"] == price
        assert req["sl"] == round(price - sign * 20 * pip, digits)
        assert req["tp"] == round(price + sign * 40 * pip, digits)
        assert req["type_filling"] == filling
        assert req["comment"] == signal["signal_id"][:31] and len(req["comment"]) == 31
        assert (req["magic"], req["deviation"], req["volume"]) == (4242, 10, 0.1)
    # The acks reach the API: every signal ACKED with the terminal's ticket.
    assert rig.bridge.acks.send_due() == 3
    tickets = {p.comment: p.ticket for p in rig.mt5.positions.values()}
    for signal in signals:
        row = queue.get_signal(rig.url, signal["signal_id"])
        assert row["status"] == "ACKED"
        assert row["ticket"] == tickets[signal["signal_id"][:31]]


def test_stops_inside_the_brokers_stop_level_are_widened(rig):
    signal = make_signal("XAUUSD", side="BUY")
    signal["sl_pips"] = 2  # 0.2 = 20 points; the stand-in broker's stops level is 50 points
    enqueue(rig, signal)
    assert push_pending(rig.api_settings).sent == 1
    [req] = rig.mt5.requests
    tick = rig.mt5.symbol_info_tick("XAUUSD")
    assert req["sl"] == round(tick.bid - 50 * 0.01, 2)
    assert rig.bridge.acks.send_due() == 1
    assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "ACKED"
    assert "sl widened" in ack_row(rig, signal["signal_id"]).message  # the ack says so


def ack_row(rig, signal_id):
    from sqlalchemy import select

    from mt5_pipeline.storage.engine import get_engine
    from mt5_pipeline.storage.schema import signals_ack

    with get_engine(rig.url).connect() as conn:
        return conn.execute(select(signals_ack).where(signals_ack.c.signal_id == signal_id)).one()


def test_orders_sized_by_risk_lose_that_share_of_the_balance_at_the_stop(sqlite_url, tmp_path):
    rig = build_rig(sqlite_url, tmp_path, BRIDGE_RISK_PERCENT="1")
    try:
        enqueue(rig, *(with_pip(make_signal(s), EXPECTED[s][0]) for s in EXPECTED))
        assert push_pending(rig.api_settings).sent == 3
        volumes = {r["symbol"]: r["volume"] for r in rig.mt5.requests}
        # 1% of 10,000 USD = 100 USD at a 20-pip stop.
        assert volumes["EURUSD"] == 0.5  # 20 pips = 200 ticks x 1 USD per lot
        assert volumes["XAUUSD"] == 0.5  # 2.00 USD = 200 ticks x 1 USD per lot (100 oz)
        jpy = rig.mt5.requests[[r["symbol"] for r in rig.mt5.requests].index("USDJPY")]
        loss_per_lot = (
            abs(jpy["price"] - jpy["sl"]) / 0.001 * (100_000 * 0.001 / rig.mt5.symbol_info_tick("USDJPY").bid)
        )
        assert volumes["USDJPY"] == pytest.approx(int(100 / loss_per_lot * 100) / 100)  # rounded down to 0.01
    finally:
        rig.close()


def test_a_requote_is_retried_once_at_the_new_price(rig):
    rig.mt5.script("EURUSD", [10004])
    [signal] = enqueue(rig, make_signal("EURUSD", side="BUY"))
    assert push_pending(rig.api_settings).sent == 1
    first, second = rig.mt5.requests
    assert second["price"] == pytest.approx(first["price"] + 3 * 0.00001)  # the new ask
    assert second["sl"] == round(second["price"] - 0.002, 5)
    assert rig.bridge.store.execution(signal["signal_id"])["status"] == "FILLED"


def test_a_second_requote_is_not_final_and_the_next_push_trades_it_once(rig):
    from datetime import datetime, timezone

    rig.mt5.script("EURUSD", [10004, 10020])
    [signal] = enqueue(rig, make_signal("EURUSD"))
    t0 = datetime.now(timezone.utc)
    result = push_pending(rig.api_settings, now=t0)
    assert result.rejected == 0 and result.sent == 0  # 503: the terminal said "not now"
    assert len(rig.mt5.requests) == 2  # one immediate retry, no third
    assert rig.bridge.store.execution(signal["signal_id"])["status"] == "RETRY"
    assert rig.bridge.acks.send_due() == 0  # nothing final, nothing acked
    assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "PENDING"
    assert push_pending(rig.api_settings, now=t0 + timedelta(seconds=60)).sent == 1
    assert len(rig.mt5.positions) == 1 and len(rig.mt5.requests) == 3


def test_a_closed_market_is_rejected_with_the_retcode_and_acked_as_such(rig):
    rig.mt5.market_closed.add("USDJPY")
    [signal] = enqueue(rig, make_signal("USDJPY", side="SELL", price=151.2))
    answer = httpx.post(
        rig.signals_url, json=signal, headers={"X-API-Key": EA_KEY, "Idempotency-Key": signal["signal_id"]}
    ).json()
    assert answer["success"] is False
    assert answer["retcode"] == 10018 and "Market is closed" in answer["description"]
    assert rig.bridge.acks.send_due() == 1
    row = queue.get_signal(rig.url, signal["signal_id"])
    assert row["ticket"] is None
    ack = ack_row(rig, signal["signal_id"])
    assert ack.status == "REJECTED"
    assert "10018" in ack.message and "Market is closed" in ack.message


def test_the_pusher_marks_a_terminal_rejection_rejected(rig):
    rig.mt5.market_closed.add("EURUSD")
    [signal] = enqueue(rig, make_signal("EURUSD"))
    result = push_pending(rig.api_settings)
    assert result.rejected == 1 and result.sent == 0
    assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "REJECTED"


def post(rig, body, key=EA_KEY):
    return httpx.post(
        rig.signals_url, content=json.dumps(body), headers={"X-API-Key": key, "Content-Type": "application/json"}
    )


def test_a_repeated_signal_id_gets_the_same_ticket_and_no_second_order(rig):
    [signal] = enqueue(rig, make_signal("EURUSD"))
    assert push_pending(rig.api_settings).sent == 1
    first = rig.bridge.store.execution(signal["signal_id"])
    again = post(rig, signal)
    assert again.status_code == 200
    assert again.json()["ticket"] == first["ticket"] and again.json()["duplicate"] is True
    assert len(rig.mt5.requests) == 1


def test_an_expired_signal_is_refused_and_never_traded(rig):
    signal = make_signal("EURUSD", expires_at=rig.clock() - timedelta(seconds=1))
    answer = post(rig, signal)
    assert answer.status_code == 200
    assert answer.json()["success"] is False and "expired" in answer.json()["message"]
    assert rig.mt5.requests == []
    assert rig.bridge.store.execution(signal["signal_id"])["status"] == "EXPIRED"
    assert (
        post(rig, {**signal, "expires_at": iso_z(rig.clock() + timedelta(hours=1))}).json()["success"] is False
    )  # still refused


def test_the_signals_server_checks_the_key_and_the_body(rig):
    signal = make_signal("EURUSD")
    assert post(rig, signal, key="wrong").status_code == 401
    bad = post(rig, {**signal, "side": "HOLD"})
    assert bad.status_code == 422 and "side" in bad.json()["message"]
    assert rig.mt5.requests == []
    health = httpx.get(f"{rig.bridge_server.base_url}/health")  # no key needed
    assert health.status_code == 200 and health.json()["terminal"] == "connected"
    assert health.json()["mode"] == "push"


def test_a_restart_keeps_the_dedupe(rig):
    [signal] = enqueue(rig, make_signal("XAUUSD", side="SELL", price=2390.0))
    assert push_pending(rig.api_settings).sent == 1
    ticket = rig.bridge.store.execution(signal["signal_id"])["ticket"]
    rig.restart_bridge()
    answer = post(rig, signal).json()
    assert answer["ticket"] == ticket and answer["duplicate"] is True
    assert len(rig.mt5.requests) == 1


def test_unsent_acks_survive_a_restart_and_are_retried_until_taken(rig):
    [signal] = enqueue(rig, make_signal("EURUSD"))
    rig.api_server.stop()
    assert post(rig, signal).json()["success"] is True
    assert rig.bridge.acks.send_due() == 0
    row = rig.bridge.store.ack_row(signal["signal_id"])
    assert row["attempts"] == 1 and row["acked_at"] is None
    rig.restart_bridge()
    rig.api_server.start()
    assert rig.bridge.acks.send_due(now=time.time() + 3600) == 1
    assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "ACKED"


def test_an_interrupted_send_is_looked_up_not_sent_again(rig):
    placed = make_signal("EURUSD")
    lost = make_signal("EURUSD")
    for signal in (placed, lost):
        rig.bridge.store.begin(Signal.from_payload(signal))  # the bridge died after this, during order_send
    tick = rig.mt5.symbol_info_tick("EURUSD")
    rig.mt5.order_send(
        {
            "action": 1,
            "symbol": "EURUSD",
            "volume": 0.1,
            "type": 0,
            "price": tick.ask,
            "sl": 0.0,
            "tp": 0.0,
            "deviation": 10,
            "magic": 4242,
            "comment": placed["signal_id"][:31],
            "type_filling": 0,
        }
    )
    ticket = rig.mt5.requests and max(rig.mt5.positions)
    answer = post(rig, placed).json()
    assert answer["success"] is True and answer["ticket"] == ticket
    # While the terminal cannot answer, "not found" is not concluded: 503, still in flight.
    rig.mt5.shutdown()
    rig.mt5.available = False
    response = post(rig, lost)
    assert response.status_code == 503 and rig.bridge.store.execution(lost["signal_id"])["status"] == "SENDING"
    rig.mt5.available = True
    answer = post(rig, lost).json()
    assert answer["success"] is False and "not sent again" in answer["message"]
    assert len(rig.mt5.requests) == 1


# ---- pull mode ---------------------------------------------------------------------------


def test_pull_mode_trades_dedupes_and_acks_the_same_way(pull_rig):
    rig = pull_rig
    rig.mt5.market_closed.add("USDJPY")
    eur, jpy = enqueue(rig, make_signal("EURUSD", side="SELL"), make_signal("USDJPY", price=151.2))
    answers = rig.bridge.poller.poll_once()
    assert [a["success"] for a in answers] == [True, False]
    assert answers[1]["retcode"] == 10018
    [req] = [r for r in rig.mt5.requests if r["symbol"] == "EURUSD"]
    assert req["type"] == 1 and req["comment"] == eur["signal_id"][:31]
    # Not acked yet: the API hands them out again; the dedupe answers without an order.
    again = rig.bridge.poller.poll_once()
    assert [a.get("duplicate") for a in again] == [True, True]
    assert len(rig.mt5.requests) == 2
    assert rig.bridge.acks.send_due() == 2
    assert queue.get_signal(rig.url, eur["signal_id"])["status"] == "ACKED"
    assert rig.bridge.poller.poll_once() == []  # acked: no longer pending


def test_pull_mode_loop_runs_in_the_background(pull_rig):
    from mt5_pipeline_tests.ea_server import wait_for

    rig = pull_rig
    [signal] = enqueue(rig, make_signal("EURUSD"))
    rig.bridge.start()
    assert wait_for(lambda: (queue.get_signal(rig.url, signal["signal_id"]) or {}).get("status") == "ACKED", timeout=20)
    assert len(rig.mt5.requests) == 1


# ---- the arithmetic and the settings ------------------------------------------------------


def test_lots_are_rounded_down_to_the_volume_step_and_too_small_is_refused():
    mt5 = FakeMT5()
    mt5.initialize()
    info = mt5.symbol_info("EURUSD")
    assert orders._volume(0.057, info) == 0.05
    with pytest.raises(ValueError, match="BRIDGE_LOTS"):
        orders._volume(0.004, info)


def test_bridge_settings_are_checked():
    with pytest.raises(SettingsError, match="BRIDGE_MODE"):
        Settings.from_env({"BRIDGE_MODE": "both"}, env_file=None)
    with pytest.raises(SettingsError, match="BRIDGE_TIMEFRAMES"):
        Settings.from_env({"BRIDGE_TIMEFRAMES": "M1,M2"}, env_file=None)
    with pytest.raises(SettingsError, match="BRIDGE_RISK_PERCENT"):
        Settings.from_env({"BRIDGE_RISK_PERCENT": "25"}, env_file=None)
    with pytest.raises(SettingsError, match="BRIDGE_UTC_OFFSET_HOURS"):
        Settings.from_env({"BRIDGE_UTC_OFFSET_HOURS": "20"}, env_file=None)
    s = Settings.from_env(
        {"BRIDGE_SYMBOLS": "EURUSD, XAUUSD", "BRIDGE_TIMEFRAMES": "m1,h1", "BRIDGE_UTC_OFFSET_HOURS": "3"},
        env_file=None,
    )
    assert (
        s.bridge_symbols == ("EURUSD", "XAUUSD")
        and s.bridge_timeframes == ("M1", "H1")
        and s.bridge_utc_offset_hours == 3
    )


# ---- as operators run it -------------------------------------------------------------------


@pytest.mark.slow
def test_the_bridge_command_feeds_bars_and_trades_pushed_signals(tmp_path):
    """`mt5-pipeline serve` and `mt5-pipeline bridge --fake` as real processes, the real
    pusher in between: bars arrive, a pushed signal becomes an order and comes back ACKED."""
    import subprocess

    from mt5_pipeline.apps.servers import free_port
    from mt5_pipeline.storage import migrate
    from mt5_pipeline_tests.api_support import cli, serve_process, subprocess_env
    from mt5_pipeline_tests.ea_server import wait_for

    url = f"sqlite:///{tmp_path / 'mt5.db'}"
    migrate.upgrade(url)
    api_port, bridge_port = free_port(), free_port()
    common = {
        "DATABASE_URL": url,
        "MODEL_DIR": str(tmp_path / "models"),
        "API_KEYS": "k-api",
        "EA_API_KEY": "k-ea",
        "LOG_LEVEL": "INFO",
    }
    env = subprocess_env(
        **common,
        BRIDGE_API_URL=f"http://127.0.0.1:{api_port}",
        BRIDGE_PORT=str(bridge_port),
        BRIDGE_SYMBOLS="EURUSD,XAUUSD",
        BRIDGE_HISTORY_BARS="30",
        BRIDGE_STORE=str(tmp_path / "bridge.sqlite3"),
    )
    with serve_process(subprocess_env(**common, API_PORT=str(api_port)), api_port, tmp_path):
        log = open(tmp_path / "bridge.log", "wb")
        proc = subprocess.Popen(
            [*cli(), "bridge", "--fake"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{bridge_port}"

            def healthy() -> bool:
                try:
                    return httpx.get(base + "/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            assert wait_for(healthy, timeout=60), (tmp_path / "bridge.log").read_text()
            assert wait_for(lambda: len(read_candles(url, "XAUUSD", "M1")) >= 30, timeout=30), (
                tmp_path / "bridge.log"
            ).read_text()
            [signal] = [make_signal("EURUSD")]
            queue.enqueue(url, signal)
            settings = Settings.from_env({**common, "EA_SERVER_URL": f"{base}/signals"}, env_file=None)
            assert push_pending(settings).sent == 1
            assert wait_for(lambda: queue.get_signal(url, signal["signal_id"])["status"] == "ACKED", timeout=30)
            assert queue.get_signal(url, signal["signal_id"])["ticket"] > 0
            health = httpx.get(base + "/health").json()
            assert health["signals"] == {"FILLED": 1} and health["acks_pending"] == 0
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    assert "k-ea" not in (tmp_path / "bridge.log").read_text()  # keys never in the log


def test_health_says_when_the_terminal_is_gone(rig):
    assert rig.bridge.health()[0] == 200
    rig.mt5.shutdown()  # the terminal closed under the bridge
    code, body = rig.bridge.health()
    assert code == 503 and body["status"] == "degraded" and body["terminal"] == "disconnected"
