"""The docs cannot drift from the code: README, .env.example, docker compose and systemd."""

import re
from pathlib import Path

import yaml

from mt5_pipeline.settings import config_markdown, documented_variables

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
# Variables of the containers themselves, not of the settings.
INFRA_VARS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "DAGSTER_HOME"} | {f"DAGSTER_PG_{k}" for k in ("USER", "PASSWORD", "HOST", "DB", "PORT")}


def test_readme_shows_the_two_commands_first():
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_setting_is_in_the_readme_table_and_env_example():
    env_example = (ROOT / ".env.example").read_text()
    for var in documented_variables():
        assert f"`{var.name}`" in README, var.name
        assert re.search(rf"^#? ?{var.name}=", env_example, re.M), var.name


def test_readme_table_is_the_generated_one():
    table = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0].strip()
    assert table == config_markdown()


def test_compose_has_the_services_and_the_seed_commands():
    services = COMPOSE["services"]
    assert {"db", "migrate", "api", "dagster-webserver", "dagster-daemon", "ea-pusher", "live-signals", "ml-trainer"} <= set(services)
    assert services["live-signals"]["command"] == "mt5-pipeline live"
    assert services["db"]["image"].startswith("timescale/timescaledb")
    assert services["ea-pusher"]["command"] == "python run_ea_pusher.py"
    assert services["ea-pusher"]["working_dir"] == "/app/api"
    assert (ROOT / "api" / "run_ea_pusher.py").exists()
    assert services["ml-trainer"]["working_dir"] == "/app/ml"
    assert (ROOT / "ml" / "train_model.py").exists()
    assert services["migrate"]["command"] == ["mt5-pipeline", "db", "upgrade"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in services["db"] and "healthcheck" in services["api"]


def test_compose_variables_are_settings_or_infrastructure():
    known = {v.name for v in documented_variables()} | INFRA_VARS
    for name, service in COMPOSE["services"].items():
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=")[0] for e in env]
        unknown = set(keys) - known
        assert not unknown, f"{name}: {unknown}"


def test_seed_pusher_environment_is_as_written():
    env = COMPOSE["services"]["ea-pusher"]["environment"]
    for var in ("EA_SERVER_IP", "EA_SERVER_PORT", "EA_PUSH_INTERVAL", "EA_PUSH_ENABLED"):
        assert var in env


def test_dockerfile_runs_as_non_root_with_a_dependency_layer():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER mt5" in dockerfile
    assert dockerfile.index("COPY setup.py") < dockerfile.index("COPY mt5_pipeline")


def test_systemd_units_exist_for_every_long_running_process():
    units = {p.name for p in (ROOT / "docker" / "systemd").glob("*.service")}
    assert units == {"mt5-api.service", "mt5-ea-pusher.service", "mt5-live-signals.service", "mt5-dagster-daemon.service", "mt5-dagster-webserver.service"}
    for unit in units:
        text = (ROOT / "docker" / "systemd" / unit).read_text()
        assert "ExecStart=" in text and "EnvironmentFile=" in text
