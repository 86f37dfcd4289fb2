"""initial schema: candles, features_m1, signals_queue, signals_ack, model_registry

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = sa.DateTime(timezone=True)
Double = sa.Float(precision=53)
FALSE = sa.text("false")

RAW_LEVELS = ("close", "ma_5", "ma_10", "ma_20", "ma_50", "volume_ema_20")
FEATURES = (
    "ret_1",
    "ret_5",
    "ret_10",
    "ma_5_ratio",
    "ma_10_ratio",
    "ma_20_ratio",
    "ma_50_ratio",
    "std_5",
    "std_10",
    "std_20",
    "rsi_14",
    "vol_ratio",
    "range_ratio",
    "hour",
    "dow",
)


def upgrade() -> None:
    op.create_table(
        "candles",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(4), primary_key=True),
        sa.Column("ts", Utc, primary_key=True, comment="bar open time, UTC (MT5's bar time)"),
        sa.Column("open", Double, nullable=False),
        sa.Column("high", Double, nullable=False),
        sa.Column("low", Double, nullable=False),
        sa.Column("close", Double, nullable=False),
        sa.Column("tick_volume", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("spread", sa.Integer, nullable=False, server_default="0", comment="in points, as MT5 gives it"),
        sa.Column("real_volume", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("ingested_at", Utc, nullable=False, comment="set on insert and whenever a re-sent bar changes"),
    )
    op.create_index("ix_candles_symbol_tf_ingested_at", "candles", ["symbol", "timeframe", "ingested_at"])

    op.create_table(
        "features_m1",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(4), primary_key=True, server_default="M1"),
        sa.Column("ts", Utc, primary_key=True),
        *(sa.Column(name, Double, nullable=True) for name in RAW_LEVELS),
        *(sa.Column(name, Double, nullable=True) for name in FEATURES),
        sa.Column(
            "after_gap",
            sa.Boolean,
            nullable=False,
            server_default=FALSE,
            comment="first bars after a gap longer than the limit",
        ),
        sa.Column(
            "usable", sa.Boolean, nullable=False, server_default=FALSE, comment="every window full and past warm-up"
        ),
        sa.Column("feature_set_version", sa.String(32), nullable=False),
        sa.Column(
            "source_ingested_at",
            Utc,
            nullable=False,
            comment="the candle's ingested_at when these features were computed",
        ),
        sa.Column("computed_at", Utc, nullable=False),
    )

    op.create_table(
        "signals_queue",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("signal_id", sa.String(36), nullable=False, unique=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(4), nullable=False),
        sa.Column("ts", Utc, nullable=False, comment="the bar's open time"),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("confidence", Double, nullable=False),
        sa.Column("probability", Double, nullable=False),
        sa.Column("sl_pips", Double, nullable=False),
        sa.Column("tp_pips", Double, nullable=False),
        sa.Column("price", Double, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("meta", sa.Text, nullable=False, server_default="{}", comment="JSON sent to the EA as meta"),
        sa.Column("status", sa.String(10), nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Utc, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("expires_at", Utc, nullable=False),
        sa.Column("sent_at", Utc, nullable=True),
        sa.Column("acked_at", Utc, nullable=True),
        sa.Column("ticket", sa.BigInteger, nullable=True),
        sa.Column(
            "claim_token", sa.String(36), nullable=True, comment="who holds the lease; the final update must match it"
        ),
        sa.Column("lease_until", Utc, nullable=True),
        sa.UniqueConstraint("symbol", "timeframe", "ts", "model_version", name="uq_signals_queue_bar_model"),
    )
    op.create_index(
        "ix_signals_queue_pending",
        "signals_queue",
        ["id"],
        postgresql_where=sa.text("status = 'PENDING'"),
        sqlite_where=sa.text("status = 'PENDING'"),
    )
    op.create_index("ix_signals_queue_status_created", "signals_queue", ["status", "created_at"])

    op.create_table(
        "signals_ack",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("signal_id", sa.String(36), nullable=False, unique=True),
        sa.Column("ticket", sa.BigInteger, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("acked_at", Utc, nullable=False),
    )
    op.create_index("ix_signals_ack_acked_at", "signals_ack", ["acked_at"])

    op.create_table(
        "model_registry",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False, unique=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("trained_at", Utc, nullable=False),
        sa.Column("symbols", sa.Text, nullable=False, comment="JSON list"),
        sa.Column("train_start", Utc, nullable=True),
        sa.Column("train_end", Utc, nullable=True),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("feature_set_version", sa.String(32), nullable=False),
        sa.Column("label_mode", sa.String(20), nullable=False),
        sa.Column("metrics", sa.Text, nullable=False, comment="JSON"),
        sa.Column("data_hash", sa.String(64), nullable=False),
        sa.Column("is_current", sa.Boolean, nullable=False, server_default=FALSE),
    )
    op.create_index("ix_model_registry_model_trained_at", "model_registry", ["model", "trained_at"])


def downgrade() -> None:
    for table in ("model_registry", "signals_ack", "signals_queue", "features_m1", "candles"):
        op.drop_table(table)
