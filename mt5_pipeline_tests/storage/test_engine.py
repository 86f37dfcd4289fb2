"""The raw autocommit cursor the live path uses: one transaction per execute, the pool's
connections handed back as they were lent, and a connection the server dropped never
lent again."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from mt5_pipeline.storage.engine import autocommit, autocommit_cursor, get_engine


def test_statements_sent_together_commit_or_fail_together(pg_url):
    with get_engine(pg_url).begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS probe_rows; CREATE TABLE probe_rows (v int PRIMARY KEY)"))
    with autocommit_cursor(pg_url) as cursor:
        cursor.execute(
            "INSERT INTO probe_rows VALUES (1); INSERT INTO probe_rows VALUES (2); SELECT count(*) FROM probe_rows"
        )
        assert cursor.fetchone() == (2,)
    with pytest.raises(IntegrityError):
        with autocommit_cursor(pg_url) as cursor:
            cursor.execute("INSERT INTO probe_rows VALUES (3); INSERT INTO probe_rows VALUES (1)")
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT array_agg(v ORDER BY v) FROM probe_rows")).scalar() == [1, 2]
        # Lent back in transactional mode: an uncommitted write is not seen by others.
        assert conn.connection.dbapi_connection.autocommit is False
        conn.execute(text("DROP TABLE probe_rows"))
        conn.commit()


def test_a_connection_the_server_dropped_is_not_lent_again(pg_url):
    with get_engine(pg_url).connect() as conn:
        with pytest.raises(OperationalError):
            with autocommit(conn) as cursor:
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        # Invalidated by autocommit itself, not only by the pool's failed reset at check-in:
        # the caller still holding the connection gets a new one on its next statement.
        assert conn.invalidated
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        conn.commit()
    for _ in range(6):  # more than the pool holds
        with autocommit_cursor(pg_url) as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
