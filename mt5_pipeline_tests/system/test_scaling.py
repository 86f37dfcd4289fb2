"""Past one machine: the compose service scales, and the Docker run launcher config is valid."""

from __future__ import annotations

import pytest
import yaml

from mt5_pipeline_tests import ROOT


def test_the_live_worker_service_scales():
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    live = compose["services"]["live-signals"]
    # A fixed container_name makes `docker compose up --scale live-signals=N` refuse.
    assert "container_name" not in live
    assert "--scale live-signals=" in (ROOT / "docs" / "scaling.md").read_text()


def test_the_docker_run_launcher_instance_is_valid_dagster_config():
    pytest.importorskip("dagster_docker", reason="pip install .[docker]")
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(ROOT / "docker"), "dagster-docker.yaml")
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    # The storage and run queue are the production instance's.
    production = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    for storage in ("event_log_storage", "run_storage", "schedule_storage"):
        assert config[storage] == production[storage], storage
    assert config["run_coordinator"] == production["run_coordinator"]
    override = yaml.safe_load((ROOT / "docker" / "docker-compose.run-launcher.yml").read_text())
    for service in ("dagster-code-server", "dagster-webserver", "dagster-daemon"):
        volumes = override["services"][service]["volumes"]
        assert "./dagster-docker.yaml:/opt/dagster/home/dagster.yaml:ro" in volumes
    # Only what launches runs reaches the Docker engine.
    assert not any("docker.sock" in v for v in override["services"]["dagster-code-server"]["volumes"])


def test_a_bad_run_launcher_config_is_refused():
    pytest.importorskip("dagster_docker", reason="pip install .[docker]")
    from dagster._config import process_config
    from dagster_docker import DockerRunLauncher

    good = yaml.safe_load((ROOT / "docker" / "dagster-docker.yaml").read_text())["run_launcher"]["config"]
    assert process_config(DockerRunLauncher.config_type(), good).success
    assert not process_config(DockerRunLauncher.config_type(), {**good, "imagee": "typo"}).success
