"""Pull mode: poll GET /ea/signals for terminals the pusher cannot reach (behind NAT).

A pulled signal stays PENDING on the API until its ack arrives, so the same signal may
come back in the next poll; the executor's dedupe answers it from the store without a
second order, and the poll wakes the ack sender so the repeat window stays short.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import KW_ONLY, dataclass, field

from mt5_pipeline.bridge.acks import AckSender
from mt5_pipeline.bridge.client import ApiClient, ApiRefused, ApiUnavailable
from mt5_pipeline.bridge.cycles import run_cycles
from mt5_pipeline.bridge.executor import Executor

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Poller:
    api: ApiClient
    executor: Executor
    acks: AckSender
    _: KW_ONLY
    interval: float
    limit: int = 100
    last_error: str = field(default="", init=False)
    polls: int = field(default=0, init=False)

    def poll_once(self) -> list[dict]:
        """Handle every pulled signal; the answers, in order."""
        try:
            signals = self.api.pull(self.limit)
        except (ApiUnavailable, ApiRefused) as exc:
            self.last_error = str(exc)
            log.warning("Polling signals failed: %s", exc)
            return []
        self.polls += 1
        self.last_error = ""
        answers = []
        for signal in signals:
            code, answer = self.executor.handle(signal)
            if code == 503:
                log.warning("Pulled signal left for the next poll: %s", answer.get("message"))
            elif code != 200:
                log.warning("Pulled signal refused: %s", answer.get("message"))
            answers.append(answer)
        return answers

    def run(self, stop: threading.Event) -> None:
        run_cycles(stop, {"Poll cycle": self.poll_once}, lambda: stop.wait(self.interval), log)
