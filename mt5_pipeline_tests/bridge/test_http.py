"""The bridge's HTTP side served on a loopback port: the seed's POST /signals contract in
front of a real executor on the stand-in terminal, /health, and /metrics for Prometheus."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mt5_pipeline.apps.servers import BackgroundServer
from mt5_pipeline.bridge.executor import Executor
from mt5_pipeline.bridge.http import bridge_metrics, create_bridge_app
from mt5_pipeline.bridge.orders import OrderSettings
from mt5_pipeline.execution.contract import MAX_BODY_BYTES
from mt5_pipeline_tests.bridge.parts import KEY, MAGIC, signal_body

HEALTH = {"status": "ok", "terminal": "connected", "trade_allowed": True, "api": "ok", "acks_pending": 2}


@pytest.fixture
def executor(terminal, store, clock) -> Executor:
    return Executor(terminal, store, OrderSettings(lots=0.1, magic=MAGIC, deviation=10), clock=clock)


def _serve(app) -> Iterator[httpx.Client]:
    with BackgroundServer(app, lifespan="off") as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def health() -> dict:
    return {"answer": (200, dict(HEALTH))}


@pytest.fixture
def client(executor, health) -> Iterator[httpx.Client]:
    yield from _serve(create_bridge_app(executor, KEY, lambda: health["answer"]))


def _post(client: httpx.Client, body, *, key: str = KEY, **headers: str) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(
        "/signals", content=content, headers={"X-API-Key": key, "Content-Type": "application/json", **headers}
    )


def test_push_mode_will_not_start_without_a_key(executor):
    with pytest.raises(ValueError, match="EA_API_KEY"):
        create_bridge_app(executor, "", lambda: (200, {}))
    assert create_bridge_app(executor, "", lambda: (200, {}), push=False) is not None


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"key": "wrong"}, 401, "X-API-Key"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"body": "{not json"}, 400, "not valid JSON"),
        ({"body": "x" * (MAX_BODY_BYTES + 1)}, 413, "larger than"),
        ({"Idempotency-Key": "another-id"}, 400, "Idempotency-Key"),
    ],
)
def test_a_bad_request_is_refused_before_the_terminal_sees_it(client, mt5, change, status, words):
    change = dict(change)
    body = change.pop("body", signal_body("XAUUSD"))
    response = _post(client, body, key=change.pop("key", KEY), **change)
    assert response.status_code == status and words in response.json()["message"]
    assert response.json()["success"] is False and mt5.requests == []


def test_the_apis_probe_is_answered_without_trading(client, mt5):
    response = _post(client, {"probe": True})
    assert response.status_code == 200 and response.json() == {
        "success": True,
        "probe": True,
        "message": "signals route ready",
    }
    assert mt5.requests == []


def test_a_signal_is_traded_once_and_the_repeat_gets_the_same_ticket(client, mt5):
    body = signal_body("USDJPY", "SELL")
    first = _post(client, body, **{"Idempotency-Key": body["signal_id"]})
    again = _post(client, body)
    assert first.status_code == 200 and first.json()["ticket"] in mt5.positions
    assert again.json() == {**first.json(), "duplicate": True} and len(mt5.requests) == 1


def test_not_placed_yet_is_503_so_the_pusher_tries_again(client, mt5):
    mt5.script("US30", [10031])
    response = _post(client, signal_body("US30"))
    assert response.status_code == 503 and response.json()["transient"] is True


def test_health_and_metrics_need_no_key_and_carry_the_status(client, health):
    assert client.get("/health").json() == HEALTH
    health["answer"] = (503, {**HEALTH, "status": "degraded", "terminal": "disconnected"})
    assert client.get("/health").status_code == 503
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "mt5_bridge_terminal_connected 0.0" in metrics.text


def test_pull_mode_serves_no_signals_route(executor):
    for client in _serve(create_bridge_app(executor, "", lambda: (200, HEALTH), push=False)):
        assert _post(client, signal_body("XAUUSD"), key="").status_code in (404, 405)
        assert client.get("/health").status_code == 200


def _samples(health: dict) -> dict[tuple[str, tuple], float]:
    text = bridge_metrics(health).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_the_health_as_gauges():
    samples = _samples({
        **HEALTH, "signals": {"FILLED": 5, "REJECTED": 1}, "positions": {"open": 3, "time_exits": 2},
        "trade_reports": {"pending": 4},
        "reconciliation": {"state": "differences", "unknown": [11, 12], "missing": [13]},
    })  # fmt: skip
    assert samples[("mt5_bridge_terminal_connected", ())] == 1
    assert samples[("mt5_bridge_acks_pending", ())] == 2
    assert samples[("mt5_bridge_signals", (("outcome", "FILLED"),))] == 5
    assert samples[("mt5_bridge_signals", (("outcome", "REJECTED"),))] == 1
    assert samples[("mt5_bridge_open_positions", ())] == 3 and samples[("mt5_bridge_time_exits", ())] == 2
    assert samples[("mt5_bridge_trade_reports_pending", ())] == 4
    assert samples[("mt5_bridge_reconciliation_differences", (("kind", "unknown"),))] == 2
    assert samples[("mt5_bridge_reconciliation_differences", (("kind", "missing"),))] == 1
    assert samples[("mt5_bridge_reconciliation_ok", ())] == 0


def test_metrics_of_a_bridge_that_cannot_count_its_positions_leave_that_gauge_out():
    samples = _samples(
        {"terminal": "disconnected", "positions": {"open": None}, "reconciliation": {"state": "in_sync"}}
    )
    assert ("mt5_bridge_open_positions", ()) not in samples
    assert samples[("mt5_bridge_terminal_connected", ())] == 0 and samples[("mt5_bridge_api_reachable", ())] == 0
    assert samples[("mt5_bridge_reconciliation_ok", ())] == 1
