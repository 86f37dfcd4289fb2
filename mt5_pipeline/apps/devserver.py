"""`mt5-pipeline dev` (`make dev`): every process on loopback, logs prefixed, Ctrl-C stops all.

Dagster webserver + daemon (`dagster dev`, sensors and schedules live), the API, the
live-signal worker, the
pusher worker and the reference EA, on the embedded default (SQLite under ./data/,
Dagster instance under ./.dagster/). Dagster and the code servers it spawns run at
DAGSTER_NICE (mt5_pipeline.apps.priority): the record yields the CPU to the trade.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from mt5_pipeline.apps.demo import DEMO_EA_KEY
from mt5_pipeline.apps.priority import lower_session, niced
from mt5_pipeline.orchestration.instance import ensure_local_dagster_home
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage import migrate

DAGSTER_UI_PORT = 3000
# The record, not the trade: started at DAGSTER_NICE.
RECORD = ("dagster",)
COLORS = {"dagster": "35", "api": "36", "live": "34", "pusher": "33", "ea-sim": "32"}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def commands(settings: Settings, ea_port: int, dagster_port: int = DAGSTER_UI_PORT) -> dict[str, list[str]]:
    api = f"http://{settings.api_host}:{settings.api_port}"
    return {
        "dagster": niced(
            [_bin("dagster"), "dev", "-m", "mt5_pipeline", "-h", "127.0.0.1", "-p", str(dagster_port)],
            settings.dagster_nice,
        ),
        "api": [_bin("mt5-pipeline"), "serve"],
        "live": [_bin("mt5-pipeline"), "live"],
        "pusher": [_bin("mt5-pipeline"), "push"],
        "ea-sim": [
            _bin("mt5-pipeline"),
            "ea-sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(ea_port),
            "--ack-url",
            f"{api}/ea/ack",
        ],
    }


def _pump(name: str, stream: IO[str], lock: threading.Lock) -> None:
    color = COLORS.get(name, "0")
    prefix = f"\x1b[{color}m{name:>8} |\x1b[0m " if sys.stdout.isatty() else f"{name:>8} | "
    for line in iter(stream.readline, ""):
        with lock:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _stop(procs: dict[str, subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM every group, wait, then SIGKILL what is left (grandchildren included)."""
    for proc in procs.values():
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs.values():
        # The leader may be gone while what it spawned (dagster's webserver) lives on.
        _signal_group(proc, signal.SIGKILL)


def run_dev(settings: Settings, *, dagster_port: int = DAGSTER_UI_PORT) -> int:
    print(migrate.upgrade(settings.database_url).describe())
    home = ensure_local_dagster_home(os.environ.get("DAGSTER_HOME") or ".dagster")
    ea_port = settings.ea_server_port
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "EA_API_KEY": settings.ea_api_key or DEMO_EA_KEY,
        "EA_SERVER_URL": settings.ea_server_url_override or f"http://127.0.0.1:{ea_port}/signals",
        "PYTHONUNBUFFERED": "1",
    }
    lock = threading.Lock()
    procs: dict[str, subprocess.Popen] = {}
    for name, argv in commands(settings, ea_port, dagster_port).items():
        # Each child leads its own process group, so a stop reaches what it spawned
        # (dagster dev starts the webserver and the daemon).
        procs[name] = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        if name in RECORD:
            # Its own session is its own autogroup: the niceness counts against the API's only
            # once the group has it too (mt5_pipeline.apps.priority).
            lower_session(procs[name].pid, settings.dagster_nice)
        threading.Thread(target=_pump, args=(name, procs[name].stdout, lock), daemon=True).start()
    print(
        f"Dagster UI http://127.0.0.1:{dagster_port} | API http://{settings.api_host}:{settings.api_port}/health | "
        f"reference EA http://127.0.0.1:{ea_port}/health | Ctrl-C stops everything"
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        print(f"\n{signal.Signals(signum).name}: stopping every process")
        stop.set()

    # Explicit handlers: a shell starts background jobs with SIGINT ignored, and
    # service managers stop with SIGTERM; either must bring everything down.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        while not stop.wait(0.5):
            exited = {name: p.returncode for name, p in procs.items() if p.poll() is not None}
            if exited:
                print(f"stopping everything: {', '.join(f'{n} exited with {c}' for n, c in exited.items())}")
                code = 1
                break
    finally:
        _stop(procs)
    return code
