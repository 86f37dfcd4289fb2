"""A fresh, empty PostgreSQL database for the install tests (Docker image, systemd),
which run `db upgrade` and Dagster's instance storage from scratch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mt5_pipeline_tests.postgres_support import new_database


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    with new_database(prefix) as url:
        yield url.set(drivername="postgresql").render_as_string(hide_password=False)
