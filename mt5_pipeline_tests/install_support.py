"""A fresh, empty PostgreSQL database for the install tests (Docker image, systemd),
which run `db upgrade` and Dagster's instance storage from scratch."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mt5_pipeline_tests.conftest import REQUIRE_POSTGRES, TEST_DATABASE_URL


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    admin_url = make_url(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg2://", 1))
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    try:
        yield admin_url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
