"""`mt5-pipeline dev` as `make dev` runs it: every process comes up, Dagster's at a lower CPU
priority than the trade's, and Ctrl-C stops them all."""

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
TRADE = ("serve", "live", "push")


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *_descendants(int(child))]
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _subcommand(cmdline: str) -> str | None:
    """`serve` of ".../python .../mt5-pipeline serve --port 1"."""
    words = cmdline.split()
    after = [words[i + 1] for i, w in enumerate(words[:-1]) if w.endswith("/mt5-pipeline")]
    return after[0] if after else None


def _niceness(pid: int) -> int:
    # Field 19 of /proc/<pid>/stat; the fields after the command's ")" start at field 3.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _autogroup_nice(pid: int) -> int | None:
    path = Path(f"/proc/{pid}/autogroup")
    return int(path.read_text().split()[-1]) if path.exists() else None


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
        # The record yields to the trade: dagster dev, its webserver and daemon and the code
        # servers they spawn at DAGSTER_NICE (default 10) above this test's own niceness,
        # and their session's autogroup too; the API, the live worker and the pusher not.
        base = os.getpriority(os.PRIO_PROCESS, 0)
        deadline = time.monotonic() + 60
        while True:
            tree = {pid: _cmdline(pid) for pid in _descendants(proc.pid)}
            record = {pid: cmd for pid, cmd in tree.items() if "dagster" in cmd}
            code_servers = [pid for pid, cmd in record.items() if "api grpc" in cmd or "code-server" in cmd]
            if code_servers or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert code_servers, f"no Dagster code server among {sorted(record.values())}"
        assert any("daemon" in cmd for cmd in record.values()), record
        assert any("webserver" in cmd for cmd in record.values()), record
        niced = min(19, base + 10)
        assert {cmd: _niceness(pid) for pid, cmd in record.items()} == {cmd: niced for cmd in record.values()}
        trade = {pid: cmd for pid, cmd in tree.items() if _subcommand(cmd) in TRADE}
        assert {_subcommand(cmd) for cmd in trade.values()} == set(TRADE), tree
        assert all(_niceness(pid) == base for pid in trade), {cmd: _niceness(pid) for pid, cmd in trade.items()}
        for pid in record:
            if _autogroup_nice(pid) is not None:
                assert _autogroup_nice(pid) == 10
        for pid in trade:
            if _autogroup_nice(pid) is not None:
                assert _autogroup_nice(pid) == 0
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            # A failed assertion: the dev server stops its children (each in its own session,
            # out of reach of its group's SIGKILL), then goes.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert "SIGINT: stopping every process" in output
    for prefix in ("     api |", "    live |", "  pusher |", "  ea-sim |", " dagster |"):
        assert prefix in output  # logs are prefixed per process
    time.sleep(1)
    assert not any(_up(u) for u in urls)  # nothing left listening
