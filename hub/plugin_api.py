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

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from .bus import EventBus
from .capability import Capability
from .energy.model import ForecastPoint
from .energy.series import Series, SeriesError
from .config import BrokerUrl, format_validation_error
from .energy.store import EnergyStore
from .mqtt import Message, MqttLink, MqttOptions
from .registry import DeviceRegistry
from .state import StateStore
from .topics import Topics
from .voice.audio import SAMPLE_RATE, Audio, AudioError, decode_audio
from .voice.wakeword import WakeWordDetector, WakeWordModelError

# A plugin that reads a feed over MQTT (OpenDTU, for one) opens its own connection with the
# hub's supervised MqttLink: same reconnect, TLS and credential handling as the hub's.
__all__ = ["Plugin", "PluginConfig", "PluginContext", "PluginServices", "PluginEvent", "DeviceSink", "EnergySink",
           "ForecastPoint", "Poller", "SourceError", "BrokerUrl", "Message", "MqttLink", "MqttOptions", "Series",
           "SeriesError", "web", "Audio", "AudioError", "decode_audio", "SAMPLE_RATE", "format_validation_error",
           "WakeWordDetector", "WakeWordModelError"]

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


class EnergySink:
    """What a plugin may do to the energy state: report readings and forecasts as ``source``.
    Every value is range-checked by the hub; a refused one keeps the last good value."""

    def __init__(self, store: EnergyStore, source: str) -> None:
        self._store = store
        self.source = source

    def report(self, metric: str, value: float, at: float | None = None, stale_after_s: float = 300) -> bool:
        return self._store.report(self.source, metric, value, at, stale_after_s)

    def fail(self, metrics: list[str] | tuple[str, ...], reason: str) -> None:
        for metric in metrics:
            self._store.fail(self.source, metric, reason)

    def forecast(self, metric: str, points: list[ForecastPoint]) -> int:
        return self._store.set_forecast(self.source, metric, points)


@dataclass(frozen=True, slots=True)
class PluginEvent:
    """Something a plugin tells whoever listens on the bus (the dashboard's live feed):
    ``kind`` such as ``eeg.feedback``, and a JSON-serialisable ``data``."""

    plugin: str
    kind: str
    data: dict[str, Any]


MessageHandler = Callable[[Message], None]
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class PluginServices:
    """What the hub lends every plugin context: its MQTT connection, HTTP routes, history and
    the dispatcher. Built by the runtime; plugins see it only through :class:`PluginContext`."""

    topic_root: str
    publish: Callable[[str, bytes | str, int, bool, bytes | None], Awaitable[bool]]
    subscribe: Callable[[str, int, MessageHandler], Awaitable[Callable[[], None]]]
    add_route: Callable[[str, str, RouteHandler], None]
    record: Callable[[str, float, float], None]
    infer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class SourceError(Exception):
    """A vendor source answered, but not with something usable (the message says why)."""


@dataclass
class Poller:
    """Calls ``fetch`` every ``interval_s`` with a timeout; a failed attempt is retried with
    exponential backoff (1 s, 2 s, 4 s …, never past the next regular poll); when every retry
    failed, ``on_failure(reason)`` is told why, so that the plugin can mark its inputs."""

    fetch: Callable[[], Awaitable[None]]
    on_failure: Callable[[str], None]
    interval_s: float
    timeout_s: float
    retries: int = 2
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("plugins"))
    failures: int = 0
    successes: int = 0

    async def attempt(self) -> str | None:
        """One poll with its retries; returns None on success, else the last reason."""
        reason = ""
        delay = 1.0
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(self.timeout_s):  # not wait_for: it can swallow a cancel on 3.11
                    await self.fetch()
                self.successes += 1
                return None
            except TimeoutError:
                reason = f"no answer within {self.timeout_s:g} s"
            except SourceError as exc:
                reason = str(exc)
            except Exception as exc:  # connection refused, reset, bad JSON, a plugin bug: the poller lives on
                reason = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(min(delay, self.interval_s))
                delay *= 2
        self.failures += 1
        return reason

    async def run(self) -> None:
        while True:
            reason = await self.attempt()
            if reason is not None:
                self.log.warning("poll failed: %s", reason)
                self.on_failure(reason)
            await asyncio.sleep(self.interval_s)


@dataclass
class PluginContext(Generic[C]):
    name: str
    config: C
    bus: EventBus
    state: StateStore
    devices: DeviceSink
    energy: EnergySink
    data_dir: Path
    log: logging.Logger
    services: PluginServices | None = None
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

    # -- what the hub lends ----------------------------------------------------------------------

    def _svc(self) -> PluginServices:
        if self.services is None:
            raise RuntimeError(f"plugin {self.name}: no hub services in this context")
        return self.services

    @property
    def topic_root(self) -> str:
        return self._svc().topic_root

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        """Publish on the hub's MQTT connection (False when it is down: the message is dropped)."""
        return await self._svc().publish(topic, payload, qos, retain, None)

    async def publish_reply(self, topic: str, payload: bytes | str, correlation: bytes | None = None) -> bool:
        """Answer a command on its response topic (with its MQTT 5 correlation data). Refused
        (False) outside ``<root>/reply/<client>/`` or with a wildcard: a command must not make
        the hub publish anywhere it likes."""
        root = self._svc().topic_root
        if not Topics(root).allows_command_reply(topic):
            self.log.warning("not answering on %r: outside %s/reply/<client>/", topic, root)
            return False
        return await self._svc().publish(topic, payload, 1, False, correlation)

    async def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Receive messages matching ``topic_filter`` (also after reconnects) until the plugin
        stops. ``handler`` runs in the event loop and must not block."""
        unsubscribe = await self._svc().subscribe(topic_filter, qos, handler)

        async def stop() -> None:
            unsubscribe()

        self.on_stop(stop)

    def add_route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve ``/api/<plugin><path>`` (behind the hub's token, like every API route)."""
        self._svc().add_route(method, f"/api/{self.name}{path}", handler)

    def record(self, metric: str, value: float, at: float) -> None:
        """A reading into the hub's history (SQLite, and InfluxDB when configured)."""
        self._svc().record(f"{self.name}.{metric}", at, value)

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run a task on the fleet, as ``POST /api/infer`` does; returns the outcome document."""
        return await self._svc().infer(request)

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.bus.publish(PluginEvent(self.name, kind, data))

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for callback in reversed(self._stop_callbacks):
            try:
                await callback()
            except Exception:
                self.log.exception("stop callback failed")
