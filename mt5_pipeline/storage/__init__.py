"""Storage: the schema, engines, migrations and every statement whose SQL differs between
PostgreSQL and SQLite (mt5_pipeline_tests/system/test_dialects.py keeps it so). Everything above
it imports from here."""

from mt5_pipeline.storage.engine import get_engine, is_postgres, normalize_url
from mt5_pipeline.storage.schema import candles, features_m1, metadata, model_registry, signals_ack, signals_queue

__all__ = [
    "candles",
    "features_m1",
    "get_engine",
    "is_postgres",
    "metadata",
    "model_registry",
    "normalize_url",
    "signals_ack",
    "signals_queue",
]
