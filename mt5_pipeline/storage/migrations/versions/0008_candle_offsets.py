"""candle_offsets: the UTC offset each run of stored bars was converted with

Revision ID: 0008
Revises: 0007

A bar re-sent converted with another offset than the one it was stored with (a
catch-up across a daylight-saving change with a measured offset) is refused instead of
replacing a correct bar (mt5_pipeline.server_time).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "candle_offsets",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(4), primary_key=True),
        sa.Column("first_ts", sa.BigInteger, primary_key=True, comment="UTC epoch seconds of the run's first bar"),
        sa.Column("last_ts", sa.BigInteger, nullable=False, comment="UTC epoch seconds of the run's last bar"),
        sa.Column(
            "utc_offset_s",
            sa.Integer,
            nullable=False,
            comment="server time minus UTC, seconds, for every bar in the run",
        ),
    )


def downgrade() -> None:
    op.drop_table("candle_offsets")
