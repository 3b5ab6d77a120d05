"""Two hub processes serve one fleet through an MQTT 5 shared subscription on one Mosquitto; one
is killed (SIGKILL) in the middle of a stream of commands and no command goes unanswered.

Mosquitto drops the in-flight messages of a shared subscriber that dies
(eclipse-mosquitto/mosquitto#2662), so the requester resends, with the same id, what got no
answer within its timeout — the protocol's at-least-once rule (docs/protocol.md, Commands).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .conftest import ROOT, wait_for

N = 300
RESEND_AFTER_S = 3.0


def start_hub(tmp: Path, hub_id: str, broker: str) -> tuple[subprocess.Popen[bytes], str]:
    conf = tmp / f"{hub_id}.toml"
    conf.write_text(f'hub_id = "{hub_id}"\ndata_dir = "{tmp / hub_id}"\nlog_level = "warning"\n'
                    f'[mqtt]\nurl = "{broker}"\n[http]\nport = 0\nrequire_token = "remote"\n[zeroconf]\nenabled = false\n'
                    # an anonymous test broker: trust its devices (tests/test_trust.py covers pairing)
                    '[pairing]\nrequired = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "hub", "run", "--config", str(conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    lines = []
    for _ in range(50):  # log lines may come before the one that names the API
        lines.append(proc.stdout.readline().decode())
        if m := re.search(r"API (http://\S+)", lines[-1]):
            return proc, m.group(1)
    raise AssertionError("".join(lines))


async def sees(api: str, device_id: str) -> bool:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{api}/api/devices/{device_id}") as r:
            return r.status == 200 and (await r.json())["online"]


async def test_two_hubs_share_commands_and_survive_a_kill(mosquitto: Any, spawn_agent: Any, tmp_path: Path) -> None:
    hubs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for name in ("hub-a", "hub-b"):
            hubs.append(start_hub(tmp_path, name, mosquitto.url))
        agent = spawn_agent(mosquitto.url, "watch", None, "--no-zeroconf", "--echo")
        for _, api in hubs:
            await wait_for(lambda api=api: sees(api, agent.device_id), 60, interval=0.1, what=f"{api} sees the agent")
        loop = asyncio.get_running_loop()
        answers: dict[str, str] = {}
        done = asyncio.Event()

        def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
            body = json.loads(m.payload)
            if body.get("ok"):
                loop.call_soon_threadsafe(answers.setdefault, body["id"], body["result"]["hub"])
                if len(answers) >= N - 1:
                    loop.call_soon_threadsafe(done.set)

        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"load-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
        c.on_message = on_message
        c.on_subscribe = lambda *_: subscribed.set()
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        c.subscribe("sovereign/reply/load/replies", qos=1)
        await asyncio.to_thread(subscribed.wait, 30)
        assert subscribed.is_set(), "no SUBACK"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "sovereign/reply/load/replies"
        sent: dict[str, float] = {}

        def send(i: int) -> None:
            rid = f"cmd-{i}"
            c.publish("sovereign/cmd/infer", json.dumps({"id": rid, "task": "echo", "text": str(i)}), qos=1,
                      properties=props)
            sent[rid] = time.monotonic()

        killed_at = None
        for i in range(N):
            send(i)
            if i == N // 2:
                hubs[0][0].send_signal(signal.SIGKILL)  # mid-load, no goodbye
                killed_at = time.monotonic()
            await asyncio.sleep(0.005)  # the scenario: a stream of commands over time, the kill in its middle
        assert killed_at is not None
        resent = 0
        deadline = time.monotonic() + 120
        while len(answers) < N:
            assert time.monotonic() < deadline, f"{N - len(answers)} commands never answered"
            await asyncio.sleep(0.2)  # the requester's resend timer ticks
            for rid, at in list(sent.items()):
                if rid not in answers and time.monotonic() - at > RESEND_AFTER_S:
                    send(int(rid.split("-")[1]))
                    resent += 1
        c.loop_stop()
        c.disconnect()
        by_hub = {h: sum(1 for v in answers.values() if v == h) for h in ("hub-a", "hub-b")}
        print(f"answers by hub {by_hub}, resent {resent}")
        assert len(answers) == N
        assert by_hub["hub-a"] > 0 and by_hub["hub-b"] > N // 4, by_hub
    finally:
        for proc, _ in hubs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
