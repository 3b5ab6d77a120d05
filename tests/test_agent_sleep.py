"""The agent's power states (issue 16), with real parts: a real Mosquitto, real agent processes,
a real UDP listener for the Wake-on-LAN magic packet.

The agent's sleep command here is ``kill -STOP $PPID``: the shell's parent is the agent, so the
agent process really stops (its MQTT link and its loop with it) until the test's listener, on a
magic packet for the agent's MAC, sends it SIGCONT — as a network card wakes its machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.power.signals import is_magic_packet, send_magic_packets

from .conftest import ROOT, retained_messages, wait_for

MAC = "02:00:00:00:00:01"
REPLIES = "sovereign/test/sleep-replies"


class DeviceWatch:
    """A paho client on one device's topics, subscribed before the agent starts: every status,
    energy report and announcement in arrival order, and RPC answers by id."""

    def __init__(self, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.events: list[tuple[str, bytes]] = []
        self.answers: dict[str, dict[str, Any]] = {}
        self.status_topic = f"sovereign/device/{device_id}/status"
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
        c.on_message = self._on_message
        c.on_subscribe = lambda *_: subscribed.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe([(f"sovereign/device/{device_id}/{kind}", 1) for kind in ("status", "energy", "announce")]
                    + [(REPLIES, 1)])
        assert subscribed.wait(30), "no SUBACK"
        self.client = c
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.ResponseTopic = REPLIES

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        if m.topic == REPLIES:
            body = json.loads(m.payload)
            self.answers[body["id"]] = body
        else:
            self.events.append((m.topic.rsplit("/", 1)[1], m.payload))

    def statuses(self) -> list[bytes]:
        return [p for kind, p in self.events if kind == "status"]

    def announcements(self, since: int = 0) -> list[dict[str, Any]]:
        return [json.loads(p) for kind, p in self.events[since:] if kind == "announce"]

    def online(self) -> bool:
        """The last status is ``online``: the agent has subscribed to its RPC topic by then."""
        return self.statuses()[-1:] == [b"online"]

    def send(self, rid: str, method: str, params: dict[str, Any] | None = None) -> None:
        self.client.publish(f"sovereign/device/{self.device_id}/rpc",
                            json.dumps({"v": 1, "id": rid, "method": method, "params": params or {}}), qos=1,
                            properties=self.props)

    async def call(self, rid: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send(rid, method, params)
        return await wait_for(lambda: self.answers.get(rid), 30, what=f"answer to {rid}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class WolListener(asyncio.DatagramProtocol):
    """A network card in Wake-on-LAN mode: a datagram that is exactly the magic packet for its
    MAC resumes the stopped agent; anything else is recorded and refused."""

    def __init__(self, mac: str) -> None:
        self.mac = mac
        self.pid: int | None = None
        self.accepted = 0
        self.rejected: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Checked twice: by the hub's own function, and by the pattern spelled out here.
        raw = bytes.fromhex(self.mac.replace(":", ""))
        if is_magic_packet(data, self.mac) and data == b"\xff" * 6 + raw * 16 and self.pid is not None:
            self.accepted += 1
            os.kill(self.pid, signal.SIGCONT)
        else:
            self.rejected.append(data)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def watched_agent(mosquitto: Any, spawn_agent: Any, profile: str, *extra: str) -> tuple[Any, DeviceWatch]:
    device_id = f"t-sleep-{uuid.uuid4().hex[:8]}"
    watch = DeviceWatch(mosquitto.port, device_id)
    agent = spawn_agent(mosquitto.url, profile, device_id, "--no-zeroconf", *extra)
    # ``online`` comes after the RPC subscription, the announcement right after ``online``.
    await wait_for(lambda: watch.online() and watch.announcements(), 60, what="agent online and announced")
    return agent, watch


async def test_sleep_then_wake_on_lan(mosquitto: Any, spawn_agent: Any) -> None:
    """RPC ``sleep`` → ok → retained ``sleeping`` (never ``offline``) → the agent process is
    stopped → a magic packet for another MAC leaves it stopped → the right one resumes it →
    ``online`` again, re-announced with the measured ``power.wake_latency_ms``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    transport, listener = await loop.create_datagram_endpoint(lambda: WolListener(MAC), sock=sock)
    agent, watch = await watched_agent(
        mosquitto, spawn_agent, "laptop", "--heartbeat-s", "0.5", "--sleep-command", "kill -STOP $PPID",
        "--allow-sleep-after", "0", "--wol-mac", MAC, "--wol-broadcast", "127.0.0.1", "--wol-port", str(port),
        "--sleep-w", "1.5")
    pid = listener.pid = agent.proc.pid
    try:
        power = watch.announcements()[-1]["power"]
        assert power["wake"] == {"kind": "wol", "mac": MAC, "broadcast": "127.0.0.1", "ports": [port],
                                 "payload_on": "ON"}
        assert power["allow_sleep_after_s"] == 0 and power["sleep_w"] == 1.5 and "wake_latency_ms" not in power

        mark = len(watch.events)
        answer = await watch.call("s1", "sleep", {"reason": "idle, and the grid is dirty"})
        assert answer["ok"], answer
        assert answer["result"] == {"sleeping": True, "after_s": 0, "wake": power["wake"]}
        await wait_for(lambda: b"sleeping" in watch.statuses(), 30, what="status sleeping")
        await wait_for(lambda: proc_state(pid) == "T", 30, what="the agent process stopped")
        retained = await asyncio.to_thread(retained_messages, mosquitto.port, watch.status_topic)
        assert retained == {watch.status_topic: b"sleeping"}

        # A packet for another card: refused by the listener, the agent stays stopped.
        await send_magic_packets("02:00:00:00:00:02", "127.0.0.1", [port], repeats=1)
        await wait_for(lambda: listener.rejected, 30, what="the wrong packet refused")
        assert listener.accepted == 0 and proc_state(pid) == "T"

        # The hub's way: the wake method the agent announced.
        wake = power["wake"]
        await send_magic_packets(wake["mac"], wake["broadcast"], wake["ports"], repeats=3, interval_s=0.1)
        await wait_for(lambda: listener.accepted, 30, what="the magic packet")
        await wait_for(lambda: watch.statuses()[-1] == b"online" and watch.statuses().count(b"online") >= 2, 30,
                       what="online again")
        back = await wait_for(lambda: [a for a in watch.announcements(mark) if "wake_latency_ms" in a["power"]], 30,
                              what="re-announcement with the measured wake latency")
        assert back[-1]["power"]["wake_latency_ms"] > 0
        health = await watch.call("h1", "health")
        assert health["ok"] and health["result"]["device_id"] == watch.device_id

        statuses = watch.statuses()
        assert b"offline" not in statuses, statuses
        assert statuses[statuses.index(b"sleeping") + 1:] == [b"online"], statuses
        # No heartbeat between "sleeping" and "online": the hub would take it for an awake device.
        kinds = [(k, p) for k, p in watch.events[mark:] if k in ("status", "energy")]
        between = kinds[kinds.index(("status", b"sleeping")) + 1:kinds.index(("status", b"online"))]
        assert between == [], between
    finally:
        if agent.proc.poll() is None:
            os.kill(pid, signal.SIGCONT)  # never leave it stopped for the teardown
        transport.close()
        watch.close()


async def test_a_failed_sleep_command_comes_back_at_once(mosquitto: Any, spawn_agent: Any) -> None:
    """A sleep command that exits non-zero: the machine did not sleep, the agent reconnects at
    once (``online``, re-announced) and measures no wake latency."""
    agent, watch = await watched_agent(mosquitto, spawn_agent, "watch", "--sleep-command", "exit 3",
                                       "--allow-sleep-after", "0", "--wake-switch-topic", "zigbee2mqtt/desk-plug/set")
    try:
        mark = len(watch.events)
        answer = await watch.call("s1", "sleep")
        assert answer["ok"] and answer["result"]["wake"]["kind"] == "ha_switch", answer
        assert answer["result"]["wake"]["command_topic"] == "zigbee2mqtt/desk-plug/set"
        await wait_for(lambda: watch.statuses()[-2:] == [b"sleeping", b"online"], 30, what="sleeping, then online")
        again = await wait_for(lambda: watch.announcements(mark), 30, what="re-announcement")
        assert "wake_latency_ms" not in again[-1]["power"]
        assert b"offline" not in watch.statuses()
        assert (await watch.call("h1", "health"))["ok"]
    finally:
        watch.close()


async def test_sleep_unavailable_and_bad_params(mosquitto: Any, spawn_agent: Any) -> None:
    agent, watch = await watched_agent(mosquitto, spawn_agent, "watch")
    try:
        power = watch.announcements()[-1]["power"]
        assert "allow_sleep_after_s" not in power and power.get("wake", {"kind": "none"})["kind"] == "none"
        err = (await watch.call("s1", "sleep"))["error"]
        assert err["code"] == "unavailable" and "--sleep-command" in err["message"], err
        err = (await watch.call("s2", "sleep", {"bogus": 1}))["error"]
        assert err["code"] == "bad_request" and "bogus" in err["message"], err
        err = (await watch.call("s3", "sleep", {"reason": "x" * 300}))["error"]
        assert err["code"] == "bad_request" and "reason" in err["message"], err
        err = (await watch.call("s4", "dance"))["error"]
        assert err["code"] == "unknown_method" and "sleep" in err["message"], err
        assert watch.statuses() == [b"online"]
    finally:
        watch.close()


async def test_sleep_refused_while_busy_and_until_idle_long_enough(mosquitto: Any, spawn_agent: Any) -> None:
    """``busy`` while a call runs, then while the last call ended less than
    ``--allow-sleep-after`` ago; each with a retry_after_s the hub waits before asking again."""
    # Seed 1847: the simulated qwen2.5-coder:14b's first call takes 13.8 s — it is still running
    # when the sleep request comes, however slow the machine; it is cancelled, not awaited.
    agent, watch = await watched_agent(mosquitto, spawn_agent, "gpu-box", "--seed", "1847",
                                       "--sleep-command", "true", "--allow-sleep-after", "300", "--wol-mac", MAC)
    try:
        watch.send("long", "infer", {"task": "code", "model": "qwen2.5-coder:14b", "text": "fizzbuzz",
                                     "timeout_ms": 60_000})

        async def running() -> bool:
            health = await watch.call(f"h-{uuid.uuid4().hex[:6]}", "health")
            return health["result"]["active"] == 1

        await wait_for(running, 30, what="the long call running")
        err = (await watch.call("s1", "sleep"))["error"]
        assert err["code"] == "busy" and re.search(r"\b1 call running\b", err["message"]), err
        assert err["retry_after_s"] == 300
        cancel = await watch.call("c1", "cancel", {"id": "long"})
        assert cancel["result"] == {"cancelled": True}
        await wait_for(lambda: watch.answers.get("long"), 30, what="the long call's answer")
        assert watch.answers["long"]["error"]["code"] == "cancelled"

        err = (await watch.call("s2", "sleep"))["error"]
        assert err["code"] == "busy", err
        assert re.fullmatch(r"idle \d+ s of the 300 s it waits before sleeping", err["message"]), err
        assert 0 < err["retry_after_s"] <= 300
        assert b"sleeping" not in watch.statuses()
    finally:
        watch.close()


@pytest.mark.parametrize(("flags", "named", "why"), [
    (["--wol-mac", "nonsense"], "--wol-mac", "not a MAC address"),
    (["--wol-mac", MAC, "--wol-broadcast", "8.8.8.8"], "--wol-broadcast", "not a LAN address"),
    (["--wol-mac", MAC, "--wake-switch-topic", "plug/set"], "--wake-switch-topic", "not both"),
    (["--sleep-command", "systemctl suspend"], "--sleep-command", "needs a way for the hub to wake"),
    (["--wake-switch-topic", "plug/#"], "--wake-switch-topic", "no wildcards"),
    (["--sleep-command", "true", "--wol-mac", MAC, "--allow-sleep-after", "-5"], "--allow-sleep-after",
     "greater than or equal to 0"),
])
def test_bad_power_flags_exit_2_naming_the_flag(flags: list[str], named: str, why: str) -> None:
    out = subprocess.run([sys.executable, "-m", "hub", "agent", "--id", "t-sleep-cli", "--no-mqtt", "--no-zeroconf",
                          *flags], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2, out
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {named}") or named in line, line
    assert why in line, line
