"""Scratch PostgreSQL databases on TEST_DATABASE_URL's server, for the session's database
(conftest) and the install tests' empty ones (install_support)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from mt5_pipeline.storage.engine import dispose_engines, normalize_url

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES", "") == "1"


@contextmanager
def new_database(prefix: str) -> Iterator[URL]:
    """A new, empty database `<prefix>_<pid>_<random>` (its URL, with the psycopg2 driver),
    dropped afterwards WITH (FORCE) so that connections left open cannot keep it. Where the
    server is unreachable the test skips, or fails with REQUIRE_POSTGRES=1."""
    admin_url = normalize_url(TEST_DATABASE_URL)
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        message = (
            f"PostgreSQL at {make_url(admin_url).render_as_string(hide_password=True)} unreachable: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        )
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    try:
        yield make_url(admin_url).set(database=name)
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
