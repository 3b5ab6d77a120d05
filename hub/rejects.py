"""Counting and logging rejected input without letting a flood of it flood the log."""

from __future__ import annotations

import logging
import time

from .state import StateStore

log = logging.getLogger("hub.rejected")


class Rejections:
    """Every rejection is counted; at most ``burst`` log lines per ``window_s`` are written,
    then one summary line says how many were suppressed."""

    def __init__(self, state: StateStore, burst: int = 20, window_s: float = 10.0) -> None:
        self._state = state
        self._burst = burst
        self._window_s = window_s
        self._window_start = 0.0
        self._logged = 0
        self._suppressed = 0
        self.last: list[dict[str, str | float]] = []

    def reject(self, where: str, reason: str, counter: str = "rejected_messages") -> None:
        self._state.count(counter)
        now = time.monotonic()
        self.last = (self.last + [{"where": where, "reason": reason, "at": time.time()}])[-20:]
        if now - self._window_start > self._window_s:
            if self._suppressed:
                log.warning("%d more rejected messages not logged in the last %.0f s", self._suppressed, self._window_s)
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self._burst:
            self._logged += 1
            log.warning("rejected %s: %s", where, reason)
        else:
            self._suppressed += 1
