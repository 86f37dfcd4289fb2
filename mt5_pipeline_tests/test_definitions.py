"""The code location: loadable, validated by Dagster's own CLI, and the lineage we promise."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from mt5_pipeline.definitions import build_defs
from mt5_pipeline.settings import Settings
from mt5_pipeline_tests import ROOT


def _defs(**env) -> dg.Definitions:
    return build_defs(Settings.from_env({k: str(v) for k, v in env.items()}, env_file=None))


def test_package_exposes_defs():
    import mt5_pipeline

    assert isinstance(mt5_pipeline.defs, dg.Definitions)
    dg.Definitions.validate_loadable(mt5_pipeline.defs)


def test_lineage_is_candles_features_model_signals():
    graph = _defs().resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"candles", "features_m1", "rf_m1", "signals", "trades", "live_performance"}
    edges = {
        (parent.to_user_string(), key.to_user_string())
        for key in graph.get_all_asset_keys()
        for parent in graph.get(key).parent_keys
    }
    assert edges == {
        ("candles", "features_m1"),
        ("features_m1", "rf_m1"),
        ("features_m1", "signals"),
        ("rf_m1", "signals"),
        # The loop closed (issue 20): the EA trades the signals, the trades come back.
        ("signals", "trades"),
        ("trades", "live_performance"),
        ("rf_m1", "live_performance"),
    }
    assert not graph.get(dg.AssetKey("candles")).is_materializable  # written by the EA, observed by Dagster
    assert not graph.get(dg.AssetKey("trades")).is_materializable  # written through POST /ea/trades
    assert graph.get(dg.AssetKey("features_m1")).partitions_def.name == "symbols"
    assert graph.get(dg.AssetKey("rf_m1")).partitions_def is None  # one model shared by every symbol


def test_sensors_schedule_and_jobs_are_named_as_promised():
    defs = _defs(EA_PUSH_INTERVAL=30)
    repo = defs.get_repository_def()
    assert {s.name for s in repo.sensor_defs} == {"new_candles_sensor", "ea_push_sensor"}
    assert repo.get_sensor_def("ea_push_sensor").minimum_interval_seconds == 30
    schedule = repo.get_schedule_def("rf_m1_retrain_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert repo.get_job("ea_push_job").tags.get("mt5_pipeline/ea_push") == "push"


def test_autostart_setting_controls_default_status():
    on = _defs(DAGSTER_AUTOSTART="true").get_repository_def()
    off = _defs(DAGSTER_AUTOSTART="false").get_repository_def()
    assert on.get_sensor_def("ea_push_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert off.get_sensor_def("new_candles_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert off.get_schedule_def("rf_m1_retrain_schedule").default_status == dg.DefaultScheduleStatus.STOPPED


def test_push_interval_and_retrain_cron_come_from_settings():
    repo = _defs(EA_PUSH_INTERVAL=15, RETRAIN_CRON="30 */6 * * *").get_repository_def()
    assert repo.get_sensor_def("ea_push_sensor").minimum_interval_seconds == 15
    assert repo.get_schedule_def("rf_m1_retrain_schedule").cron_schedule == "30 */6 * * *"


def test_every_asset_has_its_checks():
    graph = _defs().resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    by_asset = {a for a, _ in checks}
    assert by_asset == {"candles", "features_m1", "rf_m1", "signals", "live_performance"}
    assert ("live_performance", "live_performance_plausible") in checks
    assert ("signals", "signals_none_pending_past_expiry") in checks


def test_dagster_cli_validates_the_code_location(tmp_path):
    # DAGSTER_HOME points at an empty folder: the repo's dagster.yaml is the production
    # (PostgreSQL) instance and needs DAGSTER_PG_* variables.
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "mt5_pipeline"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_workspace_yaml_loads_the_module():
    import yaml

    spec = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert spec["load_from"][0]["python_module"]["module_name"] == "mt5_pipeline"
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    for storage in ("event_log_storage", "run_storage", "schedule_storage"):
        assert instance[storage]["config"]["postgres_db"]["scheme"] == "postgresql+psycopg2", storage
    limits = instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": "mt5_pipeline/ea_push", "limit": 1} in limits


def test_production_dagster_yaml_stores_runs_in_postgres(pg_server_url, monkeypatch, tmp_path):
    """The repository's dagster.yaml, pointed at the test server through DAGSTER_PG_*."""
    import shutil

    from sqlalchemy.engine import make_url

    # A copy in a temp DAGSTER_HOME: the instance keeps run artifacts beside its config.
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    url = make_url(pg_server_url)
    for name, value in {
        "USER": url.username,
        "PASSWORD": url.password or "",
        "HOST": url.host,
        "DB": url.database,
        "PORT": str(url.port or 5432),
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)

    @dg.asset
    def probe() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        from dagster_postgres.run_storage import PostgresRunStorage

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        result = dg.materialize([probe], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every process under ``pid``."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for child in map(int, children):
            try:
                out[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.update(_descendants(child))
            except FileNotFoundError:  # a run or a probe that has already ended
                pass
    return out


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (Dagster stops cleanly on it), then SIGKILL the whole session if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(120)
def test_deployments_load_the_location_from_a_running_code_server(tmp_path):
    """workspace.grpc.yaml as the compose file and the systemd units run it: one
    `dagster code-server start -m mt5_pipeline` serves the location, and the daemon evaluates
    the sensors from there without a code server of its own. (With workspace.yaml's
    python_module the daemon spawns one, and a new one after every workspace refresh.)"""
    from mt5_pipeline.apps.servers import free_port
    from mt5_pipeline.storage import migrate
    from mt5_pipeline_tests.postgres_support import new_database

    with new_database("mt5_codeserver") as url:
        # Its own database: the sensors run for real and must not see other tests' rows.
        database_url = url.render_as_string(hide_password=False)
        migrate.upgrade(database_url)
        shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DAGSTER_HOME": str(tmp_path),
            "DAGSTER_PG_USER": url.username or "postgres",
            "DAGSTER_PG_PASSWORD": url.password or "",
            "DAGSTER_PG_HOST": url.host or "127.0.0.1",
            "DAGSTER_PG_DB": url.database or "",
            "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_AUTOSTART": "true",
            # What `code-server start` binds and the workspace file dials, as in the units.
            "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
            "DAGSTER_CODE_SERVER_PORT": str(port),
        }
        bin_dir = Path(sys.executable).parent
        server_log, daemon_log = tmp_path / "code-server.log", tmp_path / "daemon.log"
        server = subprocess.Popen(
            [str(bin_dir / "dagster"), "code-server", "start", "-m", "mt5_pipeline"],
            cwd=ROOT, env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        daemon = None
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, server_log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the code server never opened its port"
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            code = [pid for pid, cmd in _descendants(server.pid).items() if "api grpc" in cmd]
            assert len(code) == 1, "the proxy loads the code in one child process"

            daemon = subprocess.Popen(
                [str(bin_dir / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.grpc.yaml")],
                cwd=ROOT, env=env, stdout=daemon_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            # A sensor evaluated: the daemon has the location, and its sensors answer.
            deadline = time.monotonic() + 60
            while "Sensor new_candles_sensor skipped" not in daemon_log.read_text():
                assert daemon.poll() is None, daemon_log.read_text()[-3000:]
                assert time.monotonic() < deadline, daemon_log.read_text()[-3000:]
                time.sleep(0.2)
            spawned = [cmd for cmd in _descendants(daemon.pid).values() if "api grpc" in cmd or "code-server" in cmd]
            assert spawned == [], "the daemon started a code server of its own"
            assert "no M1 candles ingested yet" in daemon_log.read_text()  # the sensor ran, on this database
            # The code server answered from the process it started with.
            assert [pid for pid, cmd in _descendants(server.pid).items() if "api grpc" in cmd] == code
        finally:
            if daemon is not None:
                _stop(daemon)
            _stop(server)
