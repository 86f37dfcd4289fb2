"""The command line as a user runs it: real processes, a temp SQLite database."""

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline_tests import ROOT

CLI = str(Path(sys.executable).with_name("mt5-pipeline"))


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MODEL_DIR", "RF_"))}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'mt5.db'}", "MODEL_DIR": str(tmp_path / "models"), **extra})
    return env


def test_db_upgrade_twice_says_what_it_did(tmp_path):
    first = subprocess.run([CLI, "db", "upgrade"], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    second = subprocess.run([CLI, "db", "upgrade"], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert first.returncode == second.returncode == 0
    assert "migrated empty ->" in first.stdout and "already at" in second.stdout
    assert "candles is a plain table (SQLite)" in second.stdout


def test_the_seeds_training_scripts_train_a_model(tmp_path):
    # A few thousand random-walk bars need not beat the baselines; promotion has its own test below.
    env = _env(tmp_path, RF_N_ESTIMATORS="10", RF_MIN_SAMPLES_LEAF="20", PROMOTION_FORCE="true")
    assert subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, timeout=60).returncode == 0
    closed = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    ingest_candles(env["DATABASE_URL"], "EURUSD", "M1", generate_candles(3000, end=closed, with_weekends=False))

    prepared = subprocess.run(
        [sys.executable, "prepare_dataset.py"], cwd=ROOT / "ml", env=env, capture_output=True, text=True, timeout=120
    )
    assert prepared.returncode == 0, prepared.stderr
    assert "EURUSD M1: 3000 feature rows written" in prepared.stdout

    trained = subprocess.run(
        [sys.executable, "train_model.py"], cwd=ROOT / "ml", env=env, capture_output=True, text=True, timeout=300
    )
    assert trained.returncode == 0, trained.stderr
    assert "EURUSD M1: 0 feature rows written" in trained.stdout  # already up to date
    assert "trained" in trained.stdout and "out-of-sample AUC" in trained.stdout
    assert (tmp_path / "models" / "rf_m1.pkl").exists()


def test_train_without_data_fails_with_the_reason(tmp_path):
    env = _env(tmp_path)
    subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, timeout=60)
    proc = subprocess.run([CLI, "train"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "rf_m1 not trained" in proc.stderr


def test_train_rejects_a_candidate_without_skill_and_force_promotes_it(tmp_path):
    # One leaf per tree: a constant probability, AUC 0.5, which does not beat the baseline.
    env = _env(tmp_path, RF_N_ESTIMATORS="5", RF_MIN_SAMPLES_LEAF="1000000")
    subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, timeout=60)
    ingest_candles(env["DATABASE_URL"], "EURUSD", "M1", generate_candles(3000, with_weekends=False))
    rejected = subprocess.run([CLI, "train"], env=env, capture_output=True, text=True, timeout=300)
    assert rejected.returncode == 3, rejected.stderr
    assert "REJECTED: rejected: AUC" in rejected.stdout and "does not beat the baseline" in rejected.stdout
    assert not (tmp_path / "models" / "rf_m1.pkl").exists()  # nothing trades
    assert len(list((tmp_path / "models").glob("rf_m1-*.pkl"))) == 1  # the candidate is kept

    forced = subprocess.run([CLI, "train", "--force"], env=env, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr
    assert "FORCED: forced" in forced.stdout and "would have been rejected" in forced.stdout
    assert (tmp_path / "models" / "rf_m1.pkl").exists()

    listed = subprocess.run([CLI, "models"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if line.startswith((" *", "  "))]
    assert len(lines) == 2  # newest first: the forced champion, then the rejected candidate
    assert (
        "forced" in lines[0] and lines[0].startswith(" *") and "rejected" in lines[1] and not lines[1].startswith(" *")
    )
