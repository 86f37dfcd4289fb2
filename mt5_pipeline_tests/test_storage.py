"""Schema and migrations on both backends; URL normalisation."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.engine import get_engine, normalize_url, psycopg_conninfo, redact
from mt5_pipeline.storage.schema import metadata


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg2://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///./data/mt5.db", "sqlite:///./data/mt5.db"),
    ],
)
def test_urls_are_normalised_in_one_place(url, expected):
    assert normalize_url(url) == expected


def test_conninfo_and_redaction():
    assert psycopg_conninfo("postgresql+psycopg2://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert "pw" not in redact("postgresql://u:pw@h/db")


def test_migrations_create_every_table_and_twice_is_a_no_op(db_url):
    engine = get_engine(db_url)
    assert migrate.is_up_to_date(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"candles", "features_m1", "signals_queue", "signals_ack", "model_registry"} <= tables
    again = migrate.upgrade(db_url)
    assert again.before == again.after == migrate.head_revision()
    assert "already at" in again.describe()


def test_migrations_match_the_schema_module(db_url):
    engine = get_engine(db_url)
    with engine.connect() as conn:
        # Only our tables: Dagster's storage may share the database (as in production).
        ours = {"include_name": lambda name, kind, _parent: kind != "table" or name in metadata.tables}
        context = MigrationContext.configure(conn, opts={"compare_type": False, "version_table": migrate.VERSION_TABLE, **ours})
        diffs = compare_metadata(context, metadata)
    assert diffs == []


def test_indexes_fit_the_queries(db_url):
    insp = inspect(get_engine(db_url))
    assert insp.get_pk_constraint("candles")["constrained_columns"] == ["symbol", "timeframe", "ts"]
    queue_indexes = {ix["name"] for ix in insp.get_indexes("signals_queue")}
    assert "ix_signals_queue_pending" in queue_indexes
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("signals_queue")}
    assert ("symbol", "timeframe", "ts", "model_version") in uniques


def test_upgrade_reports_plain_table_without_timescaledb(pg_url):
    result = migrate.upgrade(pg_url)
    assert "plain table" in result.candles_storage or "hypertable" in result.candles_storage


def test_our_alembic_history_leaves_dagsters_alone(db_url):
    from sqlalchemy import text

    engine = get_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert migrate.VERSION_TABLE in tables
    if "alembic_version" in tables:  # Dagster's PostgreSQL storage, sharing the database
        with engine.connect() as conn:
            theirs = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        assert not theirs & {"0001", "0002"}


def test_upgrade_from_empty_on_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'new.db'}"
    result = migrate.upgrade(url)
    assert result.before is None and result.after == migrate.head_revision()
    assert "SQLite" in result.candles_storage
