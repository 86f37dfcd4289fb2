"""A whole bridge set-up for tests: the real API on a loopback port, the bridge on the
stand-in terminal (mt5_pipeline.bridge.fake_mt5) with a clock the test drives, the
bridge's signals server on another port, and the real pusher pointed at it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mt5_pipeline.api.main import create_app
from mt5_pipeline.apps.servers import BackgroundServer, free_port
from mt5_pipeline.bridge import Bridge
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.settings import Settings

API_KEY = "bridge-test-api-key"
EA_KEY = "bridge-test-ea-key"
SYMBOLS = "EURUSD,USDJPY,XAUUSD"


class ManualClock:
    """UTC time that moves only when the test says so. Starts a few hours in the past,
    so every bar the stand-in terminal makes is in the past for the API too."""

    def __init__(self, start: datetime | None = None) -> None:
        base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=3)
        self.now = start or base + timedelta(seconds=5)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self.now += timedelta(seconds=seconds)
            return self.now


@dataclass
class Rig:
    url: str  # the API's database
    api_settings: Settings  # the API and its pusher (EA_SERVER_URL = the bridge)
    bridge_settings: Settings
    api_server: BackgroundServer
    bridge_server: BackgroundServer
    bridge: Bridge
    mt5: FakeMT5
    clock: ManualClock
    tmp: Path

    @property
    def signals_url(self) -> str:
        return f"{self.bridge_server.base_url}/signals"

    def restart_bridge(self) -> Bridge:
        """Stop the bridge process's parts and build new ones on the same store and port,
        as after a restart of `mt5-pipeline bridge`."""
        self.bridge_server.stop()
        self.bridge.close()
        self.mt5.initialized = True  # the terminal keeps running; the new bridge attaches again
        self.bridge = Bridge(self.bridge_settings, self.mt5, clock=self.clock)
        self.bridge_server = BackgroundServer(self.bridge.app, port=self.bridge_server.port, lifespan="off")
        self.bridge_server.start()
        return self.bridge

    def close(self) -> None:
        self.bridge_server.stop()
        self.bridge.close()
        self.api_server.stop()
        self.api_app.state.api.close()  # type: ignore[attr-defined]


def build_rig(
    url: str,
    tmp: Path,
    *,
    mode: str = "push",
    clock: ManualClock | None = None,
    mt5: FakeMT5 | None = None,
    **bridge_env: str,
) -> Rig:
    clock = clock or ManualClock()
    mt5 = mt5 or FakeMT5(clock=clock, server_offset_hours=2)
    api_port, bridge_port = free_port(), free_port()
    api_env = {
        "DATABASE_URL": url,
        "MODEL_DIR": str(tmp / "models"),
        "API_KEYS": API_KEY,
        "EA_SERVER_URL": f"http://127.0.0.1:{bridge_port}/signals",
        "EA_API_KEY": EA_KEY,
        "EA_REQUEST_TIMEOUT": "5",
    }
    api_settings = Settings.from_env(api_env, env_file=None)
    env = {
        **api_env,
        "BRIDGE_API_URL": f"http://127.0.0.1:{api_port}",
        "BRIDGE_API_KEY": API_KEY,
        "BRIDGE_MODE": mode,
        "BRIDGE_PORT": str(bridge_port),
        "BRIDGE_SYMBOLS": SYMBOLS,
        "BRIDGE_HISTORY_BARS": "120",
        "BRIDGE_STORE": str(tmp / "bridge.sqlite3"),
        "BRIDGE_LOTS": "0.1",
        "BRIDGE_MAGIC": "4242",
        "BRIDGE_DEVIATION": "10",
        "BRIDGE_POLL_INTERVAL": "0.05",
        **bridge_env,
    }
    bridge_settings = Settings.from_env(env, env_file=None)
    api_app = create_app(api_settings)
    api_server = BackgroundServer(api_app, port=api_port, lifespan="off").start()
    bridge = Bridge(bridge_settings, mt5, clock=clock)
    bridge_server = BackgroundServer(bridge.app, port=bridge_port, lifespan="off").start()
    rig = Rig(url, api_settings, bridge_settings, api_server, bridge_server, bridge, mt5, clock, tmp)
    rig.api_app = api_app  # type: ignore[attr-defined]
    return rig


# The rig as fixtures (registered in conftest's pytest_plugins): the bridge's tests, the
# execution contract's and the trade reports' use the same three.
@pytest.fixture
def rig(sqlite_url, tmp_path):
    r = build_rig(sqlite_url, tmp_path)
    yield r
    r.close()


@pytest.fixture
def pg_rig(pg_url, tmp_path):
    r = build_rig(pg_url, tmp_path)
    yield r
    r.close()


@pytest.fixture
def any_rig(db_url, tmp_path):
    """The rig on both API databases (SQLite, then PostgreSQL)."""
    r = build_rig(db_url, tmp_path)
    yield r
    r.close()
