"""The hub's power management end to end (issue 16), with real parts: a real Mosquitto, the real
hub, real agent processes whose sleep command really stops them (``kill -STOP $PPID``), a real
UDP listener that resumes an agent only on its magic packet, and a stand-in Home Assistant
switch (a plug's command topic) over the real broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import ROOT, wait_for
from .test_agent_sleep import WolListener, proc_state
from .test_deferred import _dirty_now_clean_later
from .test_dispatch import post

MAC = "02:00:00:00:00:16"
SLEEP = ("--sleep-command", "kill -STOP $PPID")


@asynccontextmanager
async def wol_listener() -> AsyncIterator[tuple[int, WolListener]]:
    """A network card on loopback: its port, and the listener that resumes its agent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    transport, listener = await asyncio.get_running_loop().create_datagram_endpoint(lambda: WolListener(MAC),
                                                                                     sock=sock)
    try:
        yield sock.getsockname()[1], listener
    finally:
        if listener.pid is not None:
            try:
                os.kill(listener.pid, signal.SIGCONT)  # never leave an agent stopped for the teardown
            except ProcessLookupError:
                pass
        transport.close()


class StandInSwitch:
    """A smart plug in Home Assistant's MQTT: ``ON`` on its command topic powers the machine
    (resumes the agent) and the plug reports its state, as a zigbee2mqtt or Tasmota plug does."""

    def __init__(self, port: int, command_topic: str) -> None:
        self.commands: list[bytes] = []
        self.pid: int | None = None
        self.state_topic = command_topic.rsplit("/", 1)[0] + "/state"
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"plug-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
        c.on_message = self._on_message
        c.on_subscribe = lambda *_: subscribed.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(command_topic, 1)
        assert subscribed.wait(30), "no SUBACK"
        self.client = c

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        self.commands.append(m.payload)
        if m.payload == b"ON" and self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)
            self.client.publish(self.state_topic, "ON", qos=1, retain=True)

    def close(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.client.loop_stop()
        self.client.disconnect()


def device(hub: Any, device_id: str) -> dict[str, Any]:
    return next(d for d in hub.power.status()["devices"] if d["id"] == device_id)


async def asleep(hub: Any, agent: Any) -> None:
    """Put to sleep by the hub's planner, its process really stopped."""
    await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.sleeping, 60, what="status sleeping")
    await wait_for(lambda: proc_state(agent.proc.pid) == "T", 30, what="the agent process stopped")


async def test_a_deferred_batch_wakes_a_sleeping_agent_which_runs_it_and_sleeps_again(
        mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with wol_listener() as (port, listener), make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "watch", None, "--no-zeroconf", "--echo", *SLEEP,
                            "--allow-sleep-after", "1", "--wol-mac", MAC, "--wol-broadcast", "127.0.0.1",
                            "--wol-port", str(port), "--wake-latency-ms", "2000", "--sleep-w", "0.1")
        listener.pid = agent.proc.pid
        # Nothing needs it: after its second without work the planner asks it to sleep.
        await asleep(hub, agent)
        doc = device(hub, agent.device_id)
        assert doc["state"] == "sleeping" and doc["sleeps"] == 1 and doc["wake"] == "wol"
        assert any("asked to sleep: being ready is worth 0/h" in e["what"] for e in doc["recent"]), doc

        # Three digests that may wait for the grid, cleaner in 6 s: one awake window.
        clean_from = time.time() + 6
        _dirty_now_clean_later(hub, clean_from)
        deadline = time.time() + 1800
        calls = [asyncio.create_task(post(hub, "/api/infer", {"id": f"digest-{i}", "task": "echo",
                                                              "text": f"digest {i}", "deadline": deadline}))
                 for i in range(3)]
        await wait_for(lambda: len(hub.dispatcher.deferred) == 3, 30, what="the batch deferred")
        # The plan: asleep until its wake lead (2 s x 1.25) before the window.
        planned = await wait_for(lambda: (d := device(hub, agent.device_id))["action"] == "stay_asleep"
                                 and d["at"] > time.time() and d, 30, what="a planned wake")
        assert planned["at"] <= clean_from and "3 deferred requests" in planned["reasons"][0], planned
        answers = await asyncio.gather(*calls)
        for status, out in answers:
            assert status == 200 and out["ok"] and out["served_by"]["device"] == agent.device_id, out
        assert listener.accepted >= 1 and listener.rejected == []
        doc = device(hub, agent.device_id)
        assert doc["wakes"] == 1 and doc["observed_wake_ms"] > 0
        assert any("wake sent (3 deferred requests" in e["what"] and "magic packets" in e["what"]
                   for e in doc["recent"]), doc["recent"]
        # Its work done, it sleeps again.
        await asleep(hub, agent)
        assert device(hub, agent.device_id)["sleeps"] == 2


async def test_a_patient_request_wakes_a_sleeping_agent_through_its_smart_plug(
        mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    device_id = f"t-plug-{uuid.uuid4().hex[:8]}"
    plug = StandInSwitch(mosquitto.port, f"plugs/{device_id}/set")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            power={"switch_topics": ["plugs/+/set"]}) as hub:
            agent = spawn_agent(mosquitto.url, "watch", device_id, "--no-zeroconf", "--echo", *SLEEP,
                                "--allow-sleep-after", "1", "--wake-switch-topic", f"plugs/{device_id}/set",
                                "--wake-latency-ms", "3000")
            plug.pid = agent.proc.pid
            await asleep(hub, agent)
            hub.refresh_fleet()
            # A reasoning-like task with a minute to spare waits for the wake; it is the only device.
            status, out = await post(hub, "/api/infer", {"task": "echo", "text": "wake up", "budget_ms": 60_000})
            assert status == 200 and out["ok"] and out["output"] == "wake up", out
            assert plug.commands == [b"ON"]
            assert hub.dispatcher.counts["waited_for_wake"] == 1
            doc = device(hub, device_id)
            assert doc["wakes"] == 1 and doc["state"] == "awake"
            assert any(f"switch plugs/{device_id}/set set ON" in e["what"] for e in doc["recent"]), doc
    finally:
        plug.close()


async def test_a_plug_the_owner_did_not_allow_is_never_switched_and_says_why(
        mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """The device announces a command topic outside power.switch_topics: the hub publishes
    nothing there, the request gets the reason, and the device is not offered again for a while."""
    device_id = f"t-plug-{uuid.uuid4().hex[:8]}"
    plug = StandInSwitch(mosquitto.port, f"garage/{device_id}/set")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            power={"switch_topics": ["plugs/+/set"]}) as hub:
            agent = spawn_agent(mosquitto.url, "watch", device_id, "--no-zeroconf", "--echo", *SLEEP,
                                "--allow-sleep-after", "1", "--wake-switch-topic", f"garage/{device_id}/set")
            plug.pid = agent.proc.pid
            await asleep(hub, agent)
            hub.refresh_fleet()
            status, out = await post(hub, "/api/infer", {"task": "echo", "text": "wake up", "budget_ms": 60_000})
            assert not out["ok"] and "not among power.switch_topics (plugs/+/set)" in out["error"]["message"], out
            assert plug.commands == [] and proc_state(agent.proc.pid) == "T"
            doc = device(hub, device_id)
            assert doc["wake_failures"] == 1 and doc["wake_blocked_for_s"] > 0
            hub.refresh_fleet()
            status, again = await post(hub, "/api/infer", {"task": "echo", "text": "wake up", "budget_ms": 60_000})
            assert again["error"]["code"] == "no_route", again
    finally:
        plug.close()


def test_an_unreachable_broadcast_address_is_a_clear_wake_error() -> None:
    """In a network namespace of its own with only loopback up, 192.168.1.255 has no route: the
    sender says so with the address and the system's reason."""
    code = ("import asyncio\n"
            "from hub.power.signals import WakeError, send_magic_packets\n"
            "try:\n"
            "    asyncio.run(send_magic_packets('02:00:00:00:00:16', '192.168.1.255', [9, 7], 1))\n"
            "except WakeError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "magic packet to 192.168.1.255:9: Network is unreachable"
