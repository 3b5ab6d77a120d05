"""The voice plugin end to end: a real hub and Mosquitto, a real ``phone`` agent (Whisper tiny.en,
the intent classifier, the wake word) and a ``watch`` (the wake word and the classifier), speech
synthesised by espeak-ng. Utterances by HTTP (JSON and multipart), by MQTT command and as live
dictation frames; actions checked where a home automation would read them, on the broker; held
actions confirmed by HTTP and by voice, or left to expire; and the bad inputs a client can send,
each refused with a reason while the hub keeps serving."""

from __future__ import annotations

import base64
import io
import json
import queue
import uuid
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.voice.audio import decode_audio
from plugins.voice.stream import encode_frame

from .conftest import wait_for
from .test_dispatch import fleet
from .voice_fixtures import speak, words

VOICE = "espeak-ng:en-us"


# -- audio ---------------------------------------------------------------------------------------


def wav(samples: bytes, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()


def pcm16k(path: Path) -> bytes:
    return decode_audio(path.read_bytes()).samples.astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return b"\0\0" * int(seconds * 16000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the hub's HTTP API and the broker -----------------------------------------------------------


async def call(hub: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, hub.http_url + path, **kw) as r:
            return r.status, await r.json(content_type=None)


async def voice_post(hub: Any, body: dict[str, Any]) -> tuple[int, Any]:
    return await call(hub, "POST", "/api/voice", json=body)


class Watcher:
    """A paho MQTT 5 client on the real broker, collecting what arrives on its subscriptions."""

    def __init__(self, port: int, *filters: str) -> None:
        self.messages: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
        self.seen: list[paho.MQTTMessage] = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        subscribed: "queue.Queue[bool]" = queue.Queue()
        self.c.on_subscribe = lambda *_: subscribed.put(True)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe([(f, 1) for f in filters])
        subscribed.get(timeout=30)

    def drain(self) -> list[paho.MQTTMessage]:
        while True:
            try:
                self.seen.append(self.messages.get_nowait())
            except queue.Empty:
                return self.seen

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.drain() if m.topic == topic]

    def publish(self, topic: str, payload: bytes | str, props: Properties | None = None) -> None:
        self.c.publish(topic, payload, qos=1, properties=props).wait_for_publish(30)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def stage(u: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in u["stages"] if s["name"] == name]
    assert found, f"no {name} stage in {u['stages']}"
    return found[0]


def frames(pcm: bytes, session: int, chunk_bytes: int = 16000) -> list[bytes]:
    pieces = [pcm[i:i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
    return [encode_frame(session, seq, p, start=seq == 0, end=seq == len(pieces) - 1) for seq, p in enumerate(pieces)]


async def test_voice_end_to_end_with_real_agents(tmp_path: Path, mosquitto: Any, make_hub: Any,
                                                 spawn_agent: Any) -> None:
    say = {name: speak(text, VOICE, tmp_path / f"{name}.wav") for name, text in {
        "kitchen": "turn off the kitchen lights", "bedroom": "turn on the bedroom light", "yes": "yes",
        "wake": "okay nabu"}.items()}
    kitchen = pcm16k(say["kitchen"])
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"voice": {"stream_idle_s": 1.0}}) as hub:
        assert hub.plugins.statuses["voice"].state == "loaded", hub.plugins.statuses["voice"].error
        root = hub.config.mqtt.topic_root
        phone, watch = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()), ("watch", ()))
        mqtt = Watcher(mosquitto.port, f"{root}/voice/action", f"{root}/reply/t1/#")
        try:
            # -- one utterance as JSON: sound → Whisper on the phone → hassil → the action on the broker
            status, u = await voice_post(hub, {"data": b64(say["kitchen"].read_bytes())})
            assert status == 200, u
            assert {"turn", "off", "kitchen"} <= set(words(u["text"])), u["text"]
            assert (u["layer"], u["status"], u["source"]) == ("hassil", "published", "api")
            t = stage(u, "transcribe")
            assert t["device"] == phone.device_id and t["model"] == "whisper-tiny.en"
            assert t["ms"] > 0 and t["joules"] > 0 and u["audio_s"] > 1
            [action] = await wait_for(lambda: mqtt.on(f"{root}/voice/action"), 30, what="the kitchen action")
            assert action["intent"] == "HassTurnOff" and action["slots"] == {"area": "Kitchen", "domain": "light"}
            assert (action["utterance"], action["confirmed"], action["source"]) == (u["id"], False, "api")
            assert action["layer"] == "hassil" and not action["sensitive"]

            # -- with the wake word first: heard by a tiny device, cut there, the rest transcribed
            spoken = wav(silence(0.3) + pcm16k(say["wake"]) + silence(0.6) + kitchen)
            status, u = await voice_post(hub, {"data": b64(spoken), "wake": True})
            assert status == 200, u
            w = stage(u, "wake")
            assert w["device"] in (phone.device_id, watch.device_id) and w["model"] == "okay_nabu"
            assert w["note"] == "detected"
            assert (u["layer"], u["status"]) == ("hassil", "published") and "kitchen" in words(u["text"])
            assert stage(u, "transcribe")["device"] == phone.device_id
            await wait_for(lambda: [a for a in mqtt.on(f"{root}/voice/action") if a["utterance"] == u["id"]], 30,
                           what="the woken utterance's action")
            # Without the wake word, nothing is transcribed.
            status, u = await voice_post(hub, {"data": b64(say["kitchen"].read_bytes()), "wake": True})
            assert u["status"] == "no_wake" and [s["name"] for s in u["stages"]] == ["wake"], u

            # -- a sensitive action is held until confirmed over HTTP
            status, held = await voice_post(hub, {"text": "unlock the front door"})
            assert status == 200 and held["status"] == "awaiting_confirmation", held
            assert held["actions"][0]["sensitive"] and held["expires_at"] > held["at"]
            status, listing = await call(hub, "GET", "/api/voice")
            assert [p["id"] for p in listing["pending"]] == [held["id"]]
            # Actions are published in order on one connection: once a later one is in, the held
            # one would have been too.
            status, later = await voice_post(hub, {"text": "turn on the bedroom light"})
            assert later["status"] == "published"
            await wait_for(lambda: [a for a in mqtt.on(f"{root}/voice/action") if a["utterance"] == later["id"]], 30,
                           what="the bedroom action")
            assert not [a for a in mqtt.on(f"{root}/voice/action") if a["utterance"] == held["id"]]
            status, done = await call(hub, "POST", f"/api/voice/{held['id']}/confirm", json={"confirm": True})
            assert status == 200 and (done["layer"], done["status"], done["confirms"]) == ("confirmation", "published",
                                                                                          held["id"])
            [unlock] = await wait_for(lambda: [a for a in mqtt.on(f"{root}/voice/action")
                                               if a["utterance"] == held["id"]], 30, what="the confirmed unlock")
            assert unlock["confirmed"] is True and unlock["slots"]["name"] == "Front Door"
            status, again = await call(hub, "POST", f"/api/voice/{held['id']}/confirm", json={"confirm": True})
            assert status == 404 and again["error"]["code"] == "not_found"

            # -- ... or by a spoken "yes" from the same source
            status, held = await voice_post(hub, {"text": "unlock the front door"})
            assert held["status"] == "awaiting_confirmation"
            status, yes = await voice_post(hub, {"data": b64(say["yes"].read_bytes())})
            assert status == 200 and "yes" in words(yes["text"]), yes
            assert (yes["layer"], yes["status"], yes["confirms"]) == ("confirmation", "published", held["id"])
            [unlock] = await wait_for(lambda: [a for a in mqtt.on(f"{root}/voice/action")
                                               if a["utterance"] == held["id"]], 30, what="the spoken confirmation")
            assert unlock["confirmed"] is True

            # -- a text that is no command: hassil has no sentence for it, the classifier (a tiny device) no label
            status, u = await voice_post(hub, {"text": "what is the capital of france"})
            assert status == 200 and u["status"] != "published" and not u["actions"]
            assert stage(u, "classifier")["device"] in (phone.device_id, watch.device_id)

            # -- an MQTT command, answered on its MQTT 5 response topic with the correlation data
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = f"{root}/reply/t1/voice", b"corr-7"
            mqtt.publish(f"{root}/cmd/voice", json.dumps({"id": "cmd-7", "data": b64(say["bedroom"].read_bytes())}),
                         props)
            [reply] = await wait_for(lambda: [m for m in mqtt.drain() if m.topic == f"{root}/reply/t1/voice"], 60,
                                     what="the command's reply")
            assert reply.properties.CorrelationData == b"corr-7"
            doc = json.loads(reply.payload)
            assert doc["v"] == 1 and doc["id"] == "cmd-7" and doc["ok"], doc
            assert doc["result"]["source"] == "mqtt" and doc["result"]["status"] == "published"
            assert doc["result"]["actions"][0]["intent"] == "HassTurnOn"

            # -- live dictation from the phone: numbered 16 kHz frames on its own topic
            topic = f"{root}/device/{phone.device_id}/voice"
            for f in frames(silence(0.2) + kitchen + silence(0.3), session=41):
                mqtt.publish(topic, f)
            src = f"device:{phone.device_id}"
            [u] = await wait_for(lambda: utterances(hub, lambda u: u["source"] == src), 60,
                                 what="the dictated utterance")
            assert u["status"] == "published" and "kitchen" in words(u["text"]) and "partial" not in u
            # A gap (seq 1 never sent) and frames out of order: put back in order, marked partial.
            sent = frames(silence(0.2) + kitchen + silence(0.3), session=42, chunk_bytes=8000)
            for seq in [0, 3, 2, *range(4, len(sent))]:
                mqtt.publish(topic, sent[seq])
            [partial] = await wait_for(lambda: utterances(hub, lambda u: u["source"] == src and "partial" in u), 60,
                                       what="the partial utterance")
            assert "seq 1" in partial["partial"] and "never came" in partial["partial"], partial
            # A frame from a device the hub does not know: refused, counted.
            stranger = f"{root}/device/nobody-{uuid.uuid4().hex[:6]}/voice"
            mqtt.publish(stranger, frames(kitchen, session=1)[0])
            await wait_for(lambda: rejected(hub, stranger), 30, what="the stranger's frame refused")
            status, listing = await call(hub, "GET", "/api/voice")
            assert listing["rejected"][stranger] == 1 and "not known to the hub" in listing["last_rejection"]

            # -- bad inputs: each refused with a reason a person can act on
            one_s = kitchen[:32000]
            cases = [
                ({"data": b64(b"this is plain text, not audio at all")}, 400, "bad_audio", "not a WAV file"),
                ({"data": b64(wav(one_s)[:-8000])}, 400, "bad_audio", "truncated"),
                ({"data": b64(wav(np.zeros(16000 * 16, "<i2").tobytes(), channels=16))}, 400, "bad_audio",
                 "16 channels"),
                ({"data": b64(wav(one_s[:8000], rate=4000))}, 400, "bad_rate", "4000 Hz"),
                ({"text": "turn on the bedroom light", "data": b64(wav(one_s))}, 400, "bad_request", "not both"),
                ({"data": "this is not base64!"}, 400, "bad_request", "not valid base64"),
                ({"texte": "typo"}, 400, "bad_request", "texte"),
            ]
            for body, code, err, words_in in cases:
                status, out = await voice_post(hub, body)
                assert (status, out["error"]["code"]) == (code, err), (body.keys(), out)
                assert words_in in out["error"]["message"], out
            # Silence: nothing to transcribe, and no device is asked.
            status, quiet = await voice_post(hub, {"data": b64(wav(silence(1.5)))})
            assert status == 200 and quiet["status"] == "no_speech"
            assert [s["name"] for s in quiet["stages"]] == [] and "silence" in quiet["reason"]
            # Ten minutes to the dispatcher with a 300 ms budget: refused before any device runs it.
            ten_minutes = wav(b"\x80" * (600 * 8000), rate=8000, width=1)
            status, out = await call(hub, "POST", "/api/infer", json={"task": "transcribe", "data": b64(ten_minutes),
                                                                      "budget_ms": 300})
            assert status == 422 and out["error"]["code"] == "over_budget", out
            assert "600.0 s of audio" in out["error"]["message"] and "300 ms budget" in out["error"]["message"]

            # And the hub is still serving: an utterance after all of that.
            status, u = await voice_post(hub, {"text": "turn off the kitchen lights"})
            assert status == 200 and u["status"] == "published"
            status, listing = await call(hub, "GET", "/api/voice")
            assert listing["rejected"]["POST /api/voice"] == len(cases)
            assert listing["counts"]["actions"] >= 7
        finally:
            mqtt.close()


async def utterances(hub: Any, keep: Any) -> list[dict[str, Any]]:
    """The utterances in ``GET /api/voice`` that ``keep`` keeps (for wait_for: empty is false)."""
    _, listing = await call(hub, "GET", "/api/voice")
    return [u for u in listing["utterances"] if keep(u)]


async def rejected(hub: Any, where: str) -> bool:
    status, listing = await call(hub, "GET", "/api/voice")
    return where in listing["rejected"]


async def test_multipart_uploads(mosquitto: Any, make_hub: Any) -> None:
    """``POST /api/voice`` as a form upload (what ``curl -F audio=@clip.wav`` sends). No agent:
    the audio part is silence (decoded, then nothing to transcribe) and the text part goes to
    hassil."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        form = aiohttp.FormData()
        form.add_field("audio", wav(silence(1.0)), filename="a.wav", content_type="audio/wav")
        form.add_field("id", "upload-1")
        status, u = await call(hub, "POST", "/api/voice", data=form)
        assert status == 200, u
        assert u["status"] == "no_speech" and u["audio_s"] == 1.0 and u["source"] == "api"
        form = aiohttp.FormData()
        form.add_field("text", "turn on the bedroom light", content_type="text/plain")  # multipart, not a urlencoded form
        status, u = await call(hub, "POST", "/api/voice", data=form)
        assert status == 200 and (u["layer"], u["status"]) == ("hassil", "published"), u
        form = aiohttp.FormData()
        form.add_field("audio", wav(silence(1.0)), filename="a.wav", content_type="audio/wav")
        form.add_field("language", "fr")
        status, out = await call(hub, "POST", "/api/voice", data=form)
        assert status == 400 and "unknown part 'language'" in out["error"]["message"], out


async def test_a_held_action_expires(tmp_path: Path, mosquitto: Any, make_hub: Any) -> None:
    """Hassil alone decides here (no agent): held for 0.2 s, then gone."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"voice": {"confirm_timeout_s": 0.2}}) as hub:
        root = hub.config.mqtt.topic_root
        mqtt = Watcher(mosquitto.port, f"{root}/voice/action")
        try:
            status, held = await voice_post(hub, {"text": "unlock the front door"})
            assert status == 200 and held["status"] == "awaiting_confirmation", held
            assert held["expires_at"] == pytest.approx(held["at"] + 0.2)

            async def expired() -> bool:
                _, listing = await call(hub, "GET", "/api/voice")
                mine = [u for u in listing["utterances"] if u["id"] == held["id"]]
                return not listing["pending"] and mine[0]["status"] == "expired"

            await wait_for(expired, 10, what="the held action to expire")
            status, out = await call(hub, "POST", f"/api/voice/{held['id']}/confirm", json={"confirm": True})
            assert status == 404 and "expired" in out["error"]["message"]
            # A "yes" now answers nothing: it is just text that matches no command.
            status, yes = await voice_post(hub, {"text": "yes"})
            assert yes["layer"] != "confirmation" and not yes["actions"]
            status, listing = await call(hub, "GET", "/api/voice")
            assert listing["counts"]["expired"] == 1
            # The marker: an action published after the expiry arrives, the unlock never did.
            status, u = await voice_post(hub, {"text": "turn on the bedroom light"})
            await wait_for(lambda: mqtt.on(f"{root}/voice/action"), 30, what="the bedroom action")
            assert [a["utterance"] for a in mqtt.on(f"{root}/voice/action")] == [u["id"]]
        finally:
            mqtt.close()
