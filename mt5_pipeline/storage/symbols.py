"""The ``symbols`` table: what each terminal says about an instrument (digits, point)."""

from __future__ import annotations

from sqlalchemy import func, select

from mt5_pipeline.clock import utcnow
from mt5_pipeline.storage.dialect import insert_on_conflict
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import symbols


def record_instrument(database_url: str, symbol: str, digits: int | None, point: float | None) -> None:
    """Keep what the EA says about `symbol` (an upsert; fields not sent keep their value)."""
    if digits is None and point is None:
        return
    values = {"symbol": symbol, "digits": digits, "point": point, "updated_at": utcnow()}
    with get_engine(database_url).begin() as conn:
        statement = insert_on_conflict(conn, symbols).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=["symbol"],
            set_={
                "digits": func.coalesce(statement.excluded.digits, symbols.c.digits),
                "point": func.coalesce(statement.excluded.point, symbols.c.point),
                "updated_at": statement.excluded.updated_at,
            },
        )
        conn.execute(statement)


def instrument(database_url: str, symbol: str) -> tuple[int | None, float | None] | None:
    """(digits, point) the EA sent for `symbol`, or None."""
    with get_engine(database_url).connect() as conn:
        row = conn.execute(select(symbols.c.digits, symbols.c.point).where(symbols.c.symbol == symbol)).first()
    return None if row is None else (row.digits, row.point)
