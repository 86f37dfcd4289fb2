"""The Dagster instances (production's dagster.yaml, the embedded one) run only the daemons the
project uses: no asset daemon and no freshness daemon, because no asset needs them."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from mt5_pipeline.definitions import build_defs
from mt5_pipeline.orchestration import pooled_storage
from mt5_pipeline.orchestration.instance import ensure_local_dagster_home
from mt5_pipeline.settings import Settings
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.install_support import fresh_database

DAEMONS = {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL"}


def test_the_embedded_instance_runs_only_the_daemons_the_project_uses(tmp_path):
    home = ensure_local_dagster_home(tmp_path / "dagster")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert set(instance.get_required_daemon_types()) == DAEMONS


@contextmanager
def _production_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """The repository's dagster.yaml on a fresh PostgreSQL database, as the units and compose run it."""
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
            yield instance


def test_the_production_instance_runs_only_the_daemons_the_project_uses(tmp_path, monkeypatch):
    with _production_instance(tmp_path, monkeypatch) as instance:
        assert set(instance.get_required_daemon_types()) == DAEMONS


def test_the_production_instance_keeps_its_postgres_connections(tmp_path, monkeypatch):
    # Out of the box dagster-postgres connects anew for every statement; the daemon records
    # three run-less events per live bar. Here 60 events open no more connections than the pool holds.
    with _production_instance(tmp_path, monkeypatch) as instance:
        storages = (instance.event_log_storage, instance.run_storage, instance.schedule_storage)
        assert [type(s) for s in storages] == [
            pooled_storage.PooledPostgresEventLogStorage,
            pooled_storage.PooledPostgresRunStorage,
            pooled_storage.PooledPostgresScheduleStorage,
        ]
        connects: list[object] = []
        for storage in storages:
            event.listen(storage._engine, "connect", lambda *_: connects.append(1))
        for i in range(60):
            instance.report_runless_asset_event(dg.AssetMaterialization("signals", partition=f"S{i % 7}"))
        instance.get_runs(limit=5)
        instance.all_instigator_state()
        assert 1 <= len(connects) <= 3 * (pooled_storage.POOL_SIZE + pooled_storage.MAX_OVERFLOW)
        recorded = instance.fetch_materializations(dg.AssetKey("signals"), limit=100).records
        assert len(recorded) == 60
        assert {r.asset_materialization.partition for r in recorded if r.asset_materialization} == {
            f"S{i}" for i in range(7)
        }
        # A connection the server dropped is replaced before it is lent, not failed on.
        engine = instance.event_log_storage._engine
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        killer = create_engine(instance.event_log_storage.postgres_url, poolclass=NullPool)
        with killer.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar_one()
        killer.dispose()
        instance.report_runless_asset_event(dg.AssetMaterialization("signals", partition="after_drop"))
        assert instance.fetch_materializations(dg.AssetKey("signals"), limit=1).records[0].partition_key == "after_drop"


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
