"""Fixtures shared by every test: the two storage backends, settings, and the clock.

Every storage test runs twice, on SQLite in a temp dir and on a PostgreSQL database
created fresh for this test session under TEST_DATABASE_URL (dropped at the end). If
that server is unreachable the PostgreSQL half skips with the reason, unless
REQUIRE_POSTGRES=1 (as in CI), where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mt5_pipeline.settings import Settings
from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.engine import dispose_engines, get_engine, normalize_url
from mt5_pipeline.storage.schema import metadata

pytest_plugins = ["mt5_pipeline_tests.ea_server", "mt5_pipeline_tests.bridge_support"]

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES", "") == "1"


def _server_url(url: str) -> str:
    return normalize_url(url)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin_url = _server_url(TEST_DATABASE_URL)
    name = f"mt5_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        message = f"PostgreSQL at {make_url(admin_url).render_as_string(hide_password=True)} unreachable: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
