"""The execution contract (docs/execution.md) against the parts that obey it: the core's
pip rule, the bridge's orders on the stand-in terminal, the ack table on both databases,
and what a transient or lost terminal answer does. (The MQL5 EA's side: test_mql5_ea.py.)"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select, update

from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.delivery.pusher import push_pending
from mt5_pipeline.execution import contract
from mt5_pipeline.market import pips
from mt5_pipeline.signals import queue
from mt5_pipeline.storage import symbols as stored_symbols
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_ack, signals_queue
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.bridge_support import API_KEY, EA_KEY, build_rig
from mt5_pipeline_tests.ea_server import make_signal

DOC = ROOT / "docs" / "execution.md"


def doc_table(heading: str) -> list[dict[str, str]]:
    """The first markdown table after ``heading`` in docs/execution.md, as dicts."""
    text = DOC.read_text()
    section = text[text.index(heading) :]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows: list[list[str]] = []
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if rows and len(cells) != len(rows[0]):
            break
        rows.append(cells)
    header, _, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


INSTRUMENTS = doc_table("## The pip")


def test_the_doc_table_has_every_class_the_issue_names():
    classes = " ".join(r["class"] for r in INSTRUMENTS)
    for word in (
        "major, 5",
        "major, 4",
        "yen, 3",
        "yen, 2",
        "exotic, 3",
        "exotic, 2",
        "gold, 2",
        "gold, 3",
        "silver, 3",
        "silver, 2",
        "index, 0",
        "index, 1",
        "index, 2",
        "crypto",
    ):
        assert word in classes
    assert len(INSTRUMENTS) >= 15


@pytest.mark.parametrize("row", INSTRUMENTS, ids=lambda r: r["example"])
def test_the_core_gives_each_class_the_documented_pip(row):
    digits, point, pip = int(row["digits"]), float(row["point"]), float(row["pip"])
    assert pips.pip_size(row["example"], None, (digits, point)) == pytest.approx(pip, rel=1e-12)
    assert pips.pip_size(row["example"], None, (digits, None)) == pytest.approx(pip, rel=1e-12)
    assert pips.pip_size(row["example"], {row["example"].upper(): 0.5}, (digits, point)) == 0.5  # PIP_SIZES wins
    # The quote really has those digits (the table is not a typo).
    assert len(row["quote"].partition(".")[2]) == digits


def test_digits_beat_the_currency_pair_name_rule():
    # Before: the FX name rule said 0.0001 for USDHUF whatever its digits (100x too small).
    assert pips.pip_size("USDHUF", None, None) == 0.0001  # not described yet: the name rule
    assert pips.pip_size("USDHUF", None, (3, 0.001)) == 0.01
    assert pips.pip_size("USDKRW", None, (2, 0.01)) == 0.01
    with pytest.raises(pips.PipSizeUnknown, match="PIP_SIZES"):
        pips.pip_size("XAUUSD", None, None)


def test_the_pip_entry_point_prefers_the_signals_own_pip():
    signal = make_signal("XAUUSD")
    assert contract.pip_for_signal(signal, 2, 0.01) == (0.01, "local rule (the signal carries no meta.pip_size)")
    signal["meta"]["pip_size"] = 0.1
    assert contract.pip_for_signal(signal, 2, 0.01) == (0.1, "meta.pip_size")
    with pytest.raises(pips.PipSizeUnknown):
        contract.pip_for_signal(make_signal("XAUUSD"), None, None)


# ---- the bridge's orders, per instrument class, on the stand-in terminal -----------------

FAKE = FakeMT5()
ON_THE_FAKE = [r for r in INSTRUMENTS if r["example"] in FAKE.specs]


def test_the_stand_in_terminal_has_every_class_and_its_specs_match_the_table():
    assert len(ON_THE_FAKE) == len(INSTRUMENTS)
    FAKE.initialize()
    for row in INSTRUMENTS:
        info = FAKE.symbol_info(row["example"])
        assert (info.digits, info.point, info.trade_tick_size) == (
            int(row["digits"]),
            pytest.approx(float(row["point"])),
            pytest.approx(float(row["tick size"])),
        )


@pytest.fixture(scope="module")
def module_rig(tmp_path_factory):
    from mt5_pipeline.storage import migrate

    tmp = tmp_path_factory.mktemp("contract-rig")
    url = f"sqlite:///{tmp / 'api.db'}"
    migrate.upgrade(url)
    rig = build_rig(url, tmp, ENTRY_POLICY="stack")  # each class is traded twice (with and without meta.pip_size)
    yield rig
    rig.close()


def on_grid(value: float, tick: float) -> bool:
    return abs(value / tick - round(value / tick)) < 1e-6


OBEYED = 3  # a signal's pip three times the terminal's own rule (a PIP_SIZES on the server)


@pytest.mark.parametrize("with_meta", [True, False], ids=["meta.pip_size", "local rule"])
def test_the_bridge_places_stops_at_the_core_pip_on_the_tick_grid_for_every_class(module_rig, with_meta):
    rig = module_rig
    before = len(rig.mt5.requests)
    signals = {}
    for i, row in enumerate(ON_THE_FAKE):
        signal = make_signal(
            row["example"],
            side="BUY" if i % 2 == 0 else "SELL",
            ts=datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=2 + with_meta),
        )
        signal.update(sl_pips=200, tp_pips=400)
        if with_meta:
            # Not the terminal's own rule: the bridge must place what the signal says.
            signal["meta"]["pip_size"] = float(row["pip"]) * OBEYED
        signals[row["example"]] = signal
    assert queue.enqueue_many(rig.url, list(signals.values())) == len(signals)
    result = push_pending(rig.api_settings)
    assert result.sent == len(signals), result
    requests = {r["comment"]: r for r in rig.mt5.requests[before:]}
    assert len(requests) == len(signals)
    for row in ON_THE_FAKE:
        signal = signals[row["example"]]
        req = requests[signal["signal_id"][:31]]
        pip, tick, digits = (
            float(row["pip"]) * (OBEYED if with_meta else 1),
            float(row["tick size"]),
            int(row["digits"]),
        )
        sign = 1 if signal["side"] == "BUY" else -1
        assert req["sl"] == pytest.approx(round(round((req["price"] - sign * 200 * pip) / tick) * tick, digits)), row
        assert req["tp"] == pytest.approx(round(round((req["price"] + sign * 400 * pip) / tick) * tick, digits)), row
        assert all(on_grid(req[k], tick) for k in ("price", "sl", "tp")), (row, req)
        execution = rig.bridge.store.execution(signal["signal_id"])
        assert execution["status"] == "FILLED", execution
        # Only the signal without meta.pip_size says where its pip came from.
        assert ("local rule" in execution["message"]) is (not with_meta)


def test_the_bridge_tells_the_api_each_instruments_digits_and_point_so_gold_needs_no_pip_sizes(rig):
    assert rig.bridge.bars.cycle() > 0
    assert stored_symbols.instrument(rig.url, "XAUUSD") == (2, 0.01)
    assert stored_symbols.instrument(rig.url, "USDJPY") == (3, 0.001)
    assert rig.api_settings.pip_sizes in ({}, None)
    assert pips.pip_size_for(rig.api_settings, rig.url, "XAUUSD") == 0.01


# ---- transient and lost answers -------------------------------------------------------------


@pytest.mark.parametrize("retcode", [10031, 10024, 10028, 10012])
def test_a_transient_retcode_then_success_delivers_once_within_the_ttl(rig, retcode):
    rig.mt5.script("EURUSD", [retcode])
    [signal] = [make_signal("EURUSD")]
    queue.enqueue_many(rig.url, [signal])
    t0 = datetime.now(timezone.utc)
    first = push_pending(rig.api_settings, now=t0)
    assert first.sent == first.rejected == 0 and first.retried == 1  # 503: tried again later
    assert rig.bridge.store.execution(signal["signal_id"])["status"] == "RETRY"
    assert rig.bridge.acks.send_due() == 0  # nothing final to tell
    assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "PENDING"
    second = push_pending(rig.api_settings, now=t0 + timedelta(seconds=30))  # within the 600 s TTL
    assert second.sent == 1
    assert rig.bridge.acks.send_due() == 1
    row = queue.get_signal(rig.url, signal["signal_id"])
    assert row["status"] == "ACKED" and row["ticket"] == max(rig.mt5.positions)
    assert len(rig.mt5.positions) == 1 and len(rig.mt5.requests) == 2


def test_a_transient_retcode_in_pull_mode_leaves_the_signal_pending(sqlite_url, tmp_path):
    rig = build_rig(sqlite_url, tmp_path, mode="pull")
    try:
        rig.mt5.script("EURUSD", [10031])
        [signal] = [make_signal("EURUSD")]
        queue.enqueue_many(rig.url, [signal])
        [answer] = rig.bridge.poller.poll_once()
        assert answer["success"] is False and answer["transient"] is True and answer["retcode"] == 10031
        assert rig.bridge.acks.send_due() == 0
        assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "PENDING"
        [answer] = rig.bridge.poller.poll_once()
        assert answer["success"] is True
        assert rig.bridge.acks.send_due() == 1
        assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "ACKED"
        assert len(rig.mt5.positions) == 1
    finally:
        rig.close()


def test_a_lost_order_send_answer_is_looked_up_and_the_position_is_not_hidden(rig):
    rig.mt5.lose_answers = 1  # the terminal executes the order, then the answer is lost
    [signal] = [make_signal("USDJPY", price=151.2)]
    queue.enqueue_many(rig.url, [signal])
    assert push_pending(rig.api_settings).sent == 1
    [position] = rig.mt5.positions.values()
    execution = rig.bridge.store.execution(signal["signal_id"])
    assert (execution["status"], execution["ticket"]) == ("FILLED", position.ticket)
    assert rig.bridge.acks.send_due() == 1
    row = queue.get_signal(rig.url, signal["signal_id"])
    assert (row["status"], row["ticket"]) == ("ACKED", position.ticket)
    assert len(rig.mt5.requests) == 1


def test_a_refusal_is_rejected_on_the_api_whoever_lands_first(pg_rig):
    rig = pg_rig
    rig.mt5.market_closed.add("EURUSD")
    [signal] = [make_signal("EURUSD")]
    queue.enqueue_many(rig.url, [signal])
    assert rig.bridge.acks.send_due() == 0
    # The ack lands before the pusher records its answer...
    answer = httpx.post(rig.signals_url, json=signal, headers={"X-API-Key": EA_KEY}).json()
    assert answer["retcode"] == 10018
    assert rig.bridge.acks.send_due() == 1
    row = queue.get_signal(rig.url, signal["signal_id"])
    assert row["status"] == "REJECTED" and "10018" in row["last_error"] and "Market is closed" in row["last_error"]
    # ...and the pusher's own verdict agrees with it (the bridge answers the repeat from its store).
    assert push_pending(rig.api_settings).sent == 0
    assert queue.get_signal(rig.url, signal["signal_id"])["status"] == "REJECTED"
    counts = queue.status_counts(rig.url)
    assert counts["REJECTED"] == 1 and counts["ACKED"] == 0
    status = httpx.get(f"{rig.api_server.base_url}/ea/queue-status", headers={"X-API-Key": API_KEY}).json()
    assert set(status["queue_status"]) == {"REJECTED"}


# ---- the ack table ---------------------------------------------------------------------------

ACK_TABLE = doc_table("## Acks: what each does")
STARTS = ("PENDING", "SENT", "FAILED", "EXPIRED", "REJECTED", "ACKED")
# Where each ack leaves a signal in each status, written out (not computed) so the
# contract's function is checked against the rule, not against itself.
EXPECTED_AFTER = {
    "FILLED": dict.fromkeys(STARTS, "ACKED"),
    "REJECTED": {
        "PENDING": "REJECTED",
        "SENT": "REJECTED",
        "FAILED": "REJECTED",
        "EXPIRED": "REJECTED",
        "REJECTED": "REJECTED",
        "ACKED": "ACKED",
    },
    "EXPIRED": {
        "PENDING": "EXPIRED",
        "SENT": "EXPIRED",
        "FAILED": "EXPIRED",
        "EXPIRED": "EXPIRED",
        "REJECTED": "REJECTED",
        "ACKED": "ACKED",
    },
}


def test_the_doc_ack_table_is_the_contracts():
    documented = {}
    for row in ACK_TABLE:
        for status in re.findall(r"`([A-Z]+)`", row["ack `status`"]):
            documented[status] = row["the signal becomes"].strip("`")
    assert documented == contract.ACK_OUTCOMES


@pytest.mark.parametrize("ack", sorted(EXPECTED_AFTER))
def test_each_ack_moves_a_signal_forwards_only_on_both_databases(db_url, ack):
    signals = [make_signal("EURUSD", ts=datetime(2025, 10, 27, 10, i, tzinfo=timezone.utc)) for i in range(len(STARTS))]
    queue.enqueue_many(db_url, signals)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        for signal, start in zip(signals, STARTS, strict=True):
            conn.execute(
                update(signals_queue).where(signals_queue.c.signal_id == signal["signal_id"]).values(status=start)
            )
    for signal, start in zip(signals, STARTS, strict=True):
        out = queue.record_ack(
            db_url,
            signal["signal_id"],
            777 if ack == "FILLED" else 0,
            ack,
            "from the EA",
            retcode=10018 if ack == "REJECTED" else None,
        )
        row = queue.get_signal(db_url, signal["signal_id"])
        expected = EXPECTED_AFTER[ack][start]
        assert out["status"] == row["status"] == expected == contract.queue_status_after_ack(start, ack), (start, ack)
        if expected == "ACKED" and ack == "FILLED":
            assert row["ticket"] == 777
        if ack == "REJECTED" and expected == "REJECTED":
            assert "retcode 10018" in row["last_error"]
    counts = queue.status_counts(db_url)
    assert sum(counts.values()) == len(STARTS)
    assert counts[{"FILLED": "ACKED", "REJECTED": "REJECTED", "EXPIRED": "EXPIRED"}[ack]] == sum(
        1 for s in STARTS if EXPECTED_AFTER[ack][s] == EXPECTED_AFTER[ack]["PENDING"]
    )


def test_a_weaker_ack_after_a_fill_changes_nothing_and_the_stored_ack_keeps_the_fill(db_url):
    [signal] = [make_signal("EURUSD")]
    queue.enqueue_many(db_url, [signal])
    queue.record_ack(db_url, signal["signal_id"], 5, "FILLED", "filled")
    assert (
        queue.record_ack(db_url, signal["signal_id"], None, "REJECTED", "late copy", retcode=10018)["status"] == "ACKED"
    )
    with get_engine(db_url).connect() as conn:
        ack = conn.execute(select(signals_ack).where(signals_ack.c.signal_id == signal["signal_id"])).one()
    assert (ack.status, ack.ticket, ack.message) == ("FILLED", 5, "filled")


def test_a_bad_ack_gets_a_4xx_naming_the_field_and_changes_nothing(rig):
    [signal] = [make_signal("EURUSD")]
    queue.enqueue_many(rig.url, [signal])
    base = rig.api_server.base_url
    headers = {"X-API-Key": API_KEY}
    for body, field in [
        ({"signal_id": signal["signal_id"], "ticket": 1, "status": "DONE"}, "status"),
        ({"signal_id": signal["signal_id"], "ticket": -1, "status": "FILLED"}, "ticket"),
        ({"signal_id": signal["signal_id"], "ticket": 1, "status": "REJECTED", "retcode": "10018"}, "retcode"),
    ]:
        response = httpx.post(f"{base}/ea/ack", json=body, headers=headers)
        assert response.status_code == 422, response.text
        assert any(d["loc"] == field for d in response.json()["details"]), response.json()
    row = queue.get_signal(rig.url, signal["signal_id"])
    assert row["status"] == "PENDING" and row["ticket"] is None
    with get_engine(rig.url).connect() as conn:
        assert conn.execute(select(signals_ack)).all() == []


def test_a_bad_signal_gets_a_422_naming_the_field_and_no_order(rig):
    signal = make_signal("EURUSD")
    for meta, field in [
        ({**signal["meta"], "pip_size": -1}, "meta.pip_size"),
        ({"model": "rf_m1"}, "meta.model_version"),
    ]:
        response = httpx.post(rig.signals_url, json={**signal, "meta": meta}, headers={"X-API-Key": EA_KEY})
        assert response.status_code == 422 and field in response.json()["message"]
    assert rig.mt5.requests == [] and rig.bridge.store.execution(signal["signal_id"]) is None
    too_big = httpx.post(
        rig.signals_url,
        content=b"{" + b" " * contract.MAX_BODY_BYTES + b"}",
        headers={"X-API-Key": EA_KEY, "Content-Type": "application/json"},
    )
    assert too_big.status_code == 413


def test_transient_retcodes_are_the_terminals_not_now():
    from mt5_pipeline.bridge.orders import FILLED_RETCODES, RETCODE_TEXT

    assert {10031, 10024, 10028, 10012} <= contract.TRANSIENT_RETCODES
    assert not contract.TRANSIENT_RETCODES & FILLED_RETCODES
    assert contract.TRANSIENT_RETCODES <= set(RETCODE_TEXT)
    assert 10018 not in contract.TRANSIENT_RETCODES and 10016 not in contract.TRANSIENT_RETCODES
    assert math.isclose(pips.pip_from_instrument(3, 0.001), 0.01)


def test_the_core_reads_a_described_currency_pairs_digits_from_the_database(db_url, settings_for):
    settings = settings_for(db_url)
    assert pips.pip_size_for(settings, db_url, "USDHUF") == 0.0001  # not described yet: the name rule
    stored_symbols.record_instrument(db_url, "USDHUF", 3, 0.001)
    stored_symbols.record_instrument(db_url, "XAUUSD", 2, 0.01)
    assert pips.pip_size_for(settings, db_url, "USDHUF") == 0.01
    assert pips.pip_size_for(settings, db_url, "XAUUSD") == 0.01
    assert (
        pips.pip_size_for(settings_for(db_url, PIP_SIZES="XAUUSD=0.1"), db_url, "XAUUSD") == 0.1
    )  # PIP_SIZES still wins


def test_the_pushers_verdict_after_the_eas_own_refusal_agrees_and_is_not_a_lost_lease(db_url):
    # Push mode: the bridge's REJECTED ack can land while the pusher still holds the row.
    [signal] = [make_signal("EURUSD")]
    queue.enqueue_many(db_url, [signal])
    [claim] = queue.claim_batch(db_url, 10, lease_seconds=30)
    assert (
        queue.record_ack(db_url, signal["signal_id"], None, "REJECTED", "Market is closed", retcode=10018)["status"]
        == "REJECTED"
    )
    assert queue.mark_rejected(
        db_url, claim.id, claim.claim_token, "rejected by the terminal: retcode 10018: Market is closed"
    )
    row = queue.get_signal(db_url, signal["signal_id"])
    assert row["status"] == "REJECTED" and row["claim_token"] is None
    # A fill the EA reports stays a fill whatever the pusher concluded.
    [other] = [make_signal("GBPUSD")]
    queue.enqueue_many(db_url, [other])
    [claim] = queue.claim_batch(db_url, 10, lease_seconds=30)
    queue.record_ack(db_url, other["signal_id"], 9, "FILLED")
    assert not queue.mark_rejected(db_url, claim.id, claim.claim_token, "a late error")
    assert queue.get_signal(db_url, other["signal_id"])["status"] == "ACKED"
