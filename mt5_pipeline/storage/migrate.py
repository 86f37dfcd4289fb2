"""`mt5-pipeline db upgrade`: create or migrate the schema with alembic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from mt5_pipeline.storage.engine import get_engine

MIGRATIONS = Path(__file__).with_name("migrations")
# Not alembic's default `alembic_version`: Dagster's PostgreSQL storage keeps its own
# alembic history in that table, and production shares one database between the two.
VERSION_TABLE = "mt5_pipeline_alembic_version"


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None
    after: str | None
    candles_storage: str  # "hypertable", "plain table" or "plain table (SQLite)"

    def describe(self) -> str:
        moved = "already at" if self.before == self.after else f"migrated {self.before or 'empty'} ->"
        return f"schema {moved} {self.after}; candles is a {self.candles_storage}"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def candles_storage(engine: Engine) -> str:
    if engine.dialect.name != "postgresql":
        return "plain table (SQLite)"
    with engine.connect() as conn:
        has_ts = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).scalar()
        if has_ts:
            hyper = conn.execute(
                text("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'candles'")
            ).scalar()
            if hyper:
                return "hypertable (TimescaleDB)"
    return "plain table (no timescaledb extension on this server)"


def upgrade(database_url: str, revision: str = "head") -> UpgradeResult:
    """Bring the database at `database_url` to `revision`; running it twice is a no-op."""
    engine = get_engine(database_url)
    before = current_revision(engine)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return UpgradeResult(before, current_revision(engine), candles_storage(engine))


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
