"""Fixtures shared by every test: the two storage backends, settings, and the clock.

Every storage test runs twice, on SQLite in a temp dir and on a PostgreSQL database
created fresh for this test session under TEST_DATABASE_URL (dropped at the end). If
that server is unreachable the PostgreSQL half skips with the reason, unless
REQUIRE_POSTGRES=1 (as in CI), where it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mt5_pipeline.settings import Settings
from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import metadata
from mt5_pipeline_tests.postgres_support import new_database

pytest_plugins = ["mt5_pipeline_tests.ea_server", "mt5_pipeline_tests.bridge_support"]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with new_database("mt5_test") as new:
        url = new.render_as_string(hide_password=False)
        migrate.upgrade(url)
        yield url


def _truncate(url: str) -> None:
    engine = get_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp dir, then PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mt5.db'}"
        migrate.upgrade(url)
        yield url
    else:
        url = request.getfixturevalue("pg_server_url")
        _truncate(url)
        yield url


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """PostgreSQL only, for what SQLite cannot do (SKIP LOCKED, LISTEN/NOTIFY, COPY)."""
    _truncate(pg_server_url)
    yield pg_server_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'mt5.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def settings_for(tmp_path: Path):
    """Settings for a database URL, isolated from the developer's environment and .env."""

    def build(url: str, **overrides) -> Settings:
        env = {"DATABASE_URL": url, "MODEL_DIR": str(tmp_path / "models")}
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        return Settings.from_env(env, env_file=None)

    return build


@pytest.fixture
def settings(db_url: str, settings_for) -> Settings:
    return settings_for(db_url)


@pytest.fixture
def anyio_backend():
    # The API tests run their async clients on asyncio only (uvicorn's loop in production).
    return "asyncio"
