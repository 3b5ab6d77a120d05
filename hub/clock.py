"""The clock the dispatcher and the simulator read: wall time for deadlines and records,
monotonic time for budgets. The live hub reads the system's; the simulator hands in one that
follows its virtual event loop (hub/sim/loop.py), so the same code runs a week in seconds."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Unix seconds: deadlines, ledger rows, learned outcomes."""
        ...

    def monotonic(self) -> float:
        """Seconds on the event loop's clock: budgets and timeouts (``asyncio`` sleeps on it)."""
        ...


class SystemClock:
    @staticmethod
    def time() -> float:
        return time.time()

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()
