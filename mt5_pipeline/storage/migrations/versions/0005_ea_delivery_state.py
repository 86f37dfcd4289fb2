"""ea_delivery_state: the EA circuit breaker and configuration error, shared by pushers;
an index for the claim's per-symbol order check

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Utc = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ea_delivery_state",
        sa.Column("ea", sa.String(512), primary_key=True, comment="the EA signals URL, without user info"),
        sa.Column("state", sa.String(10), nullable=False, server_default="closed", comment="closed | outage | config"),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0", comment="failed requests in a row"),
        sa.Column("probe_at", Utc, nullable=True, comment="when one pusher may try the EA again"),
        sa.Column(
            "suspect_id", sa.BigInteger(), nullable=True, comment="signals_queue.id whose failure opened the breaker"
        ),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("opened_at", Utc, nullable=True),
        sa.Column("updated_at", Utc, nullable=False),
    )
    op.create_index(
        "ix_signals_queue_pending_symbol",
        "signals_queue",
        ["symbol", "id"],
        postgresql_where=sa.text("status = 'PENDING'"),
        sqlite_where=sa.text("status = 'PENDING'"),
    )


def downgrade() -> None:
    op.drop_index("ix_signals_queue_pending_symbol", table_name="signals_queue")
    op.drop_table("ea_delivery_state")
