"""The configuration table (docs/configuration.md) and ``.env.example``, generated from the declarations.

Tests compare both files with what these functions print, so a variable added to
:class:`~mt5_pipeline.settings.variables.Settings` is documented or the suite fails.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from mt5_pipeline.settings.variables import Settings


@dataclass(frozen=True)
class Var:
    """Documentation of one variable: the README and `.env.example` are checked against these."""

    name: str
    default: str
    meaning: str


def documented_variables() -> list[Var]:
    """Every variable the settings read, with its default and meaning (README / .env.example)."""
    return [Var(f.metadata["env"], f.metadata["default"], f.metadata["meaning"]) for f in fields(Settings)]


# `.env.example` is written for production (docker compose, systemd): these values
# replace the development defaults there. `make demo` / `make dev` need no .env and keep
# the defaults above.
PRODUCTION_EXAMPLE: dict[str, str] = {
    "DATABASE_URL": "postgresql://mt5:CHANGE_ME@127.0.0.1:5432/mt5",
    "MT5_ENV": "production",
    "API_HOST": "0.0.0.0",
}
# What a user must set before the stack starts, in this order at the top of the file.
MUST_SET: dict[str, str] = {
    "API_KEYS": (
        "REQUIRED: your own key(s) for X-API-Key "
        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`); "
        "empty or the seed's example key refuses to start"
    ),
    "EA_API_KEY": "REQUIRED: the key your EA expects in X-API-Key",
    "EA_SERVER_URL": (
        "REQUIRED: your EA's signals URL, e.g. http://192.168.15.18:8080/signals "
        "(or set EA_SERVER_IP / EA_SERVER_PORT below)"
    ),
    "API_PORT": "the port the EA posts candles to (docker compose publishes it on the host)",
}
# Variables of the containers themselves (docker compose), not of the settings.
_COMPOSE_EXAMPLE = """
# ---- docker compose only: the TimescaleDB container and Dagster's PostgreSQL storage (dagster.yaml) ----
# REQUIRED for docker compose: the database password (compose refuses to start without it).
POSTGRES_USER=mt5
POSTGRES_PASSWORD=
POSTGRES_DB=mt5
# Dagster instance storage for production (dagster.yaml); compose derives these from POSTGRES_*.
# DAGSTER_PG_USER=mt5
# DAGSTER_PG_PASSWORD=CHANGE_ME
# DAGSTER_PG_HOST=127.0.0.1
# DAGSTER_PG_DB=mt5
# DAGSTER_PG_PORT=5432
"""


def env_example() -> str:
    """The text of `.env.example`, generated from the fields above (a test compares them)."""
    out = [
        "# mt5-pipeline configuration for production (docker compose, systemd). Copy to .env and",
        "# set the REQUIRED values below; the environment wins over this file. Every variable the",
        "# settings read is listed (a test keeps this file in step with the code): regenerate with",
        '#   python -c \'from mt5_pipeline.settings import env_example; open(".env.example", '
        '"w").write(env_example())\'',
        "# `make demo` and `make dev` need no .env: they run in development mode on SQLite.",
        "",
        "# ---- set these first: keys, the EA's address, the port ----",
    ]
    variables = {v.name: v for v in documented_variables()}
    for name, why in MUST_SET.items():
        out += ["", f"# {why}", f"{name}={PRODUCTION_EXAMPLE.get(name, variables[name].default)}"]
    out += ["", "# ---- the rest have working defaults ----"]
    for var in variables.values():
        if var.name in MUST_SET:
            continue
        default = var.default or "empty"
        out += [
            "",
            f"# {var.meaning} (default: {default})",
            f"{var.name}={PRODUCTION_EXAMPLE.get(var.name, var.default)}",
        ]
    return "\n".join(out) + "\n" + _COMPOSE_EXAMPLE


def config_markdown() -> str:
    """The README's configuration table, generated from the fields above (a test compares them)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for var in documented_variables():
        default = f"`{var.default}`" if var.default else "—"
        rows.append(f"| `{var.name}` | {default} | {var.meaning.replace('|', '/')} |")
    return "\n".join(rows)
