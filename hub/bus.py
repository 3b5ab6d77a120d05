"""A typed in-process event bus.

Events are frozen dataclasses; subscribers register for an event class (and receive its
subclasses too). A failing subscriber is logged and never breaks the publisher: one bad
plugin must not stop the registry from updating.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[None] | None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]) -> Callable[[], None]:
        """Call ``handler`` for every event of ``event_type``; returns an unsubscribe function."""
        self._handlers[event_type].append(handler)

        def unsubscribe() -> None:
            try:
                self._handlers[event_type].remove(handler)
            except ValueError:
                pass

        return unsubscribe

    def publish(self, event: object) -> None:
        """Deliver synchronously to plain handlers, schedule coroutine handlers as tasks."""
        for cls in type(event).__mro__:
            for handler in tuple(self._handlers.get(cls, ())):
                try:
                    result = handler(event)
                    # Plain handlers return None: skip isawaitable (an ABC check, ~1 µs), which
                    # ran for every subscriber of every announcement in a storm.
                    if result is not None and inspect.isawaitable(result):
                        task = asyncio.ensure_future(result)
                        self._tasks.add(task)
                        task.add_done_callback(self._task_done)
                except Exception:
                    log.exception("event handler %r failed on %s", handler, type(event).__name__)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("async event handler failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for handlers still running (used at shutdown)."""
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)
