"""Discovery over zeroconf: browse ``_sovereign._tcp.local.``, resolve, fetch the device's
full capability document over HTTP, and hand it to the registry as source ``zeroconf``.

The TXT record carries only what fits (id, tier, protocol version, HTTP port); the capability
document is fetched from ``http://<address>:<port>/capability`` and validated exactly like an
MQTT announcement. A removal clears only the zeroconf source (see the registry's merge rule).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aiohttp
from pydantic import ValidationError
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from ..capability import PROTOCOL_VERSION, Capability, is_valid_device_id
from ..config import ZeroconfConfig, format_validation_error
from ..mdns import SERVICE_TYPE, open_zeroconf
from ..registry import DeviceRegistry
from ..rejects import Rejections

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 256 * 1024


class ZeroconfDiscovery:
    def __init__(self, cfg: ZeroconfConfig, registry: DeviceRegistry, rejections: Rejections) -> None:
        self.cfg = cfg
        self.registry = registry
        self.rejections = rejections
        self._names: dict[str, str] = {}  # service name → device id
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> "ZeroconfDiscovery":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.fetch_timeout_s))
        self._azc = open_zeroconf(self.cfg.interfaces)
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._azc.async_close()
        await self._session.close()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            device_id = self._names.pop(name, None)
            if device_id is not None:
                self.registry.liveness(device_id, "zeroconf", False, reason="service removed")
            return
        # Added or Updated: the newest resolution wins, an older one still running is cancelled.
        previous = self._latest.get(name)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self._resolve(zeroconf, name))
        self._latest[name] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: (self._tasks.discard(t),
                                          self._latest.pop(name, None) if self._latest.get(name) is t else None))

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        where = f"zeroconf service {name!r}"
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, 3000):
            self.rejections.reject(where, "did not resolve within 3 s")
            return
        txt = {k.decode(errors="replace"): (v or b"").decode(errors="replace") for k, v in info.properties.items()}
        device_id = txt.get("id", "")
        if not is_valid_device_id(device_id):
            self.rejections.reject(where, f"TXT id {device_id!r} is missing or not a valid device id")
            return
        if txt.get("v") != str(PROTOCOL_VERSION):
            self.rejections.reject(where, f"unsupported protocol version {txt.get('v')!r} (this hub speaks {PROTOCOL_VERSION})")
            return
        addresses = info.parsed_addresses()
        if not addresses or not info.port:
            self.rejections.reject(where, "no address or port")
            return
        if self.registry.hint_only(device_id):
            # Nothing is fetched from an address anyone on the LAN can announce; the device's
            # capabilities and state stay what its MQTT identity says.
            if name != f"{device_id}.{SERVICE_TYPE}":  # an agent names its record after its id
                self.rejections.reject(where, f"claims the known device id {device_id!r} under another name: "
                                       "ignored", counter="zeroconf_refused")
                return
            self._names[name] = device_id
            if device_id in self.registry:
                self.registry.liveness(device_id, "zeroconf", True, reason="mDNS record")
            return
        port = int(txt["http_port"]) if txt.get("http_port", "").isdigit() else info.port
        cap = await self._fetch(where, addresses, port)
        if cap is None:
            return
        if cap.id != device_id:
            self.rejections.reject(where, f"capability id {cap.id!r} does not match TXT id {device_id!r}")
            return
        self._names[name] = device_id
        self.registry.announce(cap, "zeroconf", time.time(), live=True)

    async def _fetch(self, where: str, addresses: list[str], port: int) -> Capability | None:
        last_error = "no address answered"
        for address in addresses:
            host = f"[{address}]" if ":" in address else address
            url = f"http://{host}:{port}/capability"
            try:
                async with self._session.get(url) as resp:
                    if resp.status != 200:
                        last_error = f"GET {url} answered HTTP {resp.status}"
                        continue
                    body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
            except (aiohttp.ClientError, asyncio.TimeoutError, socket.gaierror) as exc:
                last_error = f"GET {url} failed: {exc!r}"
                continue
            if len(body) > MAX_DOCUMENT_BYTES:
                self.rejections.reject(where, f"capability document larger than {MAX_DOCUMENT_BYTES} bytes")
                return None
            try:
                return Capability.model_validate_json(body)
            except ValidationError as exc:
                self.rejections.reject(where, format_validation_error(exc).replace("\n", "; "))
                return None
        self.rejections.reject(where, last_error, counter="discovery_errors")
        return None
