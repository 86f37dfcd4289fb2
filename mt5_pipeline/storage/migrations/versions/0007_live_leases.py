"""live_workers and live_leases: live workers on several hosts share the series

Revision ID: 0007
Revises: 0006

Each running `mt5-pipeline live` process keeps a row in live_workers alive; each series
(symbol, timeframe) has one lease row naming the worker deciding it until expires_at.
mt5_pipeline.series_leases.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Utc = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "live_workers",
        sa.Column("worker", sa.String(128), primary_key=True, comment="host:pid:random, one per live worker process"),
        sa.Column("started_at", Utc, nullable=False),
        sa.Column("expires_at", Utc, nullable=False, comment="the worker is gone once this passes without a renewal"),
    )
    op.create_table(
        "live_leases",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(4), primary_key=True),
        sa.Column("worker", sa.String(128), nullable=True, comment="the live worker deciding this series; NULL: free"),
        sa.Column("expires_at", Utc, nullable=False, comment="free for another worker once this passes"),
        sa.Column("acquired_at", Utc, nullable=True),
    )
    op.create_index("ix_live_leases_worker", "live_leases", ["worker"])


def downgrade() -> None:
    op.drop_index("ix_live_leases_worker", "live_leases")
    op.drop_table("live_leases")
    op.drop_table("live_workers")
