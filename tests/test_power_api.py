"""Power states over HTTP, the CLI and the dashboard, against a real hub and Mosquitto: devices
announced over MQTT with their power figures, real Wake-on-LAN magic packets received on a
loopback UDP socket, a device that never comes back, a device that refuses to sleep, and the
refusals of the write endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from playwright.async_api import Browser, expect

from hub.power.signals import is_magic_packet

from .conftest import wait_for
from .payloads import capability_doc
from .test_dashboard import SHOTS, open_page
from .test_discovery_mqtt import paho_client
from .test_http_cli import _cli
from .test_http_security import launch


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


class Udp(asyncio.DatagramProtocol):
    """A real UDP socket on 127.0.0.1 (a free port): what a sleeping network card would see."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.port = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append(data)


async def udp_listener() -> tuple[asyncio.DatagramTransport, Udp]:
    transport, udp = await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    udp.port = transport.get_extra_info("sockname")[1]
    return transport, udp


def wol(mac: str, port: int) -> dict[str, Any]:
    return {"kind": "wol", "mac": mac, "broadcast": "127.0.0.1", "ports": [port]}


def announce(c: paho.Client, device_id: str, status: str, wake: dict[str, Any] | None = None,
             allow_sleep_after_s: float | None = 3600, wake_latency_ms: float = 2000) -> None:
    """A gpu box announcing its power states (retained, as the agent does), then its status."""
    doc = capability_doc(device_id, "gpu-box")
    doc["power"] = {**doc["power"], "sleep_w": 2.0, "wake_latency_ms": wake_latency_ms,
                    "wake": wake or {"kind": "none"}}
    if allow_sleep_after_s is not None:
        doc["power"]["allow_sleep_after_s"] = allow_sleep_after_s
    c.publish(f"sovereign/device/{device_id}/announce", json.dumps(doc), qos=1, retain=True).wait_for_publish()
    say(c, device_id, status)


def say(c: paho.Client, device_id: str, status: str) -> None:
    c.publish(f"sovereign/device/{device_id}/status", status, qos=1, retain=True).wait_for_publish()


def ids(*names: str) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"pw-{n}-{tag}" for n in names]


async def call(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, url, **kw) as r:
        return r.status, await r.json(content_type=None)


def devices_where(s: aiohttp.ClientSession, url: str, test: Callable[[dict[str, dict[str, Any]]], bool]) -> Any:
    """For wait_for: GET /api/power until ``test`` holds of its devices by id (the plan is made
    in the background, moments after a device changes); its devices by id then."""
    async def check() -> dict[str, dict[str, Any]] | None:
        status, doc = await call(s, "GET", url + "/api/power")
        by_id = {d["id"]: d for d in doc["devices"]} if status == 200 else {}
        return by_id if status == 200 and test(by_id) else None

    return check


async def test_power_lists_wakes_with_a_magic_packet_and_gives_up_on_a_device_that_stays_away(
        mosquitto: Any, make_hub: Any) -> None:
    awake, nosleep, sleeper, dead = ids("awake", "nosleep", "sleeper", "dead")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        # A carbon figure prices the idle draw: sleeping devices then stay asleep until asked.
        hub.energy.report("test", "carbon_g_per_kwh", 300, stale_after_s=3600)
        (t_ok, rx_ok), (t_dead, rx_dead) = await udp_listener(), await udp_listener()
        c = paho_client(mosquitto.port)
        try:
            announce(c, awake, "online", wol("02:00:00:00:00:01", 9))
            announce(c, nosleep, "online", wol("02:00:00:00:00:02", 9), allow_sleep_after_s=None)
            # Long enough a wake limit (15 s x 2) for the test to answer for the woken agent on a
            # busy machine; the one that never comes back is given up on after 2 s x 2.
            announce(c, sleeper, "sleeping", wol("02:00:00:00:00:09", rx_ok.port), wake_latency_ms=15_000)
            announce(c, dead, "sleeping", wol("02:00:00:00:00:0a", rx_dead.port), wake_latency_ms=2000)
            async with aiohttp.ClientSession() as s:
                url = hub.http_url
                t0 = time.monotonic()
                by_id = await wait_for(devices_where(s, url, lambda d: all(
                    i in d and d[i]["action"] is not None for i in (awake, nosleep, sleeper, dead))
                    and d[sleeper]["state"] == d[dead]["state"] == "sleeping"), 30, what="the four devices planned")
                print(f"planned {(time.monotonic() - t0) * 1000:.0f} ms after the announcements")
                a = by_id[awake]
                assert a["state"] == "awake" and a["action"] == "stay_awake", a
                assert "it sleeps only after 3600 s" in a["reasons"][0], a["reasons"]
                assert (a["idle_w"], a["sleep_w"], a["wake"], a["wake_latency_ms"]) == (60.0, 2.0, "wol", 2000)
                n = by_id[nosleep]
                assert n["state"] == "awake" and n["action"] == "stay_awake"
                assert "announces no sleep command" in n["reasons"][0], n["reasons"]
                z = by_id[sleeper]
                assert z["action"] == "stay_asleep" and z["wakes"] == 0 and z["observed_wake_ms"] is None, z
                status, dev = await call(s, "GET", f"{url}/api/devices/{sleeper}")
                assert status == 200 and dev["power_state"] == "sleeping" and not dev["online"]

                # Wake: the magic packet reaches the socket; the answer waits for the device.
                started = time.monotonic()
                post = asyncio.create_task(call(s, "POST", f"{url}/api/power/{sleeper}", json={"action": "wake"}))
                await wait_for(lambda: rx_ok.packets or post.done(), 30, what="the magic packet")
                assert rx_ok.packets, post.result()
                assert is_magic_packet(rx_ok.packets[0], "02:00:00:00:00:09"), rx_ok.packets[0][:16]
                assert not rx_dead.packets, "only the device asked for"
                status, doc = await call(s, "GET", f"{url}/api/power")
                assert {d["id"]: d["state"] for d in doc["devices"]}[sleeper] == "waking"
                assert not post.done(), "answered before the device was back"
                say(c, sleeper, "online")  # what the woken agent publishes
                status, doc = await post
                print(f"woken and answered in {(time.monotonic() - started) * 1000:.0f} ms")
                assert status == 200 and doc == {"device": sleeper, "ok": True, "result": "awake"}, doc
                by_id = await wait_for(devices_where(s, url, lambda d: d[sleeper]["state"] == "awake"), 30,
                                       what="awake")
                assert by_id[sleeper]["wakes"] == 1 and by_id[sleeper]["observed_wake_ms"] > 0
                assert by_id[sleeper]["wake_failures"] == 0

                # A device that never comes back: 409 after its wake latency x 2, counted.
                started = time.monotonic()
                status, doc = await call(s, "POST", f"{url}/api/power/{dead}", json={"action": "wake"})
                took = time.monotonic() - started
                assert status == 409 and not doc["ok"] and doc["error"]["code"] == "not_woken", doc
                assert "did not come back within 4.0 s" in doc["error"]["message"], doc
                assert took >= 4.0, took
                assert rx_dead.packets and all(is_magic_packet(p, "02:00:00:00:00:0a") for p in rx_dead.packets)
                status, doc = await call(s, "GET", f"{url}/api/power")
                d = {d["id"]: d for d in doc["devices"]}[dead]
                assert d["wake_failures"] == 1 and d["wakes"] == 1 and d["state"] == "sleeping", d
                assert d["wake_blocked_for_s"] > 0 and "did not come back" in d["recent"][-1]["what"], d
                assert doc["counts"]["wake_failures"] == 1 and doc["counts"]["wakes"] == 2, doc["counts"]

                # The CLI's table: states, plans, latencies and counts.
                out = await asyncio.to_thread(_cli, "power", "--url", url)
                assert out.returncode == 0, out.stderr
                lines = out.stdout.splitlines()
                assert lines[1].split()[:3] == ["DEVICE", "STATE", "PLAN"], lines
                row = next(line for line in lines if line.startswith(dead))
                assert "sleeping" in row and "60/2" in row and "wol" in row, row
                assert "2.0 s announced" in row and "1/0 (1 wakes failed)" in row, row
                row = next(line for line in lines if line.startswith(sleeper))
                assert "awake" in row and "s observed" in row and "1/0" in row, row
                row = next(line for line in lines if line.startswith(nosleep))
                assert "stay awake" in row and "announces no sleep command" in row, row
                out = await asyncio.to_thread(_cli, "power", "--url", url, "--json")
                assert out.returncode == 0 and {d["id"] for d in json.loads(out.stdout)["devices"]} >= {dead, sleeper}
        finally:
            c.loop_stop()
            c.disconnect()
            t_ok.close()
            t_dead.close()


class SleepResponder:
    """The device's side of RPC ``sleep`` (MQTT 3.1.1 style: answered on ``reply_to`` with the
    request's id): refuses ``busy`` until told to agree, then says ``sleeping`` as the agent does."""

    def __init__(self, port: int, device_id: str) -> None:
        self.device_id, self.agree = device_id, False
        self.reasons: list[str] = []  # of every sleep request, in order
        self.c = paho_client(port)
        self.c.on_message = self.on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.subscribe(f"sovereign/device/{device_id}/rpc", qos=1)
        assert subscribed.wait(30), "no SUBACK for the device's rpc topic"

    def on_message(self, c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        req = json.loads(m.payload)
        if req["method"] != "sleep":
            return
        self.reasons.append(req["params"].get("reason"))
        if self.agree:
            reply = {"v": 1, "id": req["id"], "ok": True, "result": {"sleeping": True}}
        else:
            reply = {"v": 1, "id": req["id"], "ok": False,
                     "error": {"code": "busy", "message": "1 call running", "retry_after_s": 30}}
        c.publish(req["reply_to"], json.dumps(reply), qos=1)
        if self.agree:
            c.publish(f"sovereign/device/{self.device_id}/status", "sleeping", qos=1, retain=True)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def test_power_writes_are_guarded_validated_and_refusals_are_409(mosquitto: Any, make_hub: Any) -> None:
    box, other = ids("box", "other")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"}) as hub:
        hub.energy.report("test", "carbon_g_per_kwh", 300, stale_after_s=3600)
        token = hub.new_admin_token
        auth = {"Authorization": f"Bearer {token}"}
        c = paho_client(mosquitto.port)
        responder = SleepResponder(mosquitto.port, box)
        try:
            announce(c, box, "online", wol("02:00:00:00:00:0b", 9))
            announce(c, other, "online", allow_sleep_after_s=None)
            async with aiohttp.ClientSession() as s:
                url = hub.http_url
                power = f"{url}/api/power/{box}"
                # Reads need no token on the loopback.
                await wait_for(devices_where(s, url, lambda d: box in d and other in d), 30, what="listed")
                # Refusals, before anything is asked of the device.
                status, err = await call(s, "POST", power, json={"action": "sleep"})
                assert status == 401 and err["error"]["code"] == "unauthorized", err
                status, err = await call(s, "POST", power, json={"action": "sleep"},
                                         headers={**auth, "Origin": "http://evil.example"})
                assert status == 403 and err["error"]["code"] == "cross_origin", err
                status, err = await call(s, "POST", power, json={"action": "sleep"},
                                         headers={**auth, "Sec-Fetch-Site": "cross-site"})
                assert status == 403 and err["error"]["code"] == "cross_origin", err
                status, err = await call(s, "POST", power, data='{"action": "sleep"}',
                                         headers={**auth, "Content-Type": "text/plain"})
                assert status == 415, err
                status, err = await call(s, "POST", power, json={"action": "dance"}, headers=auth)
                assert status == 400 and err["error"]["code"] == "bad_request", err
                assert err["error"]["message"].startswith("body: action:") and "'wake' or 'sleep'" in \
                    err["error"]["message"], err
                status, err = await call(s, "POST", power, json={"action": "wake", "now": True}, headers=auth)
                assert status == 400 and "now: Extra inputs are not permitted" in err["error"]["message"], err
                for body in ([], "wake", {}):
                    status, err = await call(s, "POST", power, json=body, headers=auth)
                    assert status == 400 and err["error"]["code"] == "bad_request", (body, err)
                status, err = await call(s, "POST", power, data="{not json",
                                         headers={**auth, "Content-Type": "application/json"})
                assert status == 400 and "Invalid JSON" in err["error"]["message"], err
                status, err = await call(s, "POST", f"{url}/api/power/nobody-{box}", json={"action": "wake"},
                                         headers=auth)
                assert status == 404 and err["error"]["code"] == "unknown_device", err
                status, err = await call(s, "POST", f"{url}/api/power/{'x' * 65}", json={"action": "wake"},
                                         headers=auth)
                assert status == 400 and err["error"]["code"] == "bad_id", err
                assert not responder.reasons, "nothing refused reached the device"
                # The hub's own page (same origin) with the token: an awake device is awake.
                status, doc = await call(s, "POST", power, json={"action": "wake"},
                                         headers={**auth, "Origin": url})
                assert status == 200 and doc == {"device": box, "ok": True, "result": "awake"}, doc

                # The device refuses (a call is running): 409 with its reason, counted.
                status, doc = await call(s, "POST", power, json={"action": "sleep"}, headers=auth)
                assert status == 409 and not doc["ok"] and doc["error"]["code"] == "sleep_refused", doc
                assert "refused to sleep: busy: 1 call running" in doc["error"]["message"], doc
                assert responder.reasons == ["asked by the user"]
                # The command line says the same, and exits 1.
                env = {**os.environ, "SOVEREIGN_TOKEN": token}
                out = await asyncio.to_thread(_cli, "power", box, "sleep", "--url", url)
                assert out.returncode == 1 and "SOVEREIGN_TOKEN" in out.stderr, out.stderr
                out = await asyncio.to_thread(_cli, "power", box, "sleep", "--url", url, env=env)
                assert out.returncode == 1 and "(sleep_refused): refused to sleep: busy" in out.stderr, out.stderr
                out = await asyncio.to_thread(_cli, "power", f"nobody-{box}", "wake", "--url", url, env=env)
                assert out.returncode == 1 and "unknown_device" in out.stderr, out.stderr
                out = await asyncio.to_thread(_cli, "power", box, "--url", url, env=env)
                assert out.returncode == 2 and "wake or sleep" in out.stderr

                # It agrees: 200, then it says `sleeping` and the hub shows it asleep.
                responder.agree = True
                out = await asyncio.to_thread(_cli, "power", box, "sleep", "--url", url, env=env)
                assert out.returncode == 0 and out.stdout.strip() == f"{box}: asleep", (out.stdout, out.stderr)
                by_id = await wait_for(devices_where(s, url, lambda d: d[box]["state"] == "sleeping"), 30,
                                       what="asleep")
                assert by_id[box]["sleeps"] == 1 and by_id[box]["sleep_refusals"] == 2, by_id[box]
                status, doc = await call(s, "POST", power, json={"action": "sleep"}, headers=auth)
                assert status == 200 and doc["result"] == "already asleep", doc
                assert responder.reasons == ["asked by the user"] * 3, "not asked again when asleep"
                # A device with no way to wake it cannot be woken once it is away.
                say(c, other, "offline")
                await wait_for(devices_where(s, url, lambda d: d[other]["state"] == "offline"), 30, what="offline")
                status, doc = await call(s, "POST", f"{url}/api/power/{other}", json={"action": "wake"},
                                         headers=auth)
                assert status == 409 and "no way to wake it" in doc["error"]["message"], doc
                status, doc = await call(s, "POST", f"{url}/api/power/{other}", json={"action": "sleep"},
                                         headers=auth)
                assert status == 409 and doc["error"]["code"] == "offline", doc
        finally:
            responder.close()
            c.loop_stop()
            c.disconnect()


async def test_the_dashboard_power_panel_wakes_a_sleeping_device(mosquitto: Any, make_hub: Any,
                                                                  browser: Browser) -> None:
    sleeper, nosleep = ids("sleeper", "nosleep")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        hub.energy.report("test", "carbon_g_per_kwh", 300, stale_after_s=3600)
        transport, rx = await udp_listener()
        c = paho_client(mosquitto.port)
        try:
            announce(c, nosleep, "online", allow_sleep_after_s=None)
            announce(c, sleeper, "sleeping", wol("02:00:00:00:00:0c", rx.port), wake_latency_ms=15_000)
            async with aiohttp.ClientSession() as s:  # planned before the page loads its panel
                await wait_for(devices_where(s, hub.http_url, lambda d: all(
                    i in d and d[i]["action"] for i in (sleeper, nosleep)) and d[sleeper]["state"] == "sleeping"),
                    30, what="both planned")
            page = await open_page(browser, hub.http_url + "/")
            panel = page.get_by_test_id("power")
            row = panel.locator(f'tr[data-power-id="{sleeper}"]')
            await expect(row.get_by_test_id("power-state")).to_have_text("sleeping")
            await expect(row).to_contain_text("stay asleep")
            await expect(row.get_by_role("button", name="Sleep")).to_be_disabled()
            other = panel.locator(f'tr[data-power-id="{nosleep}"]')
            await expect(other).to_contain_text("announces no sleep command")
            await expect(other.get_by_role("button", name="Wake")).to_be_disabled()
            await row.get_by_role("button", name="Wake").click()
            await wait_for(lambda: rx.packets, 30, what="the magic packet")
            assert is_magic_packet(rx.packets[0], "02:00:00:00:00:0c")
            await expect(page.get_by_test_id("power-result")).to_contain_text("waking")
            say(c, sleeper, "online")
            await expect(page.get_by_test_id("power-result")).to_have_text(f"{sleeper}: awake")
            await expect(row.get_by_test_id("power-state")).to_have_text("awake")
            await expect(row.get_by_role("button", name="Sleep")).to_be_enabled()
            await expect(row.get_by_role("button", name="Wake")).to_be_disabled()
            SHOTS.mkdir(exist_ok=True)
            await page.locator("#power-section").screenshot(path=str(SHOTS / "power.png"))
        finally:
            c.loop_stop()
            c.disconnect()
            transport.close()
