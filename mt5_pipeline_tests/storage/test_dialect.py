"""storage.dialect's statements on real databases: a DriverStatement (and a RowsParameter
batch run the same way) is its own transaction on both, one string outside SQLAlchemy's
execution on PostgreSQL, with errors and lost connections as SQLAlchemy's own execution
has them; a RowsInsert writes any number of rows as one statement of the driver's SQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import Integer, String, bindparam, event, exc, func, insert, literal, select, update

from mt5_pipeline.storage.dialect import DriverStatement, RowsInsert, RowsParameter
from mt5_pipeline.storage.engine import autocommit_cursor, get_engine, make_engine, psycopg_conninfo
from mt5_pipeline.storage.schema import ea_delivery_state as t

AT = datetime(2026, 3, 2, 10, 0, 5, tzinfo=timezone.utc)
READ = DriverStatement(select(t.c.ea, t.c.failures, t.c.updated_at).where(t.c.ea == bindparam("ea", type_=t.c.ea.type)))
WRITE = DriverStatement(
    insert(t).values(
        ea=bindparam("ea"),
        state="closed",
        failures=bindparam("failures"),
        updated_at=bindparam("at", t.c.updated_at.type),
    ),
    no_commit_flush=True,
)
BUMP = DriverStatement(
    update(t).where(t.c.failures < bindparam("below", type_=Integer)).values(failures=t.c.failures + 1)
)
BATCH = RowsParameter("batch", ea=String(), failures=Integer())


def _set_failures(rows):
    return update(t).where(t.c.ea == rows.c.ea).values(failures=rows.c.failures).returning(t.c.ea, t.c.failures)


def _stored(url: str) -> list[tuple]:
    """The rows as a connection of another pool sees them: only what was committed."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(t.c.ea, t.c.failures).order_by(t.c.ea))]
    finally:
        engine.dispose()


def test_a_statement_is_its_own_transaction_on_both_databases(db_url):
    engine = get_engine(db_url)
    with engine.connect() as conn:
        assert WRITE.rowcount(conn, {"ea": "a", "failures": 2, "at": AT}) == 1
        assert WRITE.rowcount(conn, {"ea": "b", "failures": 5, "at": AT}) == 1
        with pytest.raises(exc.IntegrityError):  # the same key again
            WRITE.rowcount(conn, {"ea": "a", "failures": 3, "at": AT})
        assert not conn.in_transaction()  # the failed one left nothing open
        assert BUMP.rowcount(conn, {"below": 4}) == 1
        rows = READ.run(conn, {"ea": "a"})
        assert READ.run(conn, {"ea": "nobody"}) == []
    assert [type(r) for r in rows] == [tuple]
    (ea, failures, updated_at) = rows[0]
    assert (ea, failures, updated_at.astimezone(timezone.utc)) == ("a", 3, AT)
    assert _stored(db_url) == [("a", 3), ("b", 5)]  # committed, each by itself
    with engine.connect() as conn:
        conn.execute(select(1))  # a transaction begun is the caller's: never ended behind its back
        with pytest.raises(RuntimeError, match="their own transaction"):
            READ.run(conn, {"ea": "a"})


def test_a_batch_of_rows_is_one_statement_in_its_own_transaction_on_both_databases(db_url):
    with get_engine(db_url).connect() as conn:
        for ea in ("a", "b", "c"):
            WRITE.rowcount(conn, {"ea": ea, "failures": 0, "at": AT})
        changed = BATCH.run_in_one_round_trip(conn, _set_failures, [("a", 7), ("c", 9), ("nobody", 1)])
        assert sorted(changed) == [("a", 7), ("c", 9)] and {type(r) for r in changed} == {tuple}
        assert BATCH.run_in_one_round_trip(conn, _set_failures, []) == []
        assert not conn.in_transaction()
    assert _stored(db_url) == [("a", 7), ("b", 0), ("c", 9)]


def test_on_sqlite_a_statement_runs_through_the_engine_in_a_transaction(sqlite_url):
    engine = get_engine(sqlite_url)
    seen: list[str] = []
    listeners = {
        "begin": lambda *_: seen.append("BEGIN"),
        "before_cursor_execute": lambda *a: seen.append(a[2].split()[0]),
        "commit": lambda *_: seen.append("COMMIT"),
    }
    for name, fn in listeners.items():
        event.listen(engine, name, fn)
    try:
        with engine.connect() as conn:
            assert WRITE.rowcount(conn, {"ea": "a", "failures": 1, "at": AT}) == 1
            assert READ.run(conn, {"ea": "a"})[0][2] == AT  # the table's UtcDateTime applied
    finally:
        for name, fn in listeners.items():
            event.remove(engine, name, fn)
    assert seen == ["BEGIN", "INSERT", "COMMIT", "BEGIN", "SELECT", "COMMIT"]


def test_on_postgres_a_statement_is_one_string_sent_in_autocommit(pg_url):
    engine = get_engine(pg_url)
    setting = select(func.current_setting("synchronous_commit"))
    unflushed, plain = DriverStatement(setting, no_commit_flush=True), DriverStatement(setting)
    seen: list[object] = []

    def count(*args) -> None:
        seen.append(args)

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "begin", count)
    try:
        with engine.connect() as conn:
            assert WRITE.rowcount(conn, {"ea": "a", "failures": 2, "at": AT}) == 1
            assert unflushed.run(conn, {}) == [("off",)]  # its SET LOCAL went in the same string
            default = plain.run(conn, {})
            assert BATCH.run_in_one_round_trip(conn, _set_failures, [("a", 4)]) == [("a", 4)]
            assert conn.connection.driver_connection.autocommit is False  # handed back as it came
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "begin", count)
    assert seen == []  # no statement through SQLAlchemy's execution, no transaction begun there
    assert default != [("off",)]  # SET LOCAL ended with its statement's transaction
    assert WRITE.sql.startswith("SET LOCAL synchronous_commit TO OFF; INSERT INTO ea_delivery_state")
    assert _stored(pg_url) == [("a", 4)]


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


def test_rows_insert_repeats_the_row_in_the_tables_column_order():
    rows = RowsInsert(t)
    paris = timezone(timedelta(hours=1))
    sql, params = rows.render(["failures", "ea", "updated_at"], [(1, "a", AT.astimezone(paris)), (2, "b", AT)])
    assert sql == "INSERT INTO ea_delivery_state (ea, failures, updated_at) VALUES (%s, %s, %s), (%s, %s, %s)"
    assert params == ["a", 1, AT, "b", 2, AT]
    assert params[2].utcoffset() == timedelta(0)  # bound as the tables' UtcDateTime binds it
    naive = rows.render(["ea", "updated_at"], [("c", AT.replace(tzinfo=None))])[1]
    assert naive == ["c", AT] and naive[1].tzinfo is not None
    with pytest.raises(ValueError, match="no rows"):
        rows.render(["ea"], [])
    # A statement that sets a column itself does not take the row's value for it: refused.
    with pytest.raises(ValueError, match="exactly the columns"):
        RowsInsert(t, lambda one: one.values(failures=0)).render(["ea", "failures"], [("a", 1)])


def _new_ones(one_row):
    new = one_row.on_conflict_do_nothing().returning(t.c.ea).cte("new")
    return select(new.c.ea, bindparam("tag", type_=String), literal("fixed")).order_by(new.c.ea)


def test_rows_insert_on_postgres_keeps_its_conflict_clause_returning_and_parameters(pg_url):
    rows = RowsInsert(t, _new_ones)
    columns = ["ea", "failures", "updated_at"]
    first = rows.render(columns, [("a", 1, AT), ("b", 2, AT)], tag="one")
    assert first[1][-2:] == ["one", "fixed"]  # the statement's own parameters follow the rows
    with autocommit_cursor(pg_url) as cursor:
        cursor.execute(*first)
        assert cursor.fetchall() == [("a", "one", "fixed"), ("b", "one", "fixed")]
        cursor.execute(*rows.render(columns, [("b", 9, AT), ("c", 3, AT)], tag="two"))
        assert cursor.fetchall() == [("c", "two", "fixed")]  # b was there already: left as it was
    assert _stored(pg_url) == [("a", 1), ("b", 2), ("c", 3)]
    with pytest.raises(KeyError, match="tag"):  # a named parameter must be given
        rows.render(columns, [("d", 1, AT)])
