"""The HTTP API and the CLI that reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import aiohttp

from .conftest import ROOT, wait_for


async def test_health_and_devices(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "gpu-box", None, "--no-zeroconf")
        await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online, 60, what="agent")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{hub.http_url}/api/health") as resp:
                health = await resp.json()
            assert resp.status == 200
            assert health["version"] == "0.1.0" and health["uptime_s"] >= 0
            assert health["broker"] == {"url": mosquitto.url, "connected": True, "embedded": False,
                                        "reconnects": 0, "last_error": ""}
            assert health["counters"]["rejected_messages"] == 0
            assert health["devices"] == {"total": 1, "online": 1, "pending": 0}
            plugins = {p["name"]: p for p in health["plugins"]}
            assert plugins["ollama"]["state"] == "loaded"
            assert plugins["fronius"]["state"] == "disabled", "energy plugins run only when configured"
            async with s.get(f"{hub.http_url}/api/devices") as resp:
                devices = (await resp.json())["devices"]
            assert [d["id"] for d in devices] == [agent.device_id]
            assert devices[0]["tier"] == "medium" and devices[0]["capability"]["hardware"]["accelerator"]["memory_mb"] == 24576
            async with s.get(f"{hub.http_url}/api/devices/{agent.device_id}") as resp:
                assert (await resp.json())["id"] == agent.device_id
            async with s.get(f"{hub.http_url}/api/devices/nope") as resp:
                assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_device"
            async with s.get(f"{hub.http_url}/api/nothing-here") as resp:
                assert resp.status == 404 and "error" in await resp.json()


async def test_token_required_when_configured(mosquitto: Any, make_hub: Any) -> None:
    token = "t" * 24
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"token": token, "require_token": "always"}) as hub:
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                async with s.get(f"{hub.http_url}/api/devices", headers=headers) as resp:
                    assert resp.status == 401
            async with s.get(f"{hub.http_url}/api/devices", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=30, env=env)


async def test_cli_devices_table_and_json(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agents = [spawn_agent(mosquitto.url, p, None, "--no-zeroconf") for p in ("watch", "laptop")]
        await wait_for(lambda: all((r := hub.registry.get(a.device_id)) and r.energy for a in agents), 60, what="agents")
        import asyncio
        out = await asyncio.to_thread(_cli, "devices", "--url", hub.http_url, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert sorted(d["id"] for d in data["devices"]) == sorted(a.device_id for a in agents)
        table = await asyncio.to_thread(_cli, "devices", "--url", hub.http_url)
        assert table.returncode == 0
        lines = table.stdout.splitlines()
        assert lines[0].split()[:3] == ["ID", "TIER", "STATUS"]
        assert any(agents[0].device_id in line and "tiny" in line and "76%" in line for line in lines)


def test_cli_devices_without_hub_says_so() -> None:
    out = _cli("devices", "--url", "http://127.0.0.1:9")
    assert out.returncode == 1 and "no hub at http://127.0.0.1:9" in out.stderr


def test_agent_rejects_bad_id() -> None:
    out = _cli("agent", "--id", "a/b", "--no-mqtt", "--no-zeroconf")
    assert out.returncode == 2 and "invalid device id" in out.stderr
