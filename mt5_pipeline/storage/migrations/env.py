"""Alembic environment: the connection is handed in by mt5_pipeline.storage.migrate."""

from alembic import context

from mt5_pipeline.storage.migrate import VERSION_TABLE
from mt5_pipeline.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs bare `alembic`
    raise SystemExit("run migrations with `mt5-pipeline db upgrade`, which reads DATABASE_URL")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
