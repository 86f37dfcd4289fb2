"""symbols (what the EA says about an instrument) and candle_series (bars per series)

Revision ID: 0004
Revises: 0003

`symbols` keeps the `digits` / `point` an EA sends with its candles, so a pip is known
for gold, indices and crypto without guessing (mt5_pipeline.pips). `candle_series` keeps
the number of bars per (symbol, timeframe), maintained by the ingest core under the
series lock, so /health, /metrics and new_candles_sensor never count the candles table.
It is filled here from what is already stored (one pass, at migration time).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Utc = sa.DateTime(timezone=True)
Double = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "symbols",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("digits", sa.Integer, nullable=True, comment="MT5 SYMBOL_DIGITS: decimals of a quote"),
        sa.Column("point", Double, nullable=True, comment="MT5 SYMBOL_POINT: smallest price step"),
        sa.Column("updated_at", Utc, nullable=False),
    )
    op.create_table(
        "candle_series",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timeframe", sa.String(4), primary_key=True),
        sa.Column(
            "bars", sa.BigInteger, nullable=False, server_default="0", comment="bars stored, kept by the ingest core"
        ),
    )
    op.execute(
        "INSERT INTO candle_series (symbol, timeframe, bars) SELECT symbol, timeframe, count(*) FROM candles GROUP BY "
        "symbol, timeframe"
    )


def downgrade() -> None:
    op.drop_table("candle_series")
    op.drop_table("symbols")
