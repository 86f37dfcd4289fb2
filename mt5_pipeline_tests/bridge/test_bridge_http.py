"""The bridge's HTTP side as the API sees it: the connection probe, pull mode without
EA_API_KEY, and the terminal's state on /metrics for Prometheus."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mt5_pipeline.apps.servers import BackgroundServer
from mt5_pipeline.bridge import Bridge
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.delivery.ea_client import EAClient
from mt5_pipeline.settings import Settings
from mt5_pipeline_tests.bridge_support import API_KEY, build_rig


@pytest.fixture
def rig(sqlite_url, tmp_path):
    r = build_rig(sqlite_url, tmp_path)
    yield r
    r.close()


def test_the_apis_connection_test_verifies_the_key_on_the_bridge(rig):
    # What `curl /ea/test-connection` shows a user: the probe is answered, not refused with 422.
    answer = httpx.get(
        f"{rig.api_server.base_url}/ea/test-connection", headers={"X-API-Key": API_KEY}, timeout=10
    ).json()
    assert answer["connected"] is True, answer
    assert answer["message"] == "✅ Connected"
    assert rig.mt5.requests == []  # a probe never reaches the terminal
    wrong = EAClient(rig.api_settings.replace(ea_api_key="not-the-bridges-key"))
    try:
        refused = wrong.test_connection()
    finally:
        wrong.close()
    assert refused["connected"] is False and refused["status_code"] == 401


def _metrics(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text  # no key, like /health
    return {
        f"{s.name}{s.labels or ''}": s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_metrics_show_the_terminal_state(rig):
    before = _metrics(rig.bridge_server.base_url)
    assert before["mt5_bridge_terminal_connected"] == 1 and before["mt5_bridge_trade_allowed"] == 1
    assert before["mt5_bridge_acks_pending"] == 0
    rig.mt5.shutdown()  # the terminal closed under the bridge
    after = _metrics(rig.bridge_server.base_url)
    assert after["mt5_bridge_terminal_connected"] == 0


def _production_bridge(tmp_path, mode: str, **extra: str) -> Settings:
    env = {
        "MT5_ENV": "production",
        "API_KEYS": "api-key",
        "EA_PUSH_ENABLED": "false",  # the API side of pull mode; settings then need no EA_API_KEY
        "BRIDGE_MODE": mode,
        "BRIDGE_API_URL": "http://127.0.0.1:9",
        "BRIDGE_STORE": str(tmp_path / "bridge.sqlite3"),
        **extra,
    }
    return Settings.from_env(env, env_file=None)


def test_pull_mode_needs_no_ea_api_key_and_serves_no_signals_route(tmp_path):
    settings = _production_bridge(tmp_path, "pull")
    assert settings.ea_api_key == ""
    bridge = Bridge(settings, FakeMT5(symbols=settings.bridge_symbols))
    server = BackgroundServer(bridge.app, lifespan="off").start()
    try:
        assert httpx.get(f"{server.base_url}/health", timeout=10).json()["mode"] == "pull"
        # Nobody may post orders to a pull-mode bridge, with or without a key.
        assert httpx.post(f"{server.base_url}/signals", json={"probe": True}, timeout=10).status_code in (404, 405)
    finally:
        server.stop()
        bridge.close()


def test_push_mode_still_refuses_to_start_without_a_key(tmp_path):
    settings = _production_bridge(tmp_path, "push")
    with pytest.raises(ValueError, match="EA_API_KEY"):
        Bridge(settings, FakeMT5(symbols=settings.bridge_symbols))
