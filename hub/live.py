"""The dashboard's live feed: bus events out over a websocket (``GET /api/ws``).

Each client gets a snapshot first (``hello``: devices, energy, sessions), then one JSON message
per event: ``device``, ``device_removed``, ``energy``, ``task`` (every routed request), and the
plugins' events by their kind (``eeg.feedback``, ``gaze.attention``). A client that does not keep
up loses the oldest messages of its bounded queue, never the hub's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from .plugin_api import PluginEvent
from .registry import DeviceChanged, DeviceRegistry, DeviceRemoved

if TYPE_CHECKING:
    from .bus import EventBus
    from .config import HubConfig
    from .energy.model import EnergySnapshot

log = logging.getLogger(__name__)

QUEUE = 1000


class LiveHub(Protocol):
    """What :class:`LiveFeed` uses of the hub (hub/runtime.py's ``Hub`` is one)."""

    config: HubConfig
    bus: EventBus
    registry: DeviceRegistry
    last_energy_snapshot: EnergySnapshot | None

    def energy_snapshot(self) -> EnergySnapshot: ...


@dataclass(frozen=True, slots=True)
class TaskCompleted:
    """A routed request has its outcome (``InferOutcome.to_dict()`` plus the decision's reasons)."""

    outcome: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EnergyPublished:
    snapshot: dict[str, Any]


class LiveFeed:
    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub
        self.clients: set[asyncio.Queue[str]] = set()
        self.dropped = 0
        bus = hub.bus
        self._unsubscribe = [
            bus.subscribe(DeviceChanged, self._device), bus.subscribe(DeviceRemoved, self._removed),
            bus.subscribe(TaskCompleted, lambda e: self.send("task", e.outcome)),
            bus.subscribe(EnergyPublished, lambda e: self.send("energy", e.snapshot)),
            bus.subscribe(PluginEvent, lambda e: self.send(e.kind, e.data)),
        ]

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    def send(self, kind: str, data: Any) -> None:
        if not self.clients:
            return
        text = json.dumps({"type": kind, "data": data}, default=str)
        for q in self.clients:
            if q.full():
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(text)

    def _device(self, event: DeviceChanged) -> None:
        rec = self.hub.registry.get(event.device_id)
        if rec is not None and self.clients:
            self.send("device", self.hub.registry.document(rec))

    def _removed(self, event: DeviceRemoved) -> None:
        self.send("device_removed", {"id": event.device_id})

    def hello(self) -> dict[str, Any]:
        snap = self.hub.last_energy_snapshot or self.hub.energy_snapshot()
        return {"type": "hello", "data": {
            "hub": self.hub.config.hub_id,
            "devices": [self.hub.registry.document(r) for r in self.hub.registry.all()],
            "energy": snap.model_dump(mode="json") if snap else None}}

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        q: asyncio.Queue[str] = asyncio.Queue(QUEUE)
        self.clients.add(q)
        reader = asyncio.create_task(self._read(ws))
        try:
            await ws.send_str(json.dumps(self.hello(), default=str))
            while not ws.closed:
                getter = asyncio.create_task(q.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await ws.send_str(getter.result())
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.clients.discard(q)
            reader.cancel()
            await ws.close()
        return ws

    async def _read(self, ws: web.WebSocketResponse) -> None:
        """The feed is one-way; reading only notices the close."""
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
