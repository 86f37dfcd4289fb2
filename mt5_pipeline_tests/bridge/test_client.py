"""The bridge's API client over real HTTP: a scripted peer for every kind of answer, and
the real API for what it takes and refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mt5_pipeline.api.main import create_app
from mt5_pipeline.apps.servers import BackgroundServer, free_port
from mt5_pipeline.bridge.client import ApiClient, ApiRefused, ApiUnavailable
from mt5_pipeline_tests.api_support import bars
from mt5_pipeline_tests.bridge.parts import KEY


def test_ingest_sends_the_key_the_servers_zone_and_the_instrument(api, peer):
    candles = [{"time": 1736935200, "open": 2390.5, "high": 2391.0, "low": 2389.75, "close": 2390.25}]
    api.ingest("XAUUSD", "H1", candles, server_time_zone="UTC+2/+3@US", instrument={"digits": 2, "point": 0.01})
    [call] = peer.calls("/ingest")
    assert call.method == "POST" and call.headers["x-api-key"] == KEY
    assert call.body == {
        "symbol": "XAUUSD", "timeframe": "H1", "candles": candles, "server_time_zone": "UTC+2/+3@US",
        "partial": True, "digits": 2, "point": 0.01,
    }  # fmt: skip


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_a_busy_or_broken_api_is_unavailable_not_refused(api, peer, status):
    peer.answer("/ea/ack", (status, {"error": "busy"}))
    with pytest.raises(ApiUnavailable, match=f"POST /ea/ack: HTTP {status}"):
        api.ack({"signal_id": "x"})


def test_a_4xx_is_refused_with_the_status_and_the_first_three_problems(api, peer):
    details = [{"loc": f"trades.{i}.ticket", "message": "required"} for i in range(5)]
    peer.answer("/ea/trades", (422, {"error": "validation_error", "details": details}))
    with pytest.raises(ApiRefused) as err:
        api.report_trades([{"symbol": "USDJPY"}])
    assert err.value.status_code == 422
    text = str(err.value)
    assert text.startswith("POST /ea/trades: HTTP 422 validation_error")
    assert "trades.2.ticket: required" in text and "trades.3.ticket" not in text


def test_a_4xx_without_a_json_body_is_still_refused(api, peer):
    peer.answer("/ea/reconcile", (404, None))
    with pytest.raises(ApiRefused) as err:
        api.reconcile(4242, 5000001, [])
    assert err.value.status_code == 404
    [call] = peer.calls("/ea/reconcile")
    assert call.body == {"magic": 4242, "account": 5000001, "positions": []}


def test_nobody_listening_is_unavailable_naming_the_call():
    client = ApiClient(f"http://127.0.0.1:{free_port()}/", KEY, timeout=2)
    try:
        with pytest.raises(ApiUnavailable, match=r"^GET /ea/signals: Connect"):
            client.pull()
    finally:
        client.close()


def test_pull_asks_for_pending_signals_and_reads_only_a_list(api, peer):
    peer.answer("/ea/signals", (200, {"signals": [{"signal_id": "a"}]}), (200, {"signals": "none"}), (200, [1, 2]))
    assert api.pull(limit=7) == [{"signal_id": "a"}]
    assert api.pull() == [] and api.pull() == []
    first = peer.calls("/ea/signals")[0]
    assert first.method == "GET" and first.query == {"status": "PENDING", "limit": "7"}


@pytest.fixture
def real_api(sqlite_url, settings_for) -> Iterator[str]:
    app = create_app(settings_for(sqlite_url, api_keys=KEY))
    with BackgroundServer(app, port=free_port(), lifespan="off") as server:
        yield server.base_url
    app.state.api.close()


def test_the_real_api_takes_server_time_bars_and_refuses_a_wrong_key(real_api):
    # USDJPY H1 bars on a UTC+3 server clock: the times the terminal gives.
    utc_bars = bars(4, timeframe_seconds=3600, start_price=151.2, step=0.01)
    server_bars = [{**b, "time": b["time"] + 3 * 3600} for b in utc_bars]
    client = ApiClient(real_api, KEY)
    try:
        first = client.ingest(
            "USDJPY", "H1", server_bars, server_time_zone="UTC+3", instrument={"digits": 3, "point": 0.001}
        )
        again = client.ingest("USDJPY", "H1", server_bars, server_time_zone="UTC+3")
        bad = {**server_bars[-1], "high": server_bars[-1]["low"] - 0.5}
        partial = client.ingest("USDJPY", "H1", [bad], server_time_zone="UTC+3")
    finally:
        client.close()
    assert first["inserted"] == 4 and again["unchanged"] == 4
    assert partial["rejected"] == 1
    wrong = ApiClient(real_api, "not-the-key")
    try:
        with pytest.raises(ApiRefused) as err:
            wrong.ingest("USDJPY", "H1", server_bars, server_time_zone="UTC+3")
    finally:
        wrong.close()
    assert err.value.status_code == 401
