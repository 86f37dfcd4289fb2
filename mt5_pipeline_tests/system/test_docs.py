"""The docs cannot drift from the code: README, docs/, .env.example, docker compose and systemd."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from mt5_pipeline.settings import (
    DEV_API_KEY,
    MUST_SET,
    Settings,
    SettingsError,
    config_markdown,
    documented_variables,
    env_example,
)
from mt5_pipeline_tests import ROOT

README = (ROOT / "README.md").read_text()
# The reference parts live in docs/ (the README links them): the configuration table, production.
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
PRODUCTION = (ROOT / "docs" / "production.md").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
# Variables of the containers themselves, not of the settings.
INFRA_VARS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "DAGSTER_HOME"} | {
    f"DAGSTER_PG_{k}" for k in ("USER", "PASSWORD", "HOST", "DB", "PORT")
}
# Dagster's own: the code server's address (`dagster code-server start` and workspace.grpc.yaml).
INFRA_VARS |= {"DAGSTER_CODE_SERVER_HOST", "DAGSTER_CODE_SERVER_PORT"}
INFRA_PREFIXES = ("GF_",)  # Grafana's own settings


def test_readme_shows_the_two_commands_first():
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_setting_is_in_the_configuration_table_and_env_example():
    env_example = (ROOT / ".env.example").read_text()
    for var in documented_variables():
        assert f"`{var.name}`" in CONFIGURATION, var.name
        assert re.search(rf"^#? ?{var.name}=", env_example, re.M), var.name


def test_configuration_table_is_the_generated_one():
    # Regenerate: python -c 'from mt5_pipeline.settings import config_markdown; print(config_markdown())'
    # and paste between the markers of docs/configuration.md.
    table = CONFIGURATION.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0].strip()
    assert table == config_markdown()
    assert "docs/configuration.md" in README


def test_compose_has_the_services_and_the_seed_commands():
    services = COMPOSE["services"]
    assert {
        "db",
        "migrate",
        "api",
        "dagster-code-server",
        "dagster-webserver",
        "dagster-daemon",
        "ea-pusher",
        "live-signals",
        "ml-trainer",
    } <= set(services)
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


def test_no_long_running_service_inherits_the_apis_health_check():
    # The image's HEALTHCHECK asks the API's /health on its port: a container of the image
    # that serves no API (a worker, the daemon) would be "unhealthy" for as long as it runs.
    assert "18001/health" in (ROOT / "docker" / "Dockerfile").read_text()
    services = COMPOSE["services"]
    for name, service in services.items():
        if service.get("image") != "mt5-pipeline:latest" or service.get("restart") == "no":
            continue
        check = service.get("healthcheck")
        assert check is not None, f"{name} inherits the image's check of the API's /health"
        serves_api = "serve" in " ".join(
            service["command"] if isinstance(service["command"], list) else [service["command"]]
        )
        assert check.get("disable") or serves_api or "18001" not in " ".join(check["test"]), name


def test_compose_variables_are_settings_or_infrastructure():
    known = {v.name for v in documented_variables()} | INFRA_VARS
    for name, service in COMPOSE["services"].items():
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=")[0] for e in env]
        unknown = {k for k in set(keys) - known if not k.startswith(INFRA_PREFIXES)}
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
    assert units == {
        "mt5-api.service",
        "mt5-ea-pusher.service",
        "mt5-live-signals.service",
        "mt5-dagster-code-server.service",
        "mt5-dagster-daemon.service",
        "mt5-dagster-webserver.service",
    }
    for unit in units:
        text = (ROOT / "docker" / "systemd" / unit).read_text()
        assert "ExecStart=" in text and "EnvironmentFile=" in text


# ---- production by default where it is production ------------------------------------------

SYSTEMD = {p.name: p.read_text() for p in (ROOT / "docker" / "systemd").glob("*.service")}
# The services that run the project's image (db, Prometheus and Grafana run their own).
APP_SERVICES = {
    name
    for name, service in COMPOSE["services"].items()
    if (service.get("build") or {}).get("dockerfile") == "docker/Dockerfile"
}


def test_env_example_is_the_generated_production_one():
    assert (ROOT / ".env.example").read_text() == env_example(), "regenerate .env.example (see its first lines)"
    values = dotenv_values(ROOT / ".env.example")
    assert values["MT5_ENV"] == "production" and values["API_KEYS"] == "" and values["EA_API_KEY"] == ""
    first = [
        line.split("=")[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ][: len(MUST_SET)]
    assert first == list(MUST_SET)  # what a user must set comes first


def test_the_env_example_as_copied_refuses_to_start_naming_what_to_set():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({}, env_file=ROOT / ".env.example")
    assert "API_KEYS: must be set" in str(err.value) and "EA_API_KEY: must be set" in str(err.value)
    with pytest.raises(SettingsError, match="API_KEYS: the seed's example key"):
        Settings.from_env({"API_KEYS": DEV_API_KEY, "EA_API_KEY": "ea-key"}, env_file=ROOT / ".env.example")
    ready = Settings.from_env({"API_KEYS": "own-key", "EA_API_KEY": "ea-key"}, env_file=ROOT / ".env.example")
    assert ready.mt5_env == "production" and ready.effective_api_keys == ("own-key",)


def test_cp_env_example_then_db_upgrade_says_which_variable_to_set(tmp_path):
    # What the compose stack's one-shot `migrate` (and every other service) does first.
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    env = {k: v for k, v in os.environ.items() if k not in {v.name for v in documented_variables()}}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'mt5.db'}"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mt5-pipeline")), "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "API_KEYS: must be set when MT5_ENV=production" in done.stderr and "EA_API_KEY" in done.stderr
    assert not (tmp_path / "mt5.db").exists()


def test_compose_runs_every_service_in_production_and_requires_the_keys():
    for name in APP_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        assert env["MT5_ENV"] == "production", name
        # ${VAR:?message}: compose refuses to start while the variable is unset.
        assert env["API_KEYS"].startswith("${API_KEYS:?"), name
        assert env["EA_API_KEY"].startswith("${EA_API_KEY:?"), name


def test_compose_publishes_dagster_on_loopback_only():
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            published = str(port)
            if published.endswith(":3000"):
                assert published.startswith("127.0.0.1:"), (
                    f"{name} publishes the Dagster UI beyond the host: {published}"
                )
    assert COMPOSE["services"]["dagster-webserver"]["ports"] == ["127.0.0.1:3000:3000"]


def test_compose_gives_the_record_less_cpu_weight_than_the_trade():
    # cpu_shares weighs each container's cgroup when the cores are contended (Docker's
    # default 1024): Dagster's services below the API, the live workers and the pusher.
    services = COMPOSE["services"]
    for name in ("dagster-code-server", "dagster-webserver", "dagster-daemon"):
        assert 2 <= services[name]["cpu_shares"] < 1024, name
    for name in ("api", "live-signals", "ea-pusher"):
        assert services[name].get("cpu_shares", 1024) >= 1024, name
    # The merge kept everything else of the app's anchor.
    assert services["dagster-daemon"]["environment"]["MT5_ENV"] == "production"
    assert services["dagster-daemon"]["image"] == services["api"]["image"]


def test_compose_serves_the_code_location_from_one_code_server():
    # The daemon and the webserver load the location over gRPC from dagster-code-server,
    # which starts first; with /app/workspace.yaml each would spawn a code server of its
    # own, the daemon a new one every minute.
    services = COMPOSE["services"]
    server = services["dagster-code-server"]
    assert server["command"] == ["dagster", "code-server", "start", "-m", "mt5_pipeline", "-h", "0.0.0.0", "-p", "4000"]
    assert "ports" not in server, "the gRPC API has no authentication: the compose network only"
    assert server["image"] == services["api"]["image"]
    assert "models:/models" in server["volumes"]  # the runs it launches read and write the models
    assert "4000" in " ".join(server["healthcheck"]["test"])
    for name in ("dagster-webserver", "dagster-daemon"):
        service = services[name]
        command = service["command"]
        assert command[command.index("-w") + 1] == "/app/workspace.grpc.yaml", name
        assert service["depends_on"]["dagster-code-server"] == {"condition": "service_healthy"}, name
        env = service["environment"]
        assert (env["DAGSTER_CODE_SERVER_HOST"], env["DAGSTER_CODE_SERVER_PORT"]) == ("dagster-code-server", "4000")
    workspace = yaml.safe_load((ROOT / "workspace.grpc.yaml").read_text())
    [location] = workspace["load_from"]
    assert location["grpc_server"] == {
        "host": {"env": "DAGSTER_CODE_SERVER_HOST"},
        "port": {"env": "DAGSTER_CODE_SERVER_PORT"},
        "location_name": "mt5_pipeline",
    }
    assert "workspace.grpc.yaml" in (ROOT / "docker" / "Dockerfile").read_text()


def test_systemd_units_run_in_production_and_dagster_on_loopback():
    for name, text in SYSTEMD.items():
        assert "Environment=MT5_ENV=production" in text, name
    webserver = next(
        line for line in SYSTEMD["mt5-dagster-webserver.service"].splitlines() if line.startswith("ExecStart=")
    )
    assert " -h 127.0.0.1 " in webserver
    # The code server's gRPC API has no authentication either: loopback only.
    assert "Environment=DAGSTER_CODE_SERVER_HOST=127.0.0.1" in SYSTEMD["mt5-dagster-code-server.service"]


def test_production_page_starts_from_what_to_set():
    section = PRODUCTION.split("# Going to production")[1].split("\n## ")[0]
    head = section.split("- **docker compose**")[0]
    for name in MUST_SET:
        assert f"`{name}`" in head, name
    assert "basic_auth" in section or "auth_basic" in section  # the reverse proxy in front of Dagster


def test_the_app_services_are_found():
    assert {"migrate", "api", "ea-pusher", "live-signals"} <= APP_SERVICES  # the checks above are not vacuous


# ---- the README a trader follows ---------------------------------------------------------------

DOC_PAGES = {ROOT / "README.md": README, **{p: p.read_text() for p in (ROOT / "docs").glob("*.md")}}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_link_in_the_readme_and_docs_resolves():
    checked = 0
    for page, text in DOC_PAGES.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            assert where.exists(), f"{page.name}: link to a missing {target}"
            if anchor:
                assert where.suffix == ".md", f"{page.name}: {target}"
                assert anchor in _anchors(where.read_text()), f"{page.name}: no heading for #{anchor} in {where.name}"
            checked += 1
    assert checked > 30


def test_the_first_screen_says_what_it_is_and_the_risk():
    first = "\n".join(README.splitlines()[:30])
    assert "demo account" in first.lower()
    assert "docs/benchmarks.md#on-real-market-bars" in first  # the honest model results
    assert "## Contents" in README.split("## Try it")[0]


def _troubleshooting() -> str:
    return README.split("## Troubleshooting")[1].split("\n## ")[0]


def _answers_in_the_code() -> set[str]:
    """Every reason a user can be answered: the signal outcomes, the API's error reasons,
    the delivery states, the bridge's refusals."""
    code = ROOT / "mt5_pipeline"
    signals = "".join(p.read_text() for p in sorted((code / "signals").glob("*.py")))
    routes = (code / "api" / "routes.py").read_text()
    bridge = (code / "bridge" / "executor.py").read_text()
    found = set(re.findall(r'GenerateResult\("(\w+)"', signals))
    found |= set(re.findall(r'"reason": "(\w+)"', routes + bridge))
    found |= {"outage", "config_error"}  # ea_delivery in /health (mt5_pipeline.delivery.breaker)
    breaker = (code / "delivery" / "breaker.py").read_text()
    assert all(f'"{state}"' in breaker for state in ("outage", "config_error"))
    return found - {"queued"}


def test_one_troubleshooting_entry_per_answer_a_user_can_get():
    answers = _answers_in_the_code()
    assert {
        "too_late",
        "stale_bar",
        "unknown_pip_size",
        "no_model",
        "stale_model",
        "model_mismatch",
        "neutral",
        "expired",
    } <= answers
    section = _troubleshooting()
    for answer in sorted(answers):
        assert f"`{answer}`" in section or f'"{answer}"' in section, f"no troubleshooting entry for {answer}"
    for status in ("EXPIRED", "FAILED", "REJECTED"):
        assert f"`{status}`" in section, status
    # train --force is not a fix: say what it does.
    assert "--force" in section and "rejected model the one that trades" in section


def test_the_quick_start_names_ports_modes_and_ends_at_a_demo_order():
    start = README.split("## Quick start with a real terminal")[1].split("\n## ")[0]
    for needle in (
        "18001",
        "8080",
        "push",
        "pull",
        "BRIDGE_API_URL",
        "EA_API_KEY",
        "API_KEYS",
        "test-connection",
        "demo order",
        "clock",
    ):
        assert needle.lower() in start.lower(), needle
    checklist = start.split("### First-day checklist")[1]
    steps = re.findall(r"^(\d+)\. ", checklist, re.M)
    assert steps == [str(i) for i in range(1, len(steps) + 1)] and len(steps) >= 8


def test_a_licence_is_declared():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License")
    assert 'license="MIT"' in (ROOT / "setup.py").read_text()
    assert "Upgrading" in README and "## Upgrading" in README
