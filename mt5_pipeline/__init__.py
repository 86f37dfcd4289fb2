"""mt5-pipeline: MetaTrader 5 candles -> features_m1 -> rf_m1 -> signals -> the EA.

The domain core lives in plain modules here (settings, storage, ingest, features,
model, signals, queue, ea_client, pusher). The Dagster code location is exposed as
``defs`` lazily, so that importing the core never imports Dagster.
"""

__version__ = "0.3.0"


def __dir__() -> list[str]:
    # Dagster discovers `defs` by listing the module's members.
    return sorted([*globals(), "defs"])


def __getattr__(name: str):
    if name == "defs":
        from mt5_pipeline.definitions import defs  # Dagster only for whoever asks for the code location

        return defs
    raise AttributeError(f"module 'mt5_pipeline' has no attribute {name!r}")
