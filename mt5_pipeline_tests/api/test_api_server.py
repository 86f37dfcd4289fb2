"""The API as operators run it: a real `mt5-pipeline serve` process on loopback, reached
with the seed's own curl commands (only the port differs)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from mt5_pipeline.settings import DEV_API_KEY
from mt5_pipeline.storage import migrate
from mt5_pipeline_tests.api_support import bars, cli, free_port, make_signal, serve_process, subprocess_env
from mt5_pipeline_tests.ea_server import reference_ea  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

# The seed's commands, verbatim but for the port (18001 is taken on a shared test box).
SEED_CURLS = {
    "test-connection": """curl -X GET "http://localhost:18001/ea/test-connection" \\
  -H "X-API-Key: mt5_trading_secure_key_2025_prod\"""",
    "queue-status": """curl -X GET "http://localhost:18001/ea/queue-status" \\
  -H "X-API-Key: mt5_trading_secure_key_2025_prod\"""",
    "push-signals": """curl -X POST "http://localhost:18001/ea/push-signals" \\
  -H "X-API-Key: mt5_trading_secure_key_2025_prod\"""",
    "generate-signal": """curl -X POST "http://localhost:18001/ea/generate-signal" \\
  -H "Content-Type: application/json" \\
  -H "X-API-Key: mt5_trading_secure_key_2025_prod" \\
  -d '{
    "symbol": "EURUSD",
    "timeframe": "M1",
    "force": false
  }'""",
}


def run_curl(command: str, port: int) -> tuple[int, dict]:
    # -s quiet, -w the status on the last line: the seed's command otherwise untouched.
    script = command.replace("localhost:18001", f"localhost:{port}") + " -s -w '\\n%{http_code}'"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


@pytest.fixture
def served(tmp_path, reference_ea):  # noqa: F811
    db = tmp_path / "mt5.db"
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    port = free_port()
    env = subprocess_env(
        DATABASE_URL=url,
        API_PORT=str(port),
        MODEL_DIR=str(tmp_path / "models"),
        EA_SERVER_URL=reference_ea.url,
        EA_API_KEY=reference_ea.api_key,
        API_MAX_BODY_BYTES="200000",
        LOG_LEVEL="INFO",
    )
    with serve_process(env, port, tmp_path) as (proc, base):
        yield proc, base, port, url, tmp_path


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_seed_curl_commands_work_against_serve(served, reference_ea):  # noqa: F811
    proc, base, port, url, _ = served
    status, body = run_curl(SEED_CURLS["test-connection"], port)
    assert status == 200
    assert body["connected"] is True
    assert body["ea_url"] == reference_ea.url
    assert set(body) >= {"connected", "ea_server", "ea_url", "message"}

    status, body = run_curl(SEED_CURLS["queue-status"], port)
    assert status == 200
    assert body == {"success": True, "queue_status": {}, "period": "last_24_hours"}

    status, body = run_curl(SEED_CURLS["push-signals"], port)
    assert status == 200
    assert body["success"] is True and body["sent_count"] == 0
    assert body["message"] == "Successfully pushed 0 signals to EA"

    # No model trained in this database: the answer says so, and how to train one.
    status, body = run_curl(SEED_CURLS["generate-signal"], port)
    assert status in (503, 404)
    assert body["success"] is False and body["error"]


def test_serve_ingests_and_reports_health(served):
    proc, base, port, url, _ = served
    headers = {"X-API-Key": DEV_API_KEY}
    response = httpx.post(
        base + "/ingest", json={"symbol": "EURUSD", "timeframe": "M1", "candles": bars(50)}, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "received": 50, "inserted": 50, "updated": 0, "unchanged": 0}
    health = httpx.get(base + "/health", timeout=30).json()
    assert health["database"] == "ok"
    assert health["ea"] == "reachable"
    assert [b["symbol"] for b in health["newest_bars"]] == ["EURUSD"]
    # A key never shows up in what the server logs.
    httpx.get(base + "/ea/queue-status", headers={"X-API-Key": "wrong-key-abcdef"}, timeout=10)
    proc.terminate()
    proc.wait(timeout=15)
    log = next(served[4].glob("serve-*.log")).read_text()
    assert "wrong-key-abcdef" not in log and DEV_API_KEY not in log
    assert "refused GET '/ea/queue-status' from 127.0.0.1" in log


def test_serve_refuses_an_oversized_body_before_it_arrives(served):
    proc, base, port, url, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /ingest HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + DEV_API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
            + b"[" * 1000
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    # Answered after 1 KB of a declared 100 MB, without waiting for the rest.
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 10


def test_serve_refuses_to_start_in_production_with_the_example_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'mt5.db'}"
    env = subprocess_env(DATABASE_URL=url, MT5_ENV="production", API_KEYS=DEV_API_KEY, API_PORT=str(free_port()))
    done = subprocess.run([*cli(), "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "API_KEYS" in done.stderr and "example key" in done.stderr
    env.pop("API_KEYS")
    done = subprocess.run([*cli(), "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "API_KEYS: must be set" in done.stderr


def test_push_and_ack_round_trip_through_serve(tmp_path):
    """serve pushes to the reference EA, which acks back to serve's /ea/ack: the signal ends ACKED."""
    from mt5_pipeline.signals import queue
    from mt5_pipeline_tests.ea_server import ReferenceEA

    url = f"sqlite:///{tmp_path / 'mt5.db'}"
    migrate.upgrade(url)
    port = free_port()
    ea = ReferenceEA(ack_url=f"http://127.0.0.1:{port}/ea/ack", ack_api_key="round-trip-key")
    ea.start()
    try:
        env = subprocess_env(
            DATABASE_URL=url,
            API_KEYS="round-trip-key",
            API_PORT=str(port),
            MODEL_DIR=str(tmp_path / "models"),
            EA_SERVER_URL=ea.url,
            EA_API_KEY=ea.api_key,
        )
        signal = make_signal()
        assert queue.enqueue(url, signal)
        with serve_process(env, port, tmp_path) as (proc, base):
            headers = {"X-API-Key": "round-trip-key"}
            pushed = httpx.post(base + "/ea/push-signals", headers=headers, timeout=30)
            assert pushed.status_code == 200 and pushed.json()["sent_count"] == 1
            deadline = time.monotonic() + 15
            while queue.get_signal(url, signal["signal_id"])["status"] != "ACKED":
                assert time.monotonic() < deadline, queue.get_signal(url, signal["signal_id"])
                time.sleep(0.1)
            status = httpx.get(base + "/ea/queue-status", headers=headers, timeout=30).json()
        assert status["queue_status"]["ACKED"]["count"] == 1
        assert ea.signal_ids() == [signal["signal_id"]]
    finally:
        ea.stop()
