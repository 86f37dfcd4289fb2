"""Fixtures of the bridge's unit tests (mt5_pipeline_tests/bridge/parts.py holds the parts)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mt5_pipeline.bridge.client import ApiClient
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.bridge.store import BridgeStore
from mt5_pipeline.bridge.terminal import Terminal
from mt5_pipeline_tests.bridge.parts import KEY, NOW, ScriptedApi, bridge_settings, connected
from mt5_pipeline_tests.bridge_support import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def peer() -> Iterator[ScriptedApi]:
    api = ScriptedApi()
    api.server.start()
    yield api
    api.server.stop()


@pytest.fixture
def api(peer: ScriptedApi) -> Iterator[ApiClient]:
    client = ApiClient(peer.base_url, KEY, timeout=5)
    yield client
    client.close()


@pytest.fixture
def store(tmp_path) -> Iterator[BridgeStore]:
    s = BridgeStore(tmp_path / "bridge.sqlite3")
    yield s
    s.close()


@pytest.fixture
def mt5(clock: ManualClock) -> FakeMT5:
    return FakeMT5(clock=clock, server_offset_hours=2)


@pytest.fixture
def terminal(mt5: FakeMT5, tmp_path) -> Terminal:
    return connected(mt5, bridge_settings(tmp_path))
