"""The one Dagster resource: the pipeline's `Settings`, configured from the environment.

The Dagster layer reads the same `Settings` as the API and the workers; the resource
holds only what differs per deployment (where the database, the models and the EA are)
so the Dagster UI shows them. Values that come from the environment are passed as
`EnvVar`s, so the UI shows the variable's name, never a password.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mt5_pipeline.settings import Settings, load_settings


class PipelineResource(dg.ConfigurableResource):
    """The core's Settings: the environment, `overrides` on top, then the fields below.

    Production leaves `overrides` empty, so the code location reads the same variables as
    the API and the workers; tests and the demo put their overrides there.
    """

    database_url: str
    model_dir: str
    ea_server_url: str = ""
    ea_api_key: str = ""
    overrides: dict[str, str] = {}

    def settings(self) -> Settings:
        changes: dict = {"database_url": self.database_url, "model_dir": Path(self.model_dir)}
        if self.ea_server_url:
            changes["ea_server_url_override"] = self.ea_server_url
        if self.ea_api_key:
            changes["ea_api_key"] = self.ea_api_key
        return Settings.from_env({**os.environ, **self.overrides}).replace(**changes)


def _env_or(name: str, default: str) -> str | dg.EnvVar:
    return dg.EnvVar(name) if os.environ.get(name) else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The code location's resources, read from the environment when it loads."""
    base = load_settings()
    return {
        "pipeline": PipelineResource(
            database_url=_env_or("DATABASE_URL", base.database_url),
            model_dir=_env_or("MODEL_DIR", str(base.model_dir)),
            ea_server_url=_env_or("EA_SERVER_URL", ""),
            ea_api_key=_env_or("EA_API_KEY", ""),
        )
    }


def resources_for(settings: Settings, **overrides: object) -> dict[str, dg.ConfigurableResource]:
    """Resources holding `settings`' values literally (the demo, tests); `overrides` are
    environment variables to lay over the process's for everything else the core reads."""
    return {
        "pipeline": PipelineResource(
            database_url=settings.database_url,
            model_dir=str(settings.model_dir),
            ea_server_url=settings.ea_server_url,
            ea_api_key=settings.ea_api_key,
            overrides={k: str(v) for k, v in overrides.items()},
        )
    }
