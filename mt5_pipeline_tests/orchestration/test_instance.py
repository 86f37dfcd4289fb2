"""The Dagster instances (production's dagster.yaml, the embedded one) run only the daemons the
project uses: no asset daemon and no freshness daemon, because no asset needs them."""

import dagster as dg
import pytest
from sqlalchemy.engine import make_url

from mt5_pipeline.definitions import build_defs
from mt5_pipeline.orchestration.instance import ensure_local_dagster_home
from mt5_pipeline.settings import Settings
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.install_support import fresh_database

DAEMONS = {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL"}


def test_the_embedded_instance_runs_only_the_daemons_the_project_uses(tmp_path):
    home = ensure_local_dagster_home(tmp_path / "dagster")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert set(instance.get_required_daemon_types()) == DAEMONS


def test_the_production_instance_runs_only_the_daemons_the_project_uses(tmp_path, monkeypatch):
    # The repository's dagster.yaml on a fresh PostgreSQL database, as the units and compose run it.
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with fresh_database("mt5_instance") as url:
        parts = make_url(url)
        for name, value in {
            "DAGSTER_PG_USER": parts.username or "postgres",
            "DAGSTER_PG_PASSWORD": parts.password or "",
            "DAGSTER_PG_HOST": parts.host or "127.0.0.1",
            "DAGSTER_PG_DB": parts.database or "",
            "DAGSTER_PG_PORT": str(parts.port or 5432),
        }.items():
            monkeypatch.setenv(name, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert set(instance.get_required_daemon_types()) == DAEMONS


@pytest.mark.parametrize("timeframes", ["M1", "M1,M5"])
def test_no_asset_needs_the_asset_or_the_freshness_daemon(timeframes):
    defs = build_defs(Settings.from_env({"TIMEFRAMES": timeframes}, env_file=None))
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.automation_condition is None, key
        assert getattr(node, "freshness_policy", None) is None, key
    for sensor in defs.get_repository_def().sensor_defs:
        assert not isinstance(sensor, dg.AutomationConditionSensorDefinition), sensor.name
