"""one signal per (symbol, timeframe, bar), whatever the model version

Revision ID: 0003
Revises: 0002

Before this, the unique key included model_version, so a retrain mid-bar could queue a
second, even opposite, signal for the same bar. Existing rows are kept: where a bar has
several, the first (lowest id) stays the bar's signal; the others are marked
``superseded`` and, if still PENDING, EXPIRED so they are never sent. The partial unique
index then covers every row that is not superseded.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LATER_DUPLICATE = (
    "EXISTS (SELECT 1 FROM signals_queue AS first WHERE first.symbol = signals_queue.symbol "
    "AND first.timeframe = signals_queue.timeframe AND first.ts = signals_queue.ts AND first.id < signals_queue.id)"
)


def upgrade() -> None:
    with op.batch_alter_table("signals_queue") as batch:
        batch.add_column(
            sa.Column(
                "superseded",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
                comment=("a second signal for a bar, kept from before one-signal-per-bar (migration 0003); never sent"),
            )
        )
    op.execute(
        "UPDATE signals_queue SET status = 'EXPIRED', claim_token = NULL, lease_until = NULL, "
        "last_error = 'superseded: the bar already had a signal (migration 0003, one signal per bar)' "
        f"WHERE status = 'PENDING' AND {_LATER_DUPLICATE}"
    )
    op.execute(f"UPDATE signals_queue SET superseded = TRUE WHERE {_LATER_DUPLICATE}")
    with op.batch_alter_table("signals_queue") as batch:
        batch.drop_constraint("uq_signals_queue_bar_model", type_="unique")
    op.create_index(
        "uq_signals_queue_bar",
        "signals_queue",
        ["symbol", "timeframe", "ts"],
        unique=True,
        postgresql_where=sa.text("NOT superseded"),
        sqlite_where=sa.text("NOT superseded"),
    )


def downgrade() -> None:
    op.drop_index("uq_signals_queue_bar", table_name="signals_queue")
    with op.batch_alter_table("signals_queue") as batch:
        batch.create_unique_constraint("uq_signals_queue_bar_model", ["symbol", "timeframe", "ts", "model_version"])
        batch.drop_column("superseded")
