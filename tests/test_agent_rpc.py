"""The agent answers requests on its RPC topic: MQTT 5 response topic + correlation data,
MQTT 3.1.1 ``reply_to`` in the payload, and mosquitto_rr from mosquitto-clients."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .conftest import wait_for


def _client(port: int, protocol: int) -> tuple[paho.Client, "queue.Queue[paho.MQTTMessage]"]:
    q: queue.Queue[paho.MQTTMessage] = queue.Queue()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rpc-{uuid.uuid4().hex[:6]}", protocol=protocol)
    c.on_message = lambda _c, _u, m: q.put(m)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, q


async def online_agent(make_hub: Any, mosquitto: Any, spawn_agent: Any, profile: str, *extra: str) -> Any:
    """A real agent process, seen online by a hub (so its RPC subscription is in place)."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, profile, None, "--no-zeroconf", *extra)
        await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online, 60, what="agent online")
    return agent


async def test_rpc_v5_with_correlation(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    agent = await online_agent(make_hub, mosquitto, spawn_agent, "watch")
    c, q = _client(mosquitto.port, paho.MQTTv5)
    c.subscribe("sovereign/test/replies", qos=1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "sovereign/test/replies"
    props.CorrelationData = b"corr-1"
    c.publish(f"sovereign/device/{agent.device_id}/rpc",
              json.dumps({"v": 1, "id": "r1", "method": "echo", "params": {"hello": "world"}}), qos=1, properties=props)
    msg = q.get(timeout=30)
    body = json.loads(msg.payload)
    assert msg.properties.CorrelationData == b"corr-1"
    assert body["ok"] and body["id"] == "r1" and body["result"] == {"echo": {"hello": "world"}}
    assert body["timings"]["compute_ms"] >= 0
    # Errors come back with a code and a message.
    c.publish(f"sovereign/device/{agent.device_id}/rpc", json.dumps({"v": 1, "id": "r2", "method": "dance"}),
              qos=1, properties=props)
    err = json.loads(q.get(timeout=30).payload)
    assert not err["ok"] and err["error"]["code"] == "unknown_method"
    c.publish(f"sovereign/device/{agent.device_id}/rpc", b"{not json", qos=1, properties=props)
    err = json.loads(q.get(timeout=30).payload)
    assert not err["ok"] and err["error"]["code"] == "bad_request" and "JSON" in err["error"]["message"]
    c.loop_stop()


async def test_rpc_v311_reply_to_and_root_confinement(mosquitto: Any, spawn_agent: Any, make_hub: Any) -> None:
    agent = await online_agent(make_hub, mosquitto, spawn_agent, "phone")
    c, q = _client(mosquitto.port, paho.MQTTv311)
    c.subscribe("sovereign/test/v311", qos=1)
    c.subscribe("elsewhere/replies", qos=1)
    c.publish(f"sovereign/device/{agent.device_id}/rpc",
              json.dumps({"v": 1, "id": "h1", "method": "health", "reply_to": "elsewhere/replies"}), qos=1)
    c.publish(f"sovereign/device/{agent.device_id}/rpc",
              json.dumps({"v": 1, "id": "h2", "method": "health", "reply_to": "sovereign/test/v311"}), qos=1)
    msg = q.get(timeout=30)
    assert msg.topic == "sovereign/test/v311", "no answer may go outside the topic root"
    body = json.loads(msg.payload)
    assert body["id"] == "h2" and body["result"]["device_id"] == agent.device_id
    assert q.empty()
    c.loop_stop()


async def test_rpc_with_mosquitto_rr(mosquitto: Any, spawn_agent: Any, make_hub: Any) -> None:
    agent = await online_agent(make_hub, mosquitto, spawn_agent, "laptop")
    out = subprocess.run(
        ["mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "mqttv5", "-q", "1",
         "-t", f"sovereign/device/{agent.device_id}/rpc", "-e", "sovereign/test/rr", "-W", "30",
         "-m", json.dumps({"v": 1, "id": "rr1", "method": "echo", "params": {"n": 1}})],
        capture_output=True, timeout=60, check=True)
    assert json.loads(out.stdout)["result"] == {"echo": {"n": 1}}


async def test_infer_timeout_cancel_and_bad_params(mosquitto: Any, spawn_agent: Any, make_hub: Any) -> None:
    """On the agent itself: a call past its timeout_ms answers ``timeout``, a ``cancel`` stops a
    running call, and bad params name the field."""
    # Seed 8: the simulated summariser's second call (the one cancelled) takes 1.36 s, so the
    # cancel, sent right behind it, comes while it runs however slow the machine is.
    agent = await online_agent(make_hub, mosquitto, spawn_agent, "laptop", "--seed", "8")
    c, q = _client(mosquitto.port, paho.MQTTv5)
    c.subscribe("sovereign/test/infer", qos=1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "sovereign/test/infer"
    topic = f"sovereign/device/{agent.device_id}/rpc"

    def send(rid: str, method: str, params: dict[str, Any]) -> None:
        c.publish(topic, json.dumps({"v": 1, "id": rid, "method": method, "params": params}), qos=1, properties=props)

    def answers(n: int) -> dict[str, Any]:
        out = {}
        for _ in range(n):
            body = json.loads(q.get(timeout=30).payload)
            out[body["id"]] = body
        return out

    qa = {"task": "summarize", "model": "smollm2-135m", "text": "notes"}
    send("slow", "infer", {**qa, "timeout_ms": 30})
    assert answers(1)["slow"]["error"]["code"] == "timeout"
    # Both on one connection, in order: the agent starts "long" before it reads the cancel.
    send("long", "infer", {**qa, "timeout_ms": 20_000})
    send("stop", "cancel", {"id": "long"})
    got = answers(2)
    assert got["stop"]["result"] == {"cancelled": True}
    assert got["long"]["error"]["code"] == "cancelled"
    send("bad1", "infer", {**qa, "model": "gpt-99"})
    send("bad2", "infer", {**qa, "task": "embed"})
    send("bad3", "infer", {**qa, "timeout_ms": -1})
    got = answers(3)
    assert got["bad1"]["error"]["code"] == "unknown_model" and "smollm2-135m" in got["bad1"]["error"]["message"]
    assert got["bad2"]["error"]["code"] == "bad_request" and "does not do 'embed'" in got["bad2"]["error"]["message"]
    assert got["bad3"]["error"]["code"] == "bad_request" and "params: timeout_ms" in got["bad3"]["error"]["message"]
    send("ok", "infer", {**qa, "timeout_ms": 5000})
    ok = answers(1)["ok"]
    assert ok["ok"] and ok["result"]["simulated"] and ok["result"]["joules"] > 0 and ok["result"]["joules_estimated"]
    c.loop_stop()


async def test_measured_latency_is_advertised(mosquitto: Any, spawn_agent: Any, make_hub: Any) -> None:
    """The watch profile advertises 4 ms for its intent classifier; the real LiteRT model takes
    microseconds, and after 20 calls the agent re-announces what it measured."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "watch", None, "--no-zeroconf")
        await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online, 60, what="agent online")

        def advertised() -> Any:
            return next(m.latency_ms for m in hub.registry.get(agent.device_id).capability.models
                        if m.name == "intent-tiny")

        assert advertised().p50 == 4
        for i in range(20):
            resp = await hub.rpc.call(agent.device_id, "infer", {"task": "intent", "model": "intent-tiny",
                                                                 "text": f"lights off {i}"}, 5)
            assert resp.ok, resp
        await wait_for(lambda: advertised().p50 < 1, 30, what="re-announced latency")
        assert advertised().p95 >= advertised().p50


async def test_a_streamed_answer_is_bounded_by_its_silences_not_its_length(mosquitto: Any, make_hub: Any) -> None:
    """A device that streams steadily for longer than the call's limit is not cut mid-sentence
    (a slow model on a busy machine); one that falls silent for that long is."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        device, q = _client(mosquitto.port, paho.MQTTv311)  # as the MicroPython firmware: ids, no properties
        subscribed = threading.Event()
        device.on_subscribe = lambda *_: subscribed.set()
        device.subscribe("sovereign/device/streamer/rpc", qos=1)
        assert await asyncio.to_thread(subscribed.wait, 30), "no SUBACK"

        def serve(chunks: int, then_answer: bool) -> None:
            req = json.loads(q.get(timeout=30).payload)
            for i in range(chunks):
                device.publish(req["reply_to"], json.dumps({"v": 1, "type": "chunk", "id": req["id"], "seq": i,
                                                            "chunk": f"w{i} "}), qos=1)
                time.sleep(0.1)  # the device's pace: well inside the 2 s silence allowed
            if then_answer:
                device.publish(req["reply_to"], json.dumps({"v": 1, "id": req["id"], "ok": True, "chunks": chunks,
                                                            "result": {"output": "done"}}), qos=1)

        try:
            for chunks, answers in ((40, True), (3, False)):
                got: list[str] = []

                async def on_chunk(text: str) -> None:
                    got.append(text)

                served = asyncio.create_task(asyncio.to_thread(serve, chunks, answers))
                t0 = time.monotonic()
                resp = await hub.rpc.call("streamer", "infer", {"task": "qa", "text": "go"}, 2.0, on_chunk=on_chunk)
                took = time.monotonic() - t0
                await served
                assert len(got) == chunks and got[0] == "w0 "
                if answers:
                    assert resp.ok and resp.result == {"output": "done"}, resp
                    assert took > 2.0, "longer than the limit, and not cut: the limit is on silences"
                else:
                    assert not resp.ok and resp.error is not None and resp.error.code == "timeout"
                    assert "of silence" in resp.error.message
        finally:
            device.loop_stop()
            device.disconnect()
