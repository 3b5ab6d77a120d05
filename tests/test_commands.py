"""Commands from other devices on ``sovereign/cmd/infer``: MQTT 5 (response topic and correlation
data), MQTT 3.1.1 (``reply_to`` and ``id`` in the payload), ``mosquitto_rr``, streaming, and
bad commands answered with clear errors — through a real Mosquitto to real agent processes."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .conftest import wait_for
from .test_dispatch import fleet


@contextmanager
def client(port: int, protocol: int, reply_topic: str) -> Iterator[tuple[paho.Client, "queue.Queue[paho.MQTTMessage]"]]:
    """A paho client subscribed to ``reply_topic``, its messages in a queue; disconnected on exit."""
    q: queue.Queue[paho.MQTTMessage] = queue.Queue()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cmd-{uuid.uuid4().hex[:6]}", protocol=protocol)
    c.on_message = lambda _c, _u, m: q.put(m)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        subscribed = queue.Queue()  # type: ignore[var-annotated]
        c.on_subscribe = lambda *a: subscribed.put(True)
        c.subscribe(reply_topic, qos=1)
        subscribed.get(timeout=30)
        yield c, q
    finally:
        c.loop_stop()
        c.disconnect()


async def get(q: "queue.Queue[paho.MQTTMessage]", timeout: float = 30) -> paho.MQTTMessage:
    return await asyncio.to_thread(q.get, True, timeout)


def v5_props(reply_topic: str, corr: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = corr
    return props


async def test_mqtt5_command_with_correlation_and_streaming(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        [agent] = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        with client(mosquitto.port, paho.MQTTv5, "sovereign/reply/phone/replies") as (c, q):
            c.publish("sovereign/cmd/infer", json.dumps({"task": "echo", "text": "ping"}), qos=1,
                      properties=v5_props("sovereign/reply/phone/replies", b"corr-1"))
            msg = await get(q)
            assert msg.properties.CorrelationData == b"corr-1"
            body = json.loads(msg.payload)
            assert body["ok"] and body["result"]["output"] == "ping"
            assert body["result"]["served_by"]["device"] == agent.device_id

            [laptop] = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ()))
            c.publish("sovereign/cmd/infer", json.dumps({"task": "summarize", "text": "notes", "stream": True,
                                                         "id": "s1", "budget_ms": 20000}),
                      qos=1, properties=v5_props("sovereign/reply/phone/replies", b"corr-2"))
            chunks, final = [], None
            while final is None:
                m = json.loads((await get(q)).payload)
                if m.get("type") == "chunk":
                    chunks.append(m)
                else:
                    final = m
            assert [c_["seq"] for c_ in chunks] == list(range(len(chunks))) and len(chunks) > 3
            assert "".join(c_["chunk"] for c_ in chunks) == final["result"]["output"]
            assert final["id"] == "s1" and final["result"]["served_by"]["device"] == laptop.device_id


async def test_mqtt311_client_names_reply_to_in_the_payload(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        with client(mosquitto.port, paho.MQTTv311, "sovereign/reply/satellite/replies") as (c, q):
            c.publish("sovereign/cmd/infer", json.dumps({"task": "echo", "text": "old client", "id": "v311-1",
                                                         "reply_to": "sovereign/reply/satellite/replies"}), qos=1)
            body = json.loads((await get(q)).payload)
            assert body["id"] == "v311-1" and body["ok"] and body["result"]["output"] == "old client"


async def test_mosquitto_rr(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5", "-t", "sovereign/cmd/infer",
            "-e", "sovereign/reply/rr/reply", "-m", json.dumps({"task": "echo", "text": "from the shell"}), "-W", "30",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        body = json.loads(out)
        assert body["ok"] and body["result"]["output"] == "from the shell"


async def test_bad_commands(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        with client(mosquitto.port, paho.MQTTv5, "#") as (c, q):
            def send(payload: str | bytes, reply: str | None = "sovereign/reply/x/replies") -> None:
                props = v5_props(reply, b"c") if reply else None
                c.publish("sovereign/cmd/infer", payload, qos=1, properties=props)

            async def reply_on(topic: str, seen: list[str] | None = None) -> dict[str, Any]:
                while True:
                    m = await get(q)
                    if seen is not None:
                        seen.append(m.topic)
                    if m.topic == topic:
                        return json.loads(m.payload)

            send("{not json")
            body = await reply_on("sovereign/reply/x/replies")
            assert not body["ok"] and body["error"]["code"] == "bad_request" and "JSON" in body["error"]["message"]
            send(json.dumps({"task": "echo", "text": "x", "budget_ms": 0}))
            body = await reply_on("sovereign/reply/x/replies")
            assert body["error"]["code"] == "bad_request" and "budget_ms" in body["error"]["message"]
            before = hub.state.counters.get("rejected_commands", 0)
            send(json.dumps({"task": "echo", "text": "x"}), reply="elsewhere/steal")  # outside the root
            send(json.dumps({"task": "echo", "text": "x"}), reply=None)  # nowhere to answer
            await wait_for(lambda: hub.state.counters.get("rejected_commands", 0) >= before + 2, 30)
            # The marker: a good command sent after them. Its answer comes after anything the
            # refused ones could have caused (the hub takes commands in order, and refused them first).
            seen: list[str] = []
            send(json.dumps({"task": "echo", "text": "still here"}))
            body = await reply_on("sovereign/reply/x/replies", seen)
            assert body["ok"] and body["result"]["output"] == "still here"
            assert "elsewhere/steal" not in seen
