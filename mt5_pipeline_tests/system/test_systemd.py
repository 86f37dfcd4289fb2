"""systemd from a clean machine: `docker/systemd/install.sh` creates what the units name.

The script runs for real into a scratch root (DESTDIR: everything but the user, the
ownership and systemctl, which need root): the checkout at /opt/mt5-pipeline, its .venv,
.env from .env.example, the Dagster instance folder and the units. Then each unit's
ExecStart (and ExecStartPre), WorkingDirectory, EnvironmentFile and DAGSTER_HOME are
checked against those files, and each command runs from its working directory with the
unit's environment after the user's edits to .env: `db upgrade` and Dagster's instance
for real on a fresh PostgreSQL database, `--help` for the long-running ones.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from mt5_pipeline.storage.migrate import head_revision
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.install_support import fresh_database

UNITS = ROOT / "docker" / "systemd"
APP = "/opt/mt5-pipeline"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def parse_unit(path: Path) -> dict[str, list[str]]:
    """Key -> values (Environment= repeats) of a unit file, sections merged."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_the_record_yields_to_the_trade():
    # Dagster's units: a lower CPU weight (their cgroups against the trade's) and a higher
    # niceness (their processes, where the units share a group) than the API, the live
    # workers and the pusher, which keep systemd's defaults (CPUWeight 100, Nice 0).
    units = {p.stem: parse_unit(p) for p in UNITS.glob("*.service")}
    record = {name: keys for name, keys in units.items() if name.startswith("mt5-dagster-")}
    trade = {name: keys for name, keys in units.items() if name not in record}
    assert sorted(record) == ["mt5-dagster-code-server", "mt5-dagster-daemon", "mt5-dagster-webserver"]
    assert sorted(trade) == ["mt5-api", "mt5-ea-pusher", "mt5-live-signals"]
    for name, keys in record.items():
        assert 0 < int(keys["Nice"][0]) <= 19, name
        assert 1 <= int(keys["CPUWeight"][0]) < 100, name
    for name, keys in trade.items():
        assert int(keys.get("Nice", ["0"])[0]) <= 0, name
        assert int(keys.get("CPUWeight", ["100"])[0]) >= 100, name


def test_the_daemon_and_the_webserver_load_the_code_server_s_location():
    # One long-running code server: the daemon and the webserver dial it through
    # workspace.grpc.yaml, after its unit, at the address it binds (the same two variables in
    # the three units). workspace.yaml would have each spawn its own, the daemon a new one
    # every minute.
    server = parse_unit(UNITS / "mt5-dagster-code-server.service")
    [start] = server["ExecStart"]
    assert shlex.split(start)[1:] == ["code-server", "start", "-m", "mt5_pipeline"]
    address = {k: v for k, _, v in (a.partition("=") for a in server["Environment"]) if k.startswith("DAGSTER_CODE")}
    assert address == {"DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": "4000"}
    assert server["Restart"] == ["always"]
    for name in ("mt5-dagster-daemon", "mt5-dagster-webserver"):
        keys = parse_unit(UNITS / f"{name}.service")
        words = shlex.split(keys["ExecStart"][0])
        assert words[words.index("-w") + 1] == f"{APP}/workspace.grpc.yaml", name
        env = {k: v for k, _, v in (a.partition("=") for a in keys["Environment"])}
        assert {k: env.get(k) for k in address} == address, name
        assert "mt5-dagster-code-server.service" in keys["After"][0].split(), name
        assert "mt5-dagster-code-server.service" in keys["Wants"][0].split(), name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("machine")
    # PIP_NO_COMPILE: no .pyc for the test's throwaway venv (saves time, changes nothing else).
    env = {**os.environ, "DESTDIR": str(dest), "PYTHON": sys.executable, "PIP_NO_COMPILE": "1"}
    done = subprocess.run(["sh", str(UNITS / "install.sh")], env=env, capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "systemctl enable --now" in done.stdout
    return dest


def test_the_readme_starts_every_unit_and_the_script_creates_their_user():
    units = sorted(p.stem for p in UNITS.glob("*.service"))
    docs = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    commands = re.findall(r"systemctl enable --now ([\w\- ]+)", docs + (UNITS / "install.sh").read_text())
    assert commands, "no enable command in the docs"
    for command in commands:
        assert sorted(command.split()) == units, command
    script = (UNITS / "install.sh").read_text()
    for unit in UNITS.glob("*.service"):
        assert parse_unit(unit)["User"] == ["mt5"], unit.name
    assert "useradd --system" in script and " mt5" in script


def test_each_unit_names_files_the_install_creates(installed):
    units = sorted((installed / "etc" / "systemd" / "system").glob("*.service"))
    assert [u.name for u in units] == sorted(p.name for p in UNITS.glob("*.service"))
    for unit in units:
        keys = parse_unit(unit)
        workdir = installed / keys["WorkingDirectory"][0].lstrip("/")
        assert workdir.is_dir(), f"{unit.name}: WorkingDirectory {keys['WorkingDirectory'][0]}"
        [envfile] = keys["EnvironmentFile"]
        env_path = installed / envfile.lstrip("-/")
        assert env_path.is_file(), f"{unit.name}: EnvironmentFile {envfile}"
        assert stat.S_IMODE(env_path.stat().st_mode) == 0o600, "the .env holds keys: mode 600"
        for line in keys.get("ExecStartPre", []) + keys["ExecStart"]:
            words = shlex.split(line)
            exe = installed / words[0].lstrip("/")
            assert exe.is_file() and os.access(exe, os.X_OK), f"{unit.name}: {words[0]}"
            for word in words[1:]:
                if word.startswith("/"):
                    assert (installed / word.lstrip("/")).exists(), f"{unit.name}: {word}"
                elif word.endswith(".py"):
                    assert (workdir / word).is_file(), f"{unit.name}: {word} from {keys['WorkingDirectory'][0]}"
        for assignment in keys.get("Environment", []):
            name, _, value = assignment.partition("=")
            if name == "DAGSTER_HOME":
                assert (installed / value.lstrip("/") / "dagster.yaml").is_file(), (
                    f"{unit.name}: no instance file in {value}"
                )


def _configure(installed: Path, database_url: str) -> None:
    """What the user does after the script: set the REQUIRED values and DAGSTER_PG_*."""
    url = make_url(database_url)
    env_path = installed / APP.lstrip("/") / ".env"
    text = env_path.read_text()
    values = {
        "API_KEYS": "systemd-test-api-key",
        "EA_API_KEY": "systemd-test-ea-key",
        "EA_SERVER_URL": "http://127.0.0.1:9/signals",
        "DATABASE_URL": database_url,
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_DB": url.database or "",
        "DAGSTER_PG_PORT": str(url.port or 5432),
    }
    for name, value in values.items():
        text, n = re.subn(rf"^#? ?{name}=.*$", f"{name}={value}", text, flags=re.M)
        assert n == 1, f".env.example has no line for {name}"
    env_path.write_text(text)


def _unit_env(installed: Path, keys: dict[str, list[str]]) -> dict[str, str]:
    # systemd: Environment= first, then EnvironmentFile= wins.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "TMPDIR")}
    for assignment in keys.get("Environment", []):
        name, _, value = assignment.partition("=")
        env[name] = str(installed / value.lstrip("/")) if value.startswith(APP) else value
    env.update(
        {k: v for k, v in dotenv_values(installed / keys["EnvironmentFile"][0].lstrip("-/")).items() if v is not None}
    )
    return env


def _command(installed: Path, line: str) -> list[str]:
    return [str(installed / w.lstrip("/")) if w.startswith(APP) else w for w in shlex.split(line)]


def test_each_unit_command_runs_with_its_environment(installed):
    with fresh_database("mt5_systemd") as url:
        _configure(installed, url)
        units = {u.stem: parse_unit(u) for u in (installed / "etc" / "systemd" / "system").glob("*.service")}

        api = units["mt5-api"]
        [pre] = api["ExecStartPre"]
        migrated = subprocess.run(
            _command(installed, pre),
            cwd=installed / api["WorkingDirectory"][0].lstrip("/"),
            env=_unit_env(installed, api),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert migrated.returncode == 0, migrated.stderr
        assert head_revision() in migrated.stdout

        # The Dagster units' instance: dagster.yaml in DAGSTER_HOME on PostgreSQL from DAGSTER_PG_*.
        daemon = units["mt5-dagster-daemon"]
        dagster = installed / APP.lstrip("/") / ".venv" / "bin" / "dagster"
        info = subprocess.run(
            [str(dagster), "instance", "info"],
            cwd=installed / daemon["WorkingDirectory"][0].lstrip("/"),
            env=_unit_env(installed, daemon),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert info.returncode == 0, info.stderr[-3000:]
        assert "PostgresRunStorage" in info.stdout, info.stdout[-3000:]

        for name, keys in sorted(units.items()):
            [line] = keys["ExecStart"]
            helped = subprocess.run(
                [*_command(installed, line), "--help"],
                cwd=installed / keys["WorkingDirectory"][0].lstrip("/"),
                env=_unit_env(installed, keys),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert helped.returncode == 0, f"{name}: {helped.stderr[-3000:]}"
            assert "usage" in helped.stdout.lower(), name
