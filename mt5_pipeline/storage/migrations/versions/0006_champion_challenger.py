"""model_registry records every retrain: candidates, decisions and why, per timeframe

Revision ID: 0006
Revises: 0005

Every retrain leaves a row: a promoted or forced candidate (the champion has
``is_current``), a rejected one, or a failed attempt (``decision = 'failed'``, no file).
Rows from before this migration were all published, so they read as ``promoted``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("timeframe", lambda: sa.Column("timeframe", sa.String(4), nullable=False, server_default="M1")),
    ("kind", lambda: sa.Column("kind", sa.String(32), nullable=False, server_default="random_forest")),
    (
        "decision",
        lambda: sa.Column(
            "decision",
            sa.String(10),
            nullable=False,
            server_default="promoted",
            comment="promoted, forced, rejected or failed",
        ),
    ),
    ("reason", lambda: sa.Column("reason", sa.Text, nullable=False, server_default="")),
    (
        "scores",
        lambda: sa.Column(
            "scores",
            sa.Text,
            nullable=False,
            server_default="{}",
            comment="JSON: candidate and champion on the same window, with the baselines",
        ),
    ),
    (
        "champion_version",
        lambda: sa.Column(
            "champion_version", sa.String(64), nullable=True, comment="the champion the candidate was compared with"
        ),
    ),
)


def upgrade() -> None:
    # batch mode: SQLite cannot add a column with a comment and constraints in place everywhere.
    with op.batch_alter_table("model_registry") as batch:
        for _, column in _COLUMNS:
            batch.add_column(column())
    op.create_index("ix_model_registry_model_decision", "model_registry", ["model", "decision"])


def downgrade() -> None:
    op.drop_index("ix_model_registry_model_decision", "model_registry")
    with op.batch_alter_table("model_registry") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
