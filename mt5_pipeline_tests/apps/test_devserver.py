"""`mt5-pipeline dev` as `make dev` runs it: every process comes up, and Ctrl-C stops them all."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mt5_pipeline.apps.servers import free_port

CLI = str(Path(sys.executable).with_name("mt5-pipeline"))


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_dev_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    api, ea, ui = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DAGSTER_HOME", "EA_", "API_"))}
    env.update({"API_PORT": str(api), "EA_SERVER_PORT": str(ea), "DAGSTER_AUTOSTART": "false"})
    urls = [f"http://127.0.0.1:{api}/health", f"http://127.0.0.1:{ea}/health", f"http://127.0.0.1:{ui}/server_info"]
    # Its own process group, like a terminal's foreground job receiving Ctrl-C.
    proc = subprocess.Popen(
        [CLI, "dev", "--dagster-port", str(ui)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not all(_up(u) for u in urls):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "not every process came up"
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert "SIGINT: stopping every process" in output
    for prefix in ("     api |", "    live |", "  pusher |", "  ea-sim |", " dagster |"):
        assert prefix in output  # logs are prefixed per process
    time.sleep(1)
    assert not any(_up(u) for u in urls)  # nothing left listening
