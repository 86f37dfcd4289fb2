"""Dagster resources: the database, the model store and the EA, configured from the environment.

Each resource holds only what differs per deployment; the rest of the configuration is
the same `Settings` the API and the worker read. Values that come from the environment
are passed as `EnvVar`s so the Dagster UI shows the variable's name, never a password.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mt5_pipeline.settings import Settings, load_settings


class SettingsResource(dg.ConfigurableResource):
    """Everything else the core reads: the environment, with explicit overrides on top.

    Production leaves `overrides` empty, so the code location reads the same variables as the
    API and the worker; tests and the demo put their overrides here.
    """

    overrides: dict[str, str] = {}

    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, **self.overrides})


class DatabaseResource(dg.ConfigurableResource):
    """Where candles, features, the queue and the registry live (DATABASE_URL)."""

    database_url: str


class ModelStoreResource(dg.ConfigurableResource):
    """Where rf_m1.pkl and its versions live (MODEL_DIR)."""

    model_dir: str

    @property
    def path(self) -> Path:
        return Path(self.model_dir)


class EAResource(dg.ConfigurableResource):
    """The Expert Advisor's signals endpoint and key (EA_SERVER_URL or EA_SERVER_IP/PORT, EA_API_KEY)."""

    server_url: str = ""
    api_key: str = ""


def pipeline_settings(
    config: SettingsResource, database: DatabaseResource, models: ModelStoreResource, ea: EAResource | None = None
) -> Settings:
    """The core's Settings: the environment and its overrides, with the resources' values on top."""
    changes: dict = {"database_url": database.database_url, "model_dir": models.path}
    if ea is not None:
        if ea.server_url:
            changes["ea_server_url_override"] = ea.server_url
        if ea.api_key:
            changes["ea_api_key"] = ea.api_key
    return config.settings().replace(**changes)


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    return dg.EnvVar(name) if os.environ.get(name) else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for the code location, read from the environment when it loads."""
    base = load_settings()
    return {
        "config": SettingsResource(),
        "database": DatabaseResource(database_url=_env_or("DATABASE_URL", base.database_url)),
        "models": ModelStoreResource(model_dir=_env_or("MODEL_DIR", str(base.model_dir))),
        "ea": EAResource(server_url=_env_or("EA_SERVER_URL", ""), api_key=_env_or("EA_API_KEY", "")),
    }


def resources_for(settings: Settings, **overrides: object) -> dict[str, dg.ConfigurableResource]:
    """Resources holding `settings`' values literally (the demo, tests); `overrides` are
    environment variables to lay over the process's for everything else the core reads."""
    return {
        "config": SettingsResource(overrides={k: str(v) for k, v in overrides.items()}),
        "database": DatabaseResource(database_url=settings.database_url),
        "models": ModelStoreResource(model_dir=str(settings.model_dir)),
        "ea": EAResource(server_url=settings.ea_server_url, api_key=settings.ea_api_key),
    }
