"""Discovery over real zeroconf (multicast on 127.0.0.1 only) and the merge with MQTT."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

from aiohttp import web
from zeroconf.asyncio import AsyncServiceInfo

from hub.mdns import SERVICE_TYPE, open_zeroconf

from .conftest import wait_for
from .payloads import capability_doc


async def test_zeroconf_only_agent_is_discovered_with_full_document(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url) as hub:
        agent = spawn_agent(mosquitto.url, "gpu-box", None, "--no-mqtt")
        rec = await wait_for(lambda: hub.registry.get(agent.device_id), 60, what="zeroconf discovery")
        assert rec.sources == {"zeroconf": True} and rec.online
        assert rec.capability.tier.value == "medium"
        assert rec.capability.hardware.accelerator is not None
        assert rec.capability.hardware.accelerator.memory_mb == 24576
        assert rec.capability.endpoints.http_port is not None
        # A clean stop sends an mDNS goodbye: the zeroconf source goes offline.
        agent.terminate()
        await wait_for(lambda: not rec.online, 30, what="zeroconf removal")
        assert "zeroconf" in rec.offline_reason


async def test_both_paths_merge_into_one_entry(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    # The heartbeat timeout is an hour: only the last will can take the device offline in the test.
    async with make_hub(mosquitto.url, discovery={"heartbeat_timeout_s": 3600}) as hub:
        agent = spawn_agent(mosquitto.url, "laptop")
        rec = await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and set(r.sources) == {"mqtt", "zeroconf"} and r,
                             20, what="both sources")
        assert len([r for r in hub.registry.all() if r.id == agent.device_id]) == 1
        assert rec.sources == {"mqtt": True, "zeroconf": True}
        # A crash: the last will wins over the zeroconf record that lingers in caches.
        agent.kill()
        await wait_for(lambda: not rec.online, 30, what="offline through the last will")
        assert rec.offline_reason.startswith("mqtt: status offline"), rec.offline_reason


async def _serve_and_register(doc: Any, device_id: str, txt_id: str | None = None, status: int = 200) -> tuple[Any, Any, Any]:
    app = web.Application()

    async def capability(_: web.Request) -> web.Response:
        return web.json_response(doc, status=status)

    app.router.add_get("/capability", capability)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    azc = open_zeroconf(["127.0.0.1"])
    info = AsyncServiceInfo(SERVICE_TYPE, f"{device_id}.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")],
                            port=port, properties={"id": txt_id or device_id, "tier": "small", "v": "1",
                                                   "http_port": str(port)}, server=f"{device_id}.local.")
    await (await azc.async_register_service(info))
    return runner, azc, info


async def test_bad_zeroconf_devices_are_rejected(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url) as hub:
        base = uuid.uuid4().hex[:6]
        cases = [
            (capability_doc(f"zc-{base}-a", tier="huge"), f"zc-{base}-a", None, 200),   # invalid document
            (capability_doc(f"zc-{base}-b"), f"zc-{base}-b", f"zc-{base}-other", 200),  # TXT id ≠ document id
            ({"error": "nope"}, f"zc-{base}-c", None, 500),                              # HTTP error
        ]
        started = [await _serve_and_register(*c) for c in cases]
        try:
            await wait_for(lambda: hub.state.counters["rejected_messages"] + hub.state.counters["discovery_errors"] >= 3,
                           20, what="three rejections")
            assert not [r for r in hub.registry.all() if r.id.startswith(f"zc-{base}")]
            reasons = " | ".join(str(r["reason"]) for r in hub.rejections.last)
            assert "tier" in reasons and "does not match TXT id" in reasons and "HTTP 500" in reasons
        finally:
            for runner, azc, info in started:
                await (await azc.async_unregister_service(info))
                await azc.async_close()
                await runner.cleanup()
        await asyncio.sleep(0)
