"""The package works installed from its wheel, not only as the editable install `make` uses.

The wheel is built from a copy of the sources (so nothing outside what the build packs
can help), installed with --no-deps into a fresh venv whose own site-packages come
first; the project venv's site-packages are appended after them only to lend the
third-party dependencies (no network). Its editable-install hooks are .pth files,
which Python does not run from a directory added that way, so `mt5_pipeline` can only
come from the wheel, and the test checks that it does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mt5_pipeline.storage.migrate import head_revision
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.install_support import fresh_database

pytestmark = pytest.mark.slow


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=180, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mt5_pipeline", "api"):  # api/ holds only the seed's script
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # --no-build-isolation: build with the setuptools already installed (no download).
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(work / "dist"),
        ]
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((work / "dist").glob("mt5_pipeline-*.whl"))

    venv = work / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    python = venv / "bin" / "python"
    # pip from this venv installs into the new one (--python): no pip download there.
    done = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
    )
    assert done.returncode == 0, done.stderr
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "PYTHON", "MODEL_DIR"))}
    env["MODEL_DIR"] = str(work / "models")
    return {
        "build_log": built.stdout + built.stderr,
        "wheel": wheel,
        "python": python,
        "cli": venv / "bin" / "mt5-pipeline",
        "site": site,
        "env": env,
        "cwd": work,
    }


def test_the_build_leaves_no_package_out(installed):
    assert "would be ignored" not in installed["build_log"]
    assert "is absent from the `packages` configuration" not in installed["build_log"]
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    migrations = ROOT / "mt5_pipeline" / "storage" / "migrations"
    needed = ["env.py", "script.py.mako", *(f"versions/{p.name}" for p in (migrations / "versions").glob("*.py"))]
    for name in needed:
        assert f"mt5_pipeline/storage/migrations/{name}" in names, name
    assert not any("__pycache__" in n or n.startswith(("mt5_pipeline_tests/", "api/")) for n in names)
    assert "mt5_pipeline/api/main.py" in names
    assert any(n.endswith(".data/scripts/run_ea_pusher.py") for n in names), "the seed's worker script"


def test_the_installed_package_is_the_wheel(installed):
    where = _run(
        [
            str(installed["python"]),
            "-c",
            "import mt5_pipeline, mt5_pipeline.api.main; print(mt5_pipeline.__file__); "
            "print(mt5_pipeline.api.main.__file__)",
        ],
        env=installed["env"],
        cwd=installed["cwd"],
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(installed["site"]), line
    helped = _run([str(installed["cli"]), "--help"], env=installed["env"], cwd=installed["cwd"])
    assert helped.returncode == 0 and "db" in helped.stdout and "serve" in helped.stdout


def test_the_seed_worker_script_runs_from_the_wheel(installed, tmp_path):
    script = installed["cli"].with_name("run_ea_pusher.py")
    env = {**installed["env"], "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "EA_PUSH_ENABLED": "false"}
    helped = _run([str(installed["python"]), str(script), "--help"], env=env, cwd=installed["cwd"])
    assert helped.returncode == 0 and "--once" in helped.stdout, helped.stderr


def test_db_upgrade_from_the_wheel_on_sqlite(installed, tmp_path):
    env = {**installed["env"], "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    done = _run([str(installed["cli"]), "db", "upgrade"], env=env, cwd=installed["cwd"])
    assert done.returncode == 0, done.stderr
    assert f"migrated empty -> {head_revision()}" in done.stdout


def test_db_upgrade_from_the_wheel_on_postgresql(installed):
    with fresh_database("mt5_wheel") as url:
        done = _run(
            [str(installed["cli"]), "db", "upgrade"],
            env={**installed["env"], "DATABASE_URL": url},
            cwd=installed["cwd"],
        )
        assert done.returncode == 0, done.stderr
        assert f"migrated empty -> {head_revision()}" in done.stdout
