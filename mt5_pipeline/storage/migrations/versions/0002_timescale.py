"""candles as a TimescaleDB hypertable where the server has the extension

Revision ID: 0002
Revises: 0001

A plain table keeps the same primary key and indexes where TimescaleDB is absent (and
on SQLite); mt5_pipeline.storage.migrate reports which it did.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    available = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")).scalar()
    if not available:
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    # One-week chunks hold about 10,000 M1 bars per symbol: small enough to compress
    # and drop by age, large enough that a day's query touches one chunk.
    op.execute(
        "SELECT create_hypertable('candles', 'ts', chunk_time_interval => INTERVAL '7 days', "
        "if_not_exists => TRUE, migrate_data => TRUE)"
    )


def downgrade() -> None:
    # A hypertable cannot be turned back into a plain table in place; nothing to undo
    # on servers without TimescaleDB.
    pass
