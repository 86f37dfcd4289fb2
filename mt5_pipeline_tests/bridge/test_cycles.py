from __future__ import annotations

import logging
import threading

import pytest

from mt5_pipeline.bridge.cycles import run_cycles

log = logging.getLogger("mt5_pipeline.bridge.test_cycles")


def test_a_failing_step_is_logged_and_the_next_steps_and_rounds_still_run(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("terminal gone")

    def pause() -> bool:
        calls.append("pause")
        return calls.count("pause") == 2  # two rounds, then end the loop

    with caplog.at_level(logging.ERROR, logger=log.name):
        run_cycles(stop, {"broken step": broken, "healthy step": lambda: calls.append("healthy")}, pause, log)
    assert calls == ["broken", "healthy", "pause"] * 2
    assert [r.getMessage() for r in caplog.records] == ["broken step failed"] * 2
    assert all(r.name == log.name and r.exc_info for r in caplog.records)


def test_a_set_stop_ends_the_loop_before_another_round() -> None:
    stop = threading.Event()
    rounds: list[int] = []

    def step() -> None:
        rounds.append(1)
        stop.set()

    run_cycles(stop, {"step": step}, lambda: None, log)
    assert rounds == [1]
