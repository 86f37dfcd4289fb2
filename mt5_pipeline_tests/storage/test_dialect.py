"""storage.dialect's one-round-trip statements on a real PostgreSQL: errors and lost
connections behave as they do through SQLAlchemy's own execution."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import bindparam, exc, insert, select, text

from mt5_pipeline.storage.dialect import DriverStatement
from mt5_pipeline.storage.engine import get_engine, psycopg_conninfo
from mt5_pipeline.storage.schema import ea_delivery_state as t

READ = DriverStatement(select(t.c.ea, t.c.failures).where(t.c.ea == bindparam("ea", type_=t.c.ea.type)))
WRITE = DriverStatement(
    insert(t).values(ea=bindparam("ea"), state="closed", failures=bindparam("failures"), updated_at=text("now()")),
    "SET LOCAL synchronous_commit TO OFF; ",
)


def test_a_write_commits_by_itself_and_an_error_is_sqlalchemys(pg_url):
    engine = get_engine(pg_url)
    with engine.connect() as conn:
        assert WRITE.rowcount(conn, {"ea": "a", "failures": 2}) == 1
        with pytest.raises(exc.IntegrityError):  # the same key again
            WRITE.rowcount(conn, {"ea": "a", "failures": 3})
        assert conn.connection.driver_connection.autocommit is False  # handed back as it came
    with engine.connect() as conn:  # committed, and the failed one left nothing open
        assert READ.run(conn, {"ea": "a"}) == [("a", 2)]
        assert conn.execute(select(t.c.failures).where(t.c.ea == "a")).scalar_one() == 2
        # A transaction begun on the connection is the caller's: never ended behind its back.
        with pytest.raises(RuntimeError, match="their own transaction"):
            READ.run(conn, {"ea": "a"})


def test_a_lost_connection_is_dropped_from_the_pool(pg_url):
    engine = get_engine(pg_url)
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.commit()
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(exc.OperationalError):
        with engine.connect() as conn:
            while True:  # the pool hands out connections last in, first out: reach the killed one
                READ.run(conn, {"ea": "x"})
                conn.close()
                conn = engine.connect()
    with engine.connect() as conn:
        assert READ.run(conn, {"ea": "x"}) == []
