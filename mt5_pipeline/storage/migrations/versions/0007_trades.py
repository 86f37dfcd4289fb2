"""trades: the positions the signals opened, reported back; reconciliation_state

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_Double = sa.Float(precision=53)
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "trades",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "ticket",
            sa.BigInteger,
            nullable=False,
            unique=True,
            comment="the terminal's position ticket (POSITION_IDENTIFIER)",
        ),
        sa.Column(
            "signal_id", sa.String(36), nullable=True, comment="the signal that opened it, as the reporter knows it"
        ),
        sa.Column(
            "unknown_signal",
            sa.Boolean,
            nullable=False,
            server_default=sa.false(),
            comment="no such signal in signals_queue (opened by hand, or a lost link): kept and flagged",
        ),
        sa.Column("model_version", sa.String(64), nullable=True, comment="from the signal, when it is known"),
        sa.Column("account", sa.BigInteger, nullable=True, comment="the trading account (login)"),
        sa.Column("magic", sa.BigInteger, nullable=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(4), nullable=True, comment="from the signal when known, else as reported"),
        sa.Column("side", sa.String(4), nullable=False, comment="BUY or SELL"),
        sa.Column("volume", _Double, nullable=False, comment="lots"),
        sa.Column("open_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open_price", _Double, nullable=False),
        sa.Column("sl", _Double, nullable=True),
        sa.Column("tp", _Double, nullable=True),
        sa.Column("close_time", sa.DateTime(timezone=True), nullable=True, comment="null while the position is open"),
        sa.Column("close_price", _Double, nullable=True),
        sa.Column("exit_reason", sa.String(16), nullable=True, comment="sl, tp, time, opposite_signal or manual"),
        sa.Column(
            "profit",
            _Double,
            nullable=True,
            comment="in the account currency, before swap and commission (MT5's DEAL_PROFIT)",
        ),
        sa.Column(
            "pips",
            _Double,
            nullable=True,
            comment="(close - open) x side / pip size: the fills' prices, so the spread is paid",
        ),
        sa.Column("swap", _Double, nullable=False, server_default="0"),
        sa.Column("commission", _Double, nullable=False, server_default="0"),
        sa.Column("pip_size", _Double, nullable=True, comment="the price size of the pip used for pips"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_trades_signal_id", "trades", ["signal_id"])
    op.create_index(
        "ix_trades_open",
        "trades",
        ["magic", "ticket"],
        postgresql_where=sa.text("close_time IS NULL"),
        sqlite_where=sa.text("close_time IS NULL"),
    )
    op.create_index("ix_trades_timeframe_close_time", "trades", ["timeframe", "close_time"])
    op.create_table(
        "reconciliation_state",
        sa.Column("account", sa.BigInteger, primary_key=True, comment="0 when the reporter did not say"),
        sa.Column("magic", sa.BigInteger, primary_key=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("terminal_positions", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "unknown_positions",
            sa.Integer,
            nullable=False,
            server_default="0",
            comment="in the terminal, not open in trades (recorded now)",
        ),
        sa.Column(
            "missing_positions",
            sa.Integer,
            nullable=False,
            server_default="0",
            comment="open in trades, gone from the terminal (its close is to be reported)",
        ),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}", comment="JSON: the tickets of each kind"),
    )


def downgrade() -> None:
    op.drop_table("reconciliation_state")
    op.drop_index("ix_trades_timeframe_close_time", "trades")
    op.drop_index("ix_trades_open", "trades")
    op.drop_index("ix_trades_signal_id", "trades")
    op.drop_table("trades")
