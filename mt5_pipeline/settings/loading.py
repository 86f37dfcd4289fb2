"""Reading the variables: the environment over an optional ``.env``, every bad value named at once."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import Field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """One or more environment variables are invalid; the message names each."""


def parse_environment(
    declared: Iterable[Field[Any]], environ: Mapping[str, str] | None, env_file: str | Path | None
) -> dict[str, Any]:
    """Each declared field's value, parsed from its variable (or its default); SettingsError
    naming every variable that did not parse."""
    values = dict(read_env_file(env_file)) if env_file else {}
    values.update(os.environ if environ is None else environ)
    kwargs: dict[str, Any] = {}
    errors: list[str] = []
    for f in declared:
        meta = f.metadata
        raw = values.get(meta["env"], meta["default"])
        try:
            kwargs[f.name] = meta["parse"](raw)
        except ValueError as exc:
            errors.append(f"{meta['env']}: {exc}")
    if errors:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))
    return kwargs


def read_env_file(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # only when a .env exists: most runs have none

    return {k: v for k, v in dotenv_values(path).items() if v is not None}
