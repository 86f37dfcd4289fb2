"""The /ea routes and /health through the real app, the real queue and the reference EA."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from mt5_pipeline.signals import queue
from mt5_pipeline_tests.api_support import KEYS, api_client, make_signal
from mt5_pipeline_tests.ea_server import reference_ea  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio

SEED_SIGNAL_KEYS = {"signal_id", "symbol", "timeframe", "side", "confidence", "sl_pips", "tp_pips", "timestamp"}


@pytest.fixture
def ea_settings(db_url, settings_for, reference_ea):  # noqa: F811
    return settings_for(db_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.url, EA_API_KEY=reference_ea.api_key)


# ---- test-connection -----------------------------------------------------------------


async def test_test_connection_answers_the_seed_shape(ea_settings, reference_ea):  # noqa: F811
    async with api_client(ea_settings) as client:
        response = await client.get("/ea/test-connection")
    assert response.status_code == 200
    body = response.json()
    assert body["connected"] is True
    assert body["ea_url"] == reference_ea.url
    assert body["ea_server"] == f"127.0.0.1:{reference_ea.port}"
    assert "Connected" in body["message"]


async def test_test_connection_reports_an_ea_that_is_down(sqlite_url, settings_for):
    settings = settings_for(sqlite_url, API_KEYS=KEYS, EA_SERVER_URL="http://127.0.0.1:9/signals", EA_REQUEST_TIMEOUT=2)
    async with api_client(settings) as client:
        response = await client.get("/ea/test-connection")
    assert response.status_code == 200
    assert response.json()["connected"] is False


# ---- queue-status, push, ack, pull -------------------------------------------------------


async def test_queue_status_counts_the_last_24_hours(ea_settings, db_url):
    assert queue.enqueue(db_url, make_signal(minutes_ago=2))
    assert queue.enqueue(db_url, make_signal(minutes_ago=1))
    # A signal created two days ago is outside the period.
    assert queue.enqueue(db_url, make_signal("GBPUSD"), now=datetime.now(timezone.utc) - timedelta(days=2))
    async with api_client(ea_settings) as client:
        response = await client.get("/ea/queue-status")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["period"] == "last_24_hours"
    assert set(body["queue_status"]) == {"PENDING"}
    assert body["queue_status"]["PENDING"]["count"] == 2
    assert body["queue_status"]["PENDING"]["latest"].endswith("Z")


async def test_push_then_ack(ea_settings, db_url, reference_ea):  # noqa: F811
    first, second = make_signal(minutes_ago=2), make_signal(minutes_ago=1)
    for s in (first, second):
        assert queue.enqueue(db_url, s)
    async with api_client(ea_settings) as client:
        pushed = await client.post("/ea/push-signals")
        assert pushed.status_code == 200, pushed.text
        assert pushed.json()["sent_count"] == 2
        assert pushed.json()["message"] == "Successfully pushed 2 signals to EA"
        assert pushed.json()["success"] is True
        assert reference_ea.signal_ids() == [first["signal_id"], second["signal_id"]]
        headers, payload = reference_ea.received[0]
        assert headers["x-api-key"] == reference_ea.api_key
        assert headers["idempotency-key"] == first["signal_id"]
        assert queue.get_signal(db_url, first["signal_id"])["status"] == "SENT"

        again = await client.post("/ea/push-signals")
        assert again.json()["sent_count"] == 0  # nothing sent twice

        acked = await client.post(
            "/ea/ack", json={"signal_id": first["signal_id"], "ticket": 12345678, "status": "FILLED", "message": ""}
        )
        assert acked.status_code == 200, acked.text
        assert acked.json()["success"] is True
        row = queue.get_signal(db_url, first["signal_id"])
        assert row["status"] == "ACKED" and row["ticket"] == 12345678

        repeated = await client.post(
            "/ea/ack", json={"signal_id": first["signal_id"], "ticket": 12345678, "status": "FILLED"}
        )
        assert repeated.status_code == 200 and repeated.json()["repeated"] is True

        unknown = await client.post("/ea/ack", json={"signal_id": str(uuid.uuid4()), "ticket": 1, "status": "FILLED"})
        assert unknown.status_code == 404
        assert unknown.json()["success"] is False


async def test_push_with_a_key_the_ea_refuses_is_502_and_keeps_the_signal(
    db_url,
    settings_for,
    reference_ea,  # noqa: F811
):
    settings = settings_for(db_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.url, EA_API_KEY="not-the-ea-key")
    signal = make_signal()
    assert queue.enqueue(db_url, signal)
    async with api_client(settings) as client:
        response = await client.post("/ea/push-signals")
    assert response.status_code == 502
    assert response.json()["reason"] == "ea_auth"
    assert "not-the-ea-key" not in response.text
    assert queue.get_signal(db_url, signal["signal_id"])["status"] == "PENDING"


async def test_push_to_an_ea_that_is_down_keeps_signals_for_retry(db_url, settings_for):
    settings = settings_for(db_url, API_KEYS=KEYS, EA_SERVER_URL="http://127.0.0.1:9/signals", EA_REQUEST_TIMEOUT=2)
    signal = make_signal()
    assert queue.enqueue(db_url, signal)
    async with api_client(settings) as client:
        response = await client.post("/ea/push-signals")
    assert response.status_code == 200
    assert response.json()["sent_count"] == 0 and response.json()["retried"] == 1
    assert queue.get_signal(db_url, signal["signal_id"])["status"] == "PENDING"


async def test_pull_mode_lists_deliverable_signals_and_changes_nothing(db_url, settings_for):
    settings = settings_for(db_url, API_KEYS=KEYS, EA_PUSH_ENABLED="false")
    older, newer = make_signal(minutes_ago=3), make_signal(minutes_ago=2)
    expired = make_signal("GBPUSD", minutes_ago=5, expires_in=-1)
    for s in (older, newer, expired):
        assert queue.enqueue(db_url, s)
    async with api_client(settings) as client:
        first = await client.get("/ea/signals?status=PENDING&limit=100")
        second = await client.get("/ea/signals")
        limited = await client.get("/ea/signals?limit=1")
        assert first.status_code == 200
        ids = [s["signal_id"] for s in first.json()["signals"]]
        assert ids == [older["signal_id"], newer["signal_id"]]
        assert second.json() == first.json()
        assert [s["signal_id"] for s in limited.json()["signals"]] == [older["signal_id"]]
        assert queue.get_signal(db_url, older["signal_id"])["status"] == "PENDING"
        assert queue.get_signal(db_url, older["signal_id"])["attempts"] == 0
        payload = first.json()["signals"][0]
        assert SEED_SIGNAL_KEYS | {"price", "meta", "expires_at"} <= set(payload)
        # Acked: it leaves the list.
        assert (
            await client.post("/ea/ack", json={"signal_id": older["signal_id"], "ticket": 7, "status": "FILLED"})
        ).status_code == 200
        after = await client.get("/ea/signals")
        health = await client.get("/health")
    assert [s["signal_id"] for s in after.json()["signals"]] == [newer["signal_id"]]
    assert health.json()["ea"] == "disabled" and health.json()["delivery"] == "pull"


# ---- generate-signal with a real model -------------------------------------------------------


def _train(settings) -> None:
    from mt5_pipeline.learning.features import update_features
    from mt5_pipeline.learning.training import train_model
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.market.sample_data import generate_candles, minutes_ago

    frame = generate_candles(3000, end=minutes_ago(1), with_weekends=False, seed=7)
    ingest_candles(settings.database_url, "EURUSD", "M1", frame)
    update_features(settings.database_url, "EURUSD", "M1")
    train_model(settings, ["EURUSD"], force=True)  # the tests need a model, not a good one


async def test_generate_signal_paths(db_url, settings_for, reference_ea):  # noqa: F811
    fast = {
        "API_KEYS": KEYS,
        "EA_SERVER_URL": reference_ea.url,
        "EA_API_KEY": reference_ea.api_key,
        "RF_N_ESTIMATORS": 10,
        "RF_MIN_SAMPLES_LEAF": 20,
        "SIGNAL_TTL_SECONDS": 600,  # the test must not depend on where in the minute it runs
    }
    settings = settings_for(db_url, **fast)
    async with api_client(settings) as client:
        no_model = await client.post(
            "/ea/generate-signal", json={"symbol": "EURUSD", "timeframe": "M1", "force": False}
        )
        health_before = (await client.get("/health")).json()
    assert no_model.status_code == 503
    assert no_model.json()["reason"] == "no_model"
    assert "train" in no_model.json()["error"]
    assert health_before["model"] == "missing" and health_before["status"] == "degraded"

    _train(settings)

    async with api_client(settings) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok", health.json()
        assert health.json()["model"] == "loaded" and health.json()["ea"] == "reachable"
        assert health.json()["newest_bars"][0]["stale"] is False

        unknown = await client.post("/ea/generate-signal", json={"symbol": "GBPUSD"})
        assert unknown.status_code == 404
        assert unknown.json()["success"] is False

        queued = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "timeframe": "M1", "force": True})
        assert queued.status_code == 200, queued.text
        body = queued.json()
        assert body["success"] is True and body["message"] == "Signal generated and added to queue"
        assert SEED_SIGNAL_KEYS <= set(body["signal"])
        assert body["signal"]["sl_pips"] == 20 and body["signal"]["tp_pips"] == 40
        assert body["signal"]["timestamp"].endswith("Z")
        assert queue.get_signal(db_url, body["signal"]["signal_id"])["status"] == "PENDING"

        duplicate = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "force": True})
        assert duplicate.status_code == 409
        assert duplicate.json()["reason"] == "duplicate"
        assert duplicate.json()["signal"]["signal_id"] == body["signal"]["signal_id"]

    neutral_settings = settings_for(db_url, **fast, SIGNAL_BUY_THRESHOLD=0.9999, SIGNAL_SELL_THRESHOLD=0.0001)
    async with api_client(neutral_settings) as client:
        neutral = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "timeframe": "M1", "force": False})
    assert neutral.status_code == 200
    assert neutral.json()["success"] is False
    assert 0 <= neutral.json()["confidence"] <= 1
    assert neutral.json()["message"]

    stale_bar_settings = settings_for(db_url, **fast, SIGNAL_MAX_BAR_AGE_SECONDS=1)
    async with api_client(stale_bar_settings) as client:
        stale_bar = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "force": True})
    assert stale_bar.status_code == 409 and stale_bar.json()["reason"] == "stale_bar"

    stale_model_settings = settings_for(db_url, **fast, MODEL_MAX_AGE_HOURS=0.000001)
    async with api_client(stale_model_settings) as client:
        stale_model = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "force": True})
        health = await client.get("/health")
    assert stale_model.status_code == 503 and stale_model.json()["reason"] == "stale_model"
    assert health.json()["model"] == "stale" and health.json()["status"] == "degraded"
    assert queue.status_counts(db_url)["PENDING"] == 1  # none of those queued anything


async def test_a_model_file_that_cannot_be_used_is_503(ea_settings):
    from mt5_pipeline.learning.model_store import clear_model_cache, current_model_path

    path = current_model_path(ea_settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a pickled forest")
    clear_model_cache()
    try:
        async with api_client(ea_settings) as client:
            response = await client.post("/ea/generate-signal", json={"symbol": "EURUSD"})
            health = await client.get("/health")
    finally:
        clear_model_cache()
    assert response.status_code == 503
    assert response.json()["reason"] == "model_mismatch"
    assert "retrain" in response.json()["error"].lower()
    assert health.json()["model"] == "missing" and "model_error" in health.json()
    assert health.json()["status"] == "degraded"


async def test_generate_signal_ignores_the_forming_bar_and_refuses_a_timeframe_without_model(db_url, settings_for):
    """The manual path brings features up to the newest CLOSED candle first: the forming
    bar just ingested is stored, but the signal is for the bar before it."""
    from mt5_pipeline.market.sample_data import generate_candles, minutes_ago, to_ingest_payload

    # A wide TTL: the test must not depend on where in the minute it runs.
    settings = settings_for(
        db_url,
        API_KEYS=KEYS,
        RF_N_ESTIMATORS=10,
        RF_MIN_SAMPLES_LEAF=20,
        SIGNAL_TTL_SECONDS=600,
        SIGNAL_MAX_BAR_AGE_SECONDS=900,
    )
    _train(settings)  # closed bars up to the one that opened a minute ago
    forming = generate_candles(1, end=minutes_ago(0), start_price=1.1, seed=11, with_weekends=False)
    async with api_client(settings) as client:
        ingested = await client.post(
            "/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": to_ingest_payload(forming)}
        )
        assert ingested.status_code == 200 and ingested.json()["inserted"] == 1
        h1 = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "timeframe": "H1", "force": True})
        reply = await client.post("/ea/generate-signal", json={"symbol": "EURUSD", "force": True})
    assert h1.status_code == 422, h1.text
    assert h1.json()["reason"] == "no_model_for_timeframe" and h1.json()["timeframes_with_model"] == ["M1"]
    assert h1.json()["details"][0]["loc"] == "timeframe" and "H1" in h1.json()["error"]
    assert reply.status_code == 200, reply.text
    forming_open = forming["time"].iloc[0].to_pydatetime()
    assert reply.json()["signal"]["timestamp"] != forming_open.strftime("%Y-%m-%dT%H:%M:%SZ")
    signal_bar = datetime.fromisoformat(reply.json()["signal"]["timestamp"].replace("Z", "+00:00"))
    assert signal_bar < forming_open
    assert [s.bar for s in queue.pending_for_pull(db_url)] == [signal_bar]


# ---- configuration errors ----------------------------------------------------------------


async def test_a_wrong_ea_path_is_not_connected_and_stops_delivery_loudly(
    pg_url,
    settings_for,
    reference_ea,  # noqa: F811
):
    from mt5_pipeline_tests.api.test_metrics import one, parse

    wrong = settings_for(
        pg_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.base_url + "/signal", EA_API_KEY=reference_ea.api_key
    )
    assert queue.enqueue(pg_url, make_signal(minutes_ago=1))
    async with api_client(wrong) as client:
        tested = (await client.get("/ea/test-connection")).json()
        pushed = await client.post("/ea/push-signals")
        health = await client.get("/health")
        metrics = parse((await client.get("/metrics")).text)
    assert (tested["connected"], tested["status_code"]) == (False, 404) and "EA_SERVER_URL" in tested["message"]
    assert pushed.status_code == 502
    assert (pushed.json()["reason"], pushed.json()["ea_status_code"]) == ("ea_config", 404)
    body = health.json()
    assert health.status_code == 200 and body["status"] == "degraded"
    assert (body["ea"], body["ea_delivery"], body["ea_delivery_status_code"]) == ("unreachable", "config_error", 404)
    assert "(404)" in body["ea_delivery_error"] and "EA_SERVER_URL" in body["ea_delivery_error"]
    assert one(metrics, "ea_config_error", status_code="404") == 1
    assert (
        one(metrics, "ea_delivery_state", state="config_error") == 1
        and one(metrics, "ea_delivery_state", state="ok") == 0
    )
    assert queue.status_counts(pg_url)["PENDING"] == 1

    right = settings_for(pg_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.url, EA_API_KEY=reference_ea.api_key)
    async with api_client(right) as client:  # the fixed URL starts from a clean state
        health = (await client.get("/health")).json()
        assert (health["ea"], health["ea_delivery"]) == ("reachable", "ok")
        assert (await client.post("/ea/push-signals")).json()["sent_count"] == 1
