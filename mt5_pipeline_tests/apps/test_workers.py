"""The process plumbing of the long-running commands (mt5_pipeline.apps.workers): signals
stop a loop cleanly and are handed back, and the LIVE_PROCESSES supervisor starts, watches
and stops real spawned processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mt5_pipeline.apps.workers import run_processes, run_until_stopped, stop_on_signals

CLI = str(Path(sys.executable).with_name("mt5-pipeline"))


def _sleep_until_terminated() -> None:
    time.sleep(120)


def _exit_with(code: int) -> None:
    sys.exit(code)


def _signal_self_later(delay: float) -> None:
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()


def test_sigterm_sets_the_stop_event_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    with stop_on_signals(stop, "Received %s"):
        os.kill(os.getpid(), signal.SIGTERM)  # handled, not fatal
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_loop_waits_what_the_step_asks_and_ends_when_told():
    stop = threading.Event()
    calls: list[int] = []
    waits: list[float] = []

    def step(_stop: threading.Event) -> float | None:
        calls.append(1)
        return None if len(calls) == 3 else [0.0, 0.25][len(calls) - 1]

    run_until_stopped(step, stop, wait=lambda seconds, _stop: waits.append(seconds))
    assert len(calls) == 3 and waits == [0.25]  # 0: at once, no wait; None: the end

    stop.set()
    run_until_stopped(step, stop)  # already stopped: the step never runs
    assert len(calls) == 3


def test_the_supervisor_stops_every_process_when_one_exits():
    code = run_processes(_exit_with_or_sleep, [(3,), (None,)], name="unit")
    assert code == 1  # a child failed on its own; the sleeper was terminated with it


def _exit_with_or_sleep(code: int | None) -> None:
    if code is None:
        _sleep_until_terminated()
    else:
        time.sleep(1.0)  # both are running before one ends
        _exit_with(code)


def test_sigterm_to_the_supervisor_stops_its_processes_and_exits_0():
    _signal_self_later(3.0)
    code = run_processes(_sleep_until_terminated, [(), ()], name="unit")
    assert code == 0


def test_the_live_command_runs_live_processes_workers_and_stops_them_on_sigterm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MODEL_DIR"))}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'mt5.db'}",
            "MODEL_DIR": str(tmp_path / "models"),
            "LIVE_PROCESSES": "2",
            "LOG_LEVEL": "INFO",
        }
    )
    subprocess.run([CLI, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    log = tmp_path / "live.log"
    with log.open("w") as err:
        proc = subprocess.Popen([CLI, "live"], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not all(
                f"Live worker {i}/2 started" in log.read_text() for i in (1, 2)
            ):
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "Live worker 1/2 started" in text and "Live worker 2/2 started" in text, text
    assert code == 0, text
    assert text.count("Live worker stopped") == 2  # each child finished its loop
