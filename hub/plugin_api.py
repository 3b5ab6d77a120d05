"""The plugin API: everything a plugin may touch, and nothing else.

A plugin is a package (``plugins/<name>/`` for the built-in ones) whose entry point in the
group ``sovereign.plugins`` names a :class:`Plugin`. The hub validates the plugin's section of
the config (``[plugins.<name>]``) with the plugin's own model, then awaits ``setup(ctx)``.
Plugins talk to the hub only through the :class:`PluginContext`; they never import each other
or hub internals beyond this module and the data models in :mod:`hub.capability`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from .bus import EventBus
from .capability import Capability
from .registry import DeviceRegistry
from .state import StateStore

C = TypeVar("C", bound=BaseModel)


class PluginConfig(BaseModel):
    """Base for plugin config models; ``enabled`` is handled by the hub."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


@dataclass(frozen=True)
class Plugin(Generic[C]):
    name: str
    version: str
    description: str
    setup: Callable[["PluginContext[C]"], Awaitable[None]]
    config_model: type[C] = PluginConfig  # type: ignore[assignment]
    #: Set up even when the config has no section for it.
    default_enabled: bool = True


class DeviceSink:
    """What a plugin may do to the registry: report the devices it knows, as source ``name``."""

    def __init__(self, registry: DeviceRegistry, source: str) -> None:
        self._registry = registry
        self._source = source

    def announce(self, capability: Capability, live: bool = True) -> None:
        self._registry.announce(capability, self._source, live=live)

    def set_online(self, device_id: str, online: bool, reason: str = "") -> None:
        self._registry.liveness(device_id, self._source, online, reason=reason)

    def known(self, device_id: str) -> Capability | None:
        rec = self._registry.get(device_id)
        return rec.capability if rec else None


@dataclass
class PluginContext(Generic[C]):
    name: str
    config: C
    bus: EventBus
    state: StateStore
    devices: DeviceSink
    data_dir: Path
    log: logging.Logger
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _stop_callbacks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def create_task(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """A background task owned by the plugin: cancelled when the hub stops; a crash is logged."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.error("task %s crashed", t.get_name(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._stop_callbacks.append(callback)

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for callback in reversed(self._stop_callbacks):
            try:
                await callback()
            except Exception:
                self.log.exception("stop callback failed")
