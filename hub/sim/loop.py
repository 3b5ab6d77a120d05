"""An asyncio event loop whose clock jumps to the next timer when nothing is ready.

The simulator runs the hub's own dispatcher (``asyncio.sleep``, ``asyncio.timeout``, queues and
all) over a week of tasks in seconds: whenever every task is waiting on a timer, the loop's
``time()`` moves straight to that timer instead of sleeping. Real I/O still works (a thread's
``call_soon_threadsafe``, a file descriptor): when something is registered and no timer is due,
the loop blocks on it as any loop would.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the real selector without blocking; if nothing is ready and the loop would have
    waited ``timeout`` for its next timer, advances the virtual clock by that much instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O (a thread finishing) can wake the loop
            return super().select(None)
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = start

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        # Past the timer's due time by the loop's resolution, so that it fires on this turn.
        self._now += seconds + self._clock_resolution


def run_virtual(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """``asyncio.run`` on a :class:`VirtualTimeLoop` whose clock starts at ``start``."""
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class LoopClock:
    """The dispatcher's clock on a virtual loop: monotonic is the loop's time, wall time is the
    simulated instant (``epoch`` + loop time)."""

    def __init__(self, epoch: float) -> None:
        self.epoch = epoch

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def time(self) -> float:
        return self.epoch + asyncio.get_running_loop().time()
