"""The seed's scripts are the `mt5-pipeline` commands run from the project root, whatever
directory they start from: `cd ml && python train_model.py` trains on the project's
database into the project's models, with the project's .env (mt5_pipeline.apps.seed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mt5_pipeline.apps.seed import project_root
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles, minutes_ago
from mt5_pipeline.settings import documented_variables
from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.features import newest_feature
from mt5_pipeline_tests import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A project checkout of its own: setup.py, the seed's folders, a .env, and a database
    with bars at the relative default ./data/mt5.db."""
    root = tmp_path / "project"
    for name in ("ml", "api"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", root / "setup.py")
    (root / "mt5_pipeline").mkdir()  # the package folder marks a checkout (the code itself is installed)
    # Read from the project's .env only if the scripts run from the root.
    (root / ".env").write_text("MODEL_DIR=./models_from_env\nEA_PUSH_ENABLED=false\n")
    url = f"sqlite:///{root / 'data' / 'mt5.db'}"
    (root / "data").mkdir()
    migrate.upgrade(url)
    ingest_candles(url, "EURUSD", "M1", generate_candles(3000, end=minutes_ago(1), with_weekends=False, seed=7))
    return root


def _env() -> dict[str, str]:
    settings = {v.name for v in documented_variables()}
    return {k: v for k, v in os.environ.items() if k not in settings}  # the defaults and .env decide


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=280)


def test_project_root_is_the_checkout_or_none(checkout, tmp_path):
    assert project_root(checkout / "ml" / "train_model.py") == checkout.resolve()
    assert project_root(checkout / "api" / "run_ea_pusher.py") == checkout.resolve()
    # Installed from the wheel: .venv/bin/run_ea_pusher.py has no checkout around it.
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    assert project_root(tmp_path / "venv" / "bin" / "run_ea_pusher.py") is None


def test_the_seed_scripts_use_the_projects_database_models_and_env_from_any_directory(checkout, tmp_path):
    url = f"sqlite:///{checkout / 'data' / 'mt5.db'}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    prepared = _run([str(checkout / "ml" / "prepare_dataset.py")], cwd=elsewhere)
    assert prepared.returncode == 0, prepared.stderr
    assert newest_feature(url, "EURUSD", "M1") is not None

    # The seed's own way: from ml/, with --force (random bars carry no edge to promote).
    trained = _run(["train_model.py", "--force"], cwd=checkout / "ml")
    assert trained.returncode == 0, trained.stderr
    assert (checkout / "models_from_env" / "rf_m1.pkl").is_file()  # the root's .env, root-relative

    pushed = _run(["run_ea_pusher.py", "--once"], cwd=checkout / "api")
    assert pushed.returncode == 0, pushed.stderr

    # Nothing was created relative to where the scripts were started.
    for where in (elsewhere, checkout / "ml", checkout / "api"):
        assert (
            not (where / "data").exists()
            and not (where / "models").exists()
            and not (where / "models_from_env").exists()
        ), where

    # And it is what `mt5-pipeline` sees from the root.
    models = subprocess.run(
        [str(Path(sys.executable).with_name("mt5-pipeline")), "models"],
        cwd=checkout,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert models.returncode == 0, models.stderr
    assert "forced" in models.stdout
