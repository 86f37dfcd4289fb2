"""`mt5-pipeline demo` as a newcomer runs it: a fresh folder, no configuration, twice."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("mt5-pipeline"))


def _run_demo(cwd: Path) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "DAGSTER_HOME", "MODEL_DIR", "EA_", "API_", "SIGNAL_"))
    }
    proc = subprocess.run([CLI, "demo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _figure(summary: str, name: str) -> int:
    match = re.search(rf"^{name}\s+(\d+)", summary, re.M)
    assert match, f"{name!r} missing from the summary:\n{summary}"
    return int(match.group(1))


@pytest.mark.slow
def test_demo_delivers_and_acknowledges_signals_and_runs_twice(tmp_path):
    first = _run_demo(tmp_path)
    assert "generated sample" in first  # the data is labelled for what it is
    assert _figure(first, "candles stored") == 60_000
    # Closed bars only: each symbol's newest bar may still be forming when features run.
    assert 60_000 - 3 <= _figure(first, "feature rows") <= 60_000
    generated, sent, acked = (_figure(first, n) for n in ("signals generated", "signals sent", "signals acknowledged"))
    assert generated >= 1 and sent == generated and acked == generated
    assert "ROC AUC" in first and "baseline" in first
    assert (tmp_path / "data" / "mt5.db").exists()
    assert (tmp_path / ".dagster" / "dagster.yaml").exists()
    assert list((tmp_path / "models").glob("*equity*.png"))

    second = _run_demo(tmp_path)
    assert _figure(second, "candles stored") >= 60_000
    # Within the same minute every newest closed bar already has its signal (one per bar);
    # a minute later there is a new bar to signal.
    assert _figure(second, "signals acknowledged") >= 1 or _figure(second, "already signalled") == 3
