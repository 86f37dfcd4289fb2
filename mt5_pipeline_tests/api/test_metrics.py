"""/metrics: parsed back with prometheus_client's parser, true across processes."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mt5_pipeline.signals import queue
from mt5_pipeline_tests.api_support import KEYS, api_client, bars, cli, make_signal, subprocess_env
from mt5_pipeline_tests.ea_server import reference_ea  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}"""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(samples: dict, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def scrape(settings) -> dict:
    async with api_client(settings) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_seed_metrics_present_and_parseable(db_url, settings_for):
    samples = await scrape(settings_for(db_url, API_KEYS=KEYS, EA_SERVER_PORT=9))
    for name in (
        "ea_signals_generated_total",
        "ea_signals_sent_total",
        "ea_signals_failed_total",
        "ea_connection_test_success",
    ):
        assert name in samples, name
    assert one(samples, "mt5_database_up") == 1
    assert one(samples, "ea_signals_generated_total") == 0
    for status in ("PENDING", "SENT", "ACKED", "FAILED", "EXPIRED", "REJECTED"):
        assert one(samples, "ea_signals_queue", status=status) == 0


async def test_queue_figures_come_from_the_database(db_url, settings_for):
    settings = settings_for(db_url, API_KEYS=KEYS)
    first, second, third = make_signal(minutes_ago=3), make_signal(minutes_ago=2), make_signal("GBPUSD", minutes_ago=2)
    for s in (first, second, third):
        assert queue.enqueue(db_url, s)
    claimed = queue.claim_batch(db_url, 10, lease_seconds=30)
    by_id = {c.signal_id: c for c in claimed}
    assert queue.mark_sent(db_url, by_id[first["signal_id"]].id, by_id[first["signal_id"]].claim_token, 111)
    assert queue.mark_rejected(
        db_url, by_id[third["signal_id"]].id, by_id[third["signal_id"]].claim_token, "market closed"
    )
    samples = await scrape(settings)
    assert one(samples, "ea_signals_generated_total") == 3
    assert one(samples, "ea_signals_sent_total") == 1
    assert one(samples, "ea_signals_failed_total") == 1
    assert one(samples, "ea_signals_queue", status="SENT") == 1
    assert one(samples, "ea_signals_queue", status="REJECTED") == 1


@pytest.mark.slow
async def test_signal_sent_by_the_worker_process_shows_in_the_api_metrics(
    db_url,
    settings_for,
    reference_ea,  # noqa: F811
    tmp_path,
):
    settings = settings_for(db_url, API_KEYS=KEYS)
    before = await scrape(settings)
    assert one(before, "ea_signals_sent_total") == 0
    assert queue.enqueue(db_url, make_signal())
    # The pusher in its own process, as in production (`mt5-pipeline push --once`).
    env = subprocess_env(
        DATABASE_URL=db_url,
        EA_SERVER_URL=reference_ea.url,
        EA_API_KEY=reference_ea.api_key,
        MODEL_DIR=str(tmp_path / "models"),
    )
    done = subprocess.run(
        [*cli(), "push", "--once"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(reference_ea.received) == 1
    after = await scrape(settings)
    assert one(after, "ea_signals_sent_total") == 1
    assert one(after, "ea_signals_generated_total") == 1
    assert one(after, "ea_signals_queue", status="PENDING") == 0


async def test_ingest_metrics_and_bar_age(db_url, settings_for):
    settings = settings_for(db_url, API_KEYS=KEYS)
    async with api_client(settings) as client:
        first = await client.post("/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": bars(30)})
        again = await client.post("/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": bars(30)})
        assert first.status_code == again.status_code == 200, first.text
        samples = parse((await client.get("/metrics")).text)
    inserted = one(samples, "mt5_candles_ingested_total", result="inserted")
    unchanged = one(samples, "mt5_candles_ingested_total", result="unchanged")
    assert inserted + unchanged == 60 and inserted >= 30
    assert one(samples, "mt5_ingest_batch_size_count") == 2
    assert one(samples, "mt5_ingest_batch_size_sum") == 60
    assert one(samples, "mt5_ingest_duration_seconds_count") == 2
    age = one(samples, "mt5_newest_bar_age_seconds", symbol="EURUSD", timeframe="M1")
    assert 60 <= age < 180  # the newest closed bar opened one to two minutes ago
    assert one(samples, "mt5_candles_stored", symbol="EURUSD", timeframe="M1") >= 30
    assert one(samples, "mt5_api_requests_total", method="POST", route="/ingest", status="200") == 2


async def test_connection_test_gauge(sqlite_url, settings_for, reference_ea):  # noqa: F811
    up = settings_for(sqlite_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.url, EA_API_KEY=reference_ea.api_key)
    down = settings_for(sqlite_url, API_KEYS=KEYS, EA_SERVER_URL="http://127.0.0.1:9/signals", EA_REQUEST_TIMEOUT=2)
    async with api_client(up) as client:
        assert (await client.get("/ea/test-connection")).json()["connected"] is True
        assert one(parse((await client.get("/metrics")).text), "ea_connection_test_success") == 1
    async with api_client(down) as client:
        assert (await client.get("/ea/test-connection")).json()["connected"] is False
        assert one(parse((await client.get("/metrics")).text), "ea_connection_test_success") == 0


async def test_metrics_answer_while_the_database_is_down(settings_for):
    # A PostgreSQL URL on a closed port: connection refused at once.
    settings = settings_for("postgresql://postgres@127.0.0.1:9/nowhere", API_KEYS=KEYS)
    samples = await scrape(settings)
    assert one(samples, "mt5_database_up") == 0
    assert "ea_signals_generated_total" not in samples  # no figure rather than a false zero


async def test_a_failed_retrain_shows_in_health_and_is_counted(db_url, settings_for):
    from mt5_pipeline.learning.training import InsufficientDataError, train_model

    settings = settings_for(db_url, API_KEYS=KEYS, EA_PUSH_ENABLED="false")
    samples = await scrape(settings)
    assert one(samples, "mt5_model_retrains_total", model="rf_m1", outcome="failed") == 0
    with pytest.raises(InsufficientDataError):
        train_model(settings)  # no data: the retrain fails (in this process, as in a Dagster run)
    samples = await scrape(settings)
    assert one(samples, "mt5_model_retrains_total", model="rf_m1", outcome="failed") == 1
    assert one(samples, "mt5_model_last_retrain_failed", model="rf_m1") == 1
    async with api_client(settings, auth=False) as client:
        health = (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["retrain_failed"] == ["M1"]
    assert health["last_retrain"]["outcome"] == "failed" and "no usable labelled" in health["last_retrain"]["reason"]
    assert health["models"]["M1"]["champion_version"] is None and health["champion_age_seconds"] is None


async def test_health_reports_the_champions_age_and_the_last_retrain(sqlite_url, settings_for):
    from mt5_pipeline.learning.features import update_features
    from mt5_pipeline.learning.training import train_model
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.market.sample_data import generate_candles, minutes_ago

    settings = settings_for(
        sqlite_url, API_KEYS=KEYS, EA_PUSH_ENABLED="false", RF_N_ESTIMATORS=5, RF_MIN_SAMPLES_LEAF=20
    )
    ingest_candles(sqlite_url, "EURUSD", "M1", generate_candles(3000, end=minutes_ago(1), with_weekends=False, seed=7))
    update_features(sqlite_url, "EURUSD", "M1")
    champion = train_model(settings, force=True)
    rejected = train_model(settings_for(sqlite_url, RF_N_ESTIMATORS=5, RF_MIN_SAMPLES_LEAF=1_000_000))  # no skill
    assert rejected.decision.decision == "rejected"
    async with api_client(settings, auth=False) as client:
        health = (await client.get("/health")).json()
    assert health["status"] == "ok" and "retrain_failed" not in health  # a rejection is the rule at work, not a fault
    assert health["models"]["M1"]["champion_version"] == champion.version == health["model_version"]
    assert 0 <= health["champion_age_seconds"] < 600
    assert health["last_retrain"]["outcome"] == "rejected" and health["last_retrain"]["version"] == rejected.version
    assert "does not beat the baseline" in health["last_retrain"]["reason"]
    samples = await scrape(settings)
    assert one(samples, "mt5_model_retrains_total", model="rf_m1", outcome="forced") == 1
    assert one(samples, "mt5_model_retrains_total", model="rf_m1", outcome="rejected") == 1
    assert one(samples, "mt5_model_last_retrain_failed", model="rf_m1") == 0
