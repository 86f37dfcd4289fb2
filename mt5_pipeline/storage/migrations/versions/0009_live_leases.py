"""live_workers and live_leases: live workers on several hosts share the series;
live_decisions: what the live worker decided per bar, for Dagster's run-less record

Revision ID: 0009
Revises: 0008

Each running `mt5-pipeline live` process keeps a row in live_workers alive; each series
(symbol, timeframe) has one lease row naming the worker deciding it until expires_at.
mt5_pipeline.series_leases.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
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
    op.create_table(
        "live_decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(4), nullable=False),
        sa.Column("bar", Utc, nullable=True, comment="the bar decided (open time)"),
        sa.Column(
            "status", sa.String(24), nullable=False, comment="generate_signal's status, or no_features / no_model"
        ),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("signal_id", sa.String(36), nullable=True),
        sa.Column("side", sa.String(4), nullable=True),
        sa.Column(
            "feature_rows",
            sa.Integer(),
            nullable=False,
            server_default="0",
            comment="feature rows written for this decision",
        ),
        sa.Column(
            "feature_path",
            sa.String(8),
            nullable=False,
            server_default="",
            comment="tail (one row from memory) or batch",
        ),
        sa.Column("trigger", sa.String(10), nullable=False, server_default=""),
        sa.Column("worker", sa.String(128), nullable=False, server_default=""),
        sa.Column("seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("decided_at", Utc, nullable=False),
    )
    op.create_index("ix_live_decisions_decided_at", "live_decisions", ["decided_at"])


def downgrade() -> None:
    op.drop_index("ix_live_decisions_decided_at", "live_decisions")
    op.drop_table("live_decisions")
    op.drop_index("ix_live_leases_worker", "live_leases")
    op.drop_table("live_leases")
    op.drop_table("live_workers")
