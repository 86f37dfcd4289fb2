"""The reference EA over real HTTP: a strict peer that dedupes, paper-trades and acks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mt5_pipeline.apps.ea_sim import validate_signal
from mt5_pipeline_tests.ea_server import ReferenceEA, ServerThread, make_signal, wait_for


@pytest.fixture
def http():
    with httpx.Client(timeout=5) as client:
        yield client


def post(http, ea, body, key=None, headers=None):
    h = {"X-API-Key": ea.api_key if key is None else key, "Content-Type": "application/json"}
    if isinstance(body, dict) and "signal_id" in body:
        h["Idempotency-Key"] = str(body["signal_id"])
    h.update(headers or {})
    return http.post(ea.url, content=json.dumps(body) if not isinstance(body, bytes) else body, headers=h)


def test_a_valid_signal_opens_a_position_with_sl_and_tp(reference_ea, http):
    buy = make_signal("EURUSD", price=1.1000)
    sell = make_signal("USDJPY", side="SELL", probability=0.3, price=150.00)
    r1, r2 = post(http, reference_ea, buy), post(http, reference_ea, sell)
    assert r1.status_code == 200 and r1.json()["success"] is True and isinstance(r1.json()["ticket"], int)
    assert r2.json()["ticket"] == r1.json()["ticket"] + 1
    positions = {
        p["symbol"]: p
        for p in http.get(f"{reference_ea.base_url}/positions", headers={"X-API-Key": reference_ea.api_key}).json()[
            "positions"
        ]
    }
    assert positions["EURUSD"]["sl"] == pytest.approx(1.0980) and positions["EURUSD"]["tp"] == pytest.approx(1.1040)
    assert positions["USDJPY"]["sl"] == pytest.approx(150.20) and positions["USDJPY"]["tp"] == pytest.approx(149.60)
    closed = http.post(
        f"{reference_ea.base_url}/prices",
        json={"symbol": "EURUSD", "price": 1.1041},
        headers={"X-API-Key": reference_ea.api_key},
    ).json()["closed"]
    assert [(c["status"], c["pips"]) for c in closed] == [("TP", 40.0)]


def test_a_repeated_signal_id_gets_the_same_ticket_and_no_second_position(reference_ea, http):
    signal = make_signal()
    first = post(http, reference_ea, signal).json()
    again = post(http, reference_ea, signal).json()
    assert again["ticket"] == first["ticket"] and again["duplicate"] is True
    assert len(reference_ea.ea.positions) == 1
    assert http.get(f"{reference_ea.base_url}/health").json() == {"status": "ok", "signals": 1, "open_positions": 1}


def test_the_key_is_checked(reference_ea, http):
    assert post(http, reference_ea, make_signal(), key="nope").status_code == 401
    assert http.post(reference_ea.url, json=make_signal()).status_code == 401
    assert http.get(f"{reference_ea.base_url}/positions").status_code == 401
    assert reference_ea.ea.positions == {}


def _with(**changes):
    body = make_signal()
    for key, value in changes.items():
        if value is KeyError:
            body.pop(key)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    "body, field",
    [
        (_with(signal_id=KeyError), "signal_id: required"),
        (_with(signal_id="not-a-uuid"), "signal_id"),
        (_with(side="HOLD"), "side"),
        (_with(confidence=0), "confidence"),
        (_with(confidence=1.5), "confidence"),
        (_with(confidence=True), "confidence"),
        (_with(confidence="0.7"), "confidence"),
        (_with(sl_pips=-5), "sl_pips"),
        (_with(tp_pips=0), "tp_pips"),
        (_with(price=0), "price"),
        (_with(timeframe="M2"), "timeframe"),
        (_with(timestamp="2025-10-25T10:30:00"), "timestamp"),  # no zone
        (_with(meta={"label": 1}), "meta"),
        (_with(expires_at=KeyError), "expires_at: required"),
        (_with(symbol=""), "symbol"),
    ],
)
def test_a_strict_ea_refuses_bad_bodies(reference_ea, http, body, field):
    r = post(http, reference_ea, body)
    assert r.status_code == 422 and r.json()["success"] is False
    assert field in r.json()["message"]
    assert reference_ea.ea.positions == {}


def test_other_refusals(reference_ea, http):
    assert post(http, reference_ea, b"{not json").status_code == 400
    assert post(http, reference_ea, make_signal(), headers={"Content-Type": "text/plain"}).status_code == 415
    assert post(http, reference_ea, make_signal(), headers={"Idempotency-Key": "something-else"}).status_code == 400
    expired = make_signal(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    r = post(http, reference_ea, expired)
    assert r.status_code == 200 and r.json()["success"] is False and "expired" in r.json()["message"]
    assert reference_ea.ea.positions == {}
    assert validate_signal(make_signal()) == []


def test_acks_are_posted_back_with_the_api_key(http, tmp_path):
    acks: list[tuple[str, dict]] = []

    async def ack(request: Request) -> JSONResponse:
        acks.append((request.headers.get("x-api-key"), await request.json()))
        return JSONResponse({"success": True})

    api = ServerThread(Starlette(routes=[Route("/ea/ack", ack, methods=["POST"])]))
    api.start()
    log_file = tmp_path / "ea.jsonl"
    ea = ReferenceEA(ack_url=f"{api.base_url}/ea/ack", ack_api_key="inbound-api-key", log_file=str(log_file))
    ea.start()
    try:
        signal = make_signal()
        ticket = post(http, ea, signal).json()["ticket"]
        assert wait_for(lambda: len(acks) == 1, timeout=10)
        assert acks[0] == (
            "inbound-api-key",
            {
                "signal_id": signal["signal_id"],
                "ticket": ticket,
                "status": "FILLED",
                "message": "paper position opened",
            },
        )
        [line] = log_file.read_text().splitlines()
        assert json.loads(line)["signal"] == signal and json.loads(line)["ticket"] == ticket
    finally:
        ea.stop()
        ea.ea.close()
        api.stop()


def test_a_gold_stop_is_never_placed_in_fx_pips(reference_ea, http):
    # Without the sender's meta.pip_size (or its own PIP_SIZES) the reference EA cannot
    # tell a pip on gold: it opens the paper position without a stop or target rather
    # than put them 0.002 away. With meta.pip_size it places them.
    unknown = make_signal("XAUUSD", price=2034.50)
    assert post(http, reference_ea, unknown).json()["success"] is True
    known = make_signal("XAUUSD", price=2034.50)
    known["meta"] = {**known["meta"], "pip_size": 0.1}
    assert post(http, reference_ea, known).json()["success"] is True
    first, second = (p for p in reference_ea.ea.positions.values() if p["symbol"] == "XAUUSD")
    assert first["sl"] is None and first["tp"] is None
    assert second["sl"] == pytest.approx(2032.50) and second["tp"] == pytest.approx(2038.50)
    closed = http.post(
        f"{reference_ea.base_url}/prices",
        json={"symbol": "XAUUSD", "price": 2040.0},
        headers={"X-API-Key": reference_ea.api_key},
    ).json()["closed"]
    assert [c["ticket"] for c in closed] == [second["ticket"]]
