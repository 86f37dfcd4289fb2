"""The record yields to the trade: Dagster's processes run at a lower CPU priority than the API,
the live workers and the pusher, so a closed bar's signal gets the cores first and the record
catches up in idle time.

Two knobs, because the kernel honours niceness only among the processes of one scheduling
group: ``nice -n`` on the command (the process and everything it spawns: the daemon's and
the webserver's code servers), and, where a process leads its own session (``setsid``, as
`mt5-pipeline dev` starts each child), the niceness of that session's autogroup
(/proc/<pid>/autogroup): with autogroups on (most desktop kernels), sessions share the CPU
as groups, whatever their processes' niceness. Docker and systemd put each service in its own
cgroup instead, where the weight is ``cpu_shares`` / ``CPUWeight=`` (docker-compose.yml, the units).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def niced(argv: list[str], nice: int) -> list[str]:
    """``argv`` run at niceness ``nice`` (0, or no `nice` on PATH: unchanged)."""
    tool = shutil.which("nice")
    if nice <= 0 or tool is None:
        return argv
    return [tool, "-n", str(nice), *argv]


def lower_session(pid: int, nice: int) -> bool:
    """Give the autogroup of ``pid``'s session the niceness ``nice``; False where the kernel
    has no autogroups (nothing to do: niceness alone orders the processes)."""
    if nice <= 0:
        return False
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:  # no autogroup support, or the process is gone
        return False
    return True
