"""The voice plugin's Wyoming server (plugins/voice/wyoming.py), spoken to over real TCP with the
``wyoming`` package's own client, as Home Assistant does: a real hub and broker, a real ``phone``
agent transcribing with Whisper tiny.en, speech synthesised by espeak-ng, the wake word detected
by microWakeWord in the hub. Also: bad events, clients that vanish, peers that are not allowed,
and a server that will not listen beyond loopback unguarded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import warnings
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

with warnings.catch_warnings():  # wyoming.audio imports audioop, deprecated since 3.11
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.event import Event
    from wyoming.handle import Handled, NotHandled
    from wyoming.info import Describe, Info
    from wyoming.wake import Detect, Detection

from hub.broker import free_port
from hub.config import ConfigError
from hub.voice.audio import decode_audio
from plugins.voice.intents import HomeVocabulary
from plugins.voice.pipeline import PipelineSettings, VoicePipeline
from plugins.voice.wyoming import WyomingServer

from .test_dispatch import fleet
from .voice_fixtures import speak, words

VOICE = "espeak-ng:en-us"


def pcm_of(path: Path) -> tuple[bytes, int, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()


def pcm16k(path: Path) -> np.ndarray:
    """The file as 16 kHz mono int16, as Home Assistant streams it."""
    return decode_audio(path.read_bytes()).samples


def silence(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    return b"\0\0" * int(seconds * rate) * channels


async def send_audio(client: AsyncTcpClient, pcm: bytes, rate: int, channels: int = 1, chunk_ms: int = 64,
                     stop: bool = True, timestamps: bool = True) -> None:
    """audio-start, chunks of ``chunk_ms``, audio-stop; timestamps in ms as Home Assistant sends them."""
    await client.write_event(AudioStart(rate=rate, width=2, channels=channels, timestamp=0).event())
    step = int(rate * chunk_ms / 1000) * 2 * channels
    for i in range(0, len(pcm), step):
        ts = (i // (2 * channels)) * 1000 // rate if timestamps else None
        await client.write_event(AudioChunk(rate=rate, width=2, channels=channels, audio=pcm[i:i + step],
                                            timestamp=ts).event())
    if stop:
        await client.write_event(AudioStop().event())


async def next_event(client: AsyncTcpClient, timeout: float = 60.0) -> Event | None:
    return await asyncio.wait_for(client.read_event(), timeout)


async def closed(client: AsyncTcpClient) -> bool:
    """The server ended the connection (an end of stream, or a reset when it closed with
    events of ours still unread)."""
    try:
        return await next_event(client, 10) is None
    except ConnectionError:
        return True


async def test_asr_wake_and_handle_against_a_real_fleet(tmp_path: Path, mosquitto: Any, make_hub: Any,
                                                        spawn_agent: Any, caplog: pytest.LogCaptureFixture) -> None:
    command = speak("turn off the kitchen lights", VOICE, tmp_path / "command.wav")
    wake = speak("okay nabu", VOICE, tmp_path / "wake.wav")
    port = free_port()
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"voice": {"wyoming_port": port}}) as hub:
        assert hub.plugins.statuses["voice"].state == "loaded", hub.plugins.statuses["voice"].error
        # What Home Assistant asks first, with a one-second timeout: answered before any agent is up.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Describe().event())
            info = Info.from_event(await next_event(c, 1.0))
        [asr] = info.asr
        assert asr.name == "sovereign" and asr.installed and asr.models[0].name == "fleet"
        assert asr.models[0].installed and asr.models[0].languages == ["en"]
        assert "faster-whisper" in asr.attribution.name and "router" in asr.attribution.name
        [wake_program] = info.wake
        assert [m.name for m in wake_program.models] == ["okay_nabu"] and wake_program.models[0].phrase == "Okay Nabu"
        assert info.handle[0].installed and info.handle[0].models[0].languages == ["en"]

        [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))

        # asr, the way Home Assistant sends it: transcribe, 16 kHz mono in chunks, audio-stop.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Transcribe(language="en").event())
            await send_audio(c, silence(0.3) + pcm16k(command).tobytes() + silence(0.3), 16000)
            event = await next_event(c)
            assert event is not None and Transcript.is_type(event.type), event
            text = Transcript.from_event(event).text
            assert {"turn", "off", "kitchen"} <= set(words(text)), text
            # The same connection takes another request: espeak's own 22.05 kHz, as stereo.
            mono, rate, _ = pcm_of(command)
            stereo = np.repeat(np.frombuffer(mono, dtype="<i2"), 2).tobytes()
            await send_audio(c, stereo, rate, channels=2, timestamps=False)
            event = await next_event(c)
            assert event is not None and Transcript.is_type(event.type), event
            assert {"turn", "off", "kitchen"} <= set(words(Transcript.from_event(event).text))
        # Transcription only: Home Assistant runs its own intents, so nothing reached the feed.
        assert not any(u["source"].startswith("wyoming") for u in await voice_feed(hub))
        learned = [k for k in hub.stats.snapshot().models if k[0] == phone.device_id and k[1] == "whisper-tiny.en"]
        assert learned, "the transcription was routed to the phone's Whisper"

        # wake: one continuous stream; a detection each time the wake word is heard.
        ok_nabu = pcm16k(wake).tobytes()
        phrase_s = len(ok_nabu) / 32000
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Detect(names=["okay_nabu"]).event())
            await send_audio(c, silence(0.5) + ok_nabu + silence(2.0) + ok_nabu + silence(1.0), 16000, chunk_ms=10,
                             stop=False)
            first, second = Detection.from_event(await next_event(c)), Detection.from_event(await next_event(c))
            assert first.name == second.name == "okay_nabu"
            assert 500 < first.timestamp < 500 + phrase_s * 1000 + 500, first
            assert abs((second.timestamp - first.timestamp) - (phrase_s + 2.0) * 1000) < 300, (first, second)
            await c.write_event(AudioStop().event())
            await c.write_event(Describe().event())  # events are answered in order: no not-detected came
            assert (await next_event(c)).type == "info"
        # Any rate and channels: espeak's 22.05 kHz as stereo, resampled as it streams.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Detect().event())
            mono, rate, _ = pcm_of(wake)
            stereo = np.repeat(np.frombuffer(silence(0.3, rate) + mono + silence(1.0, rate), dtype="<i2"), 2)
            await send_audio(c, stereo.tobytes(), rate, channels=2, stop=False)
            assert Detection.from_event(await next_event(c)).name == "okay_nabu"
        # Other speech: not-detected at audio-stop.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Detect(names=["okay_nabu"]).event())
            await send_audio(c, silence(0.3) + pcm16k(command).tobytes() + silence(0.5), 16000, chunk_ms=10)
            assert (await next_event(c)).type == "not-detected"
        # A wake word it does not have: said, not silently ignored.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Detect(names=["hey_jarvis"]).event())
            event = await next_event(c)
            assert event.type == "error" and "hey_jarvis" in event.data["text"] and "okay_nabu" in event.data["text"]

        # handle: the hub's intents; an action published is handled, anything else is not.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Transcript(text="turn off the kitchen lights", language="en",
                                           context={"conversation_id": "c1"}).event())
            event = await next_event(c)
            assert Handled.is_type(event.type), event
            assert Handled.from_event(event).text == "Done." and event.data["context"] == {"conversation_id": "c1"}
            await c.write_event(Transcript(text="what is the capital of france").event())
            event = await next_event(c)
            assert NotHandled.is_type(event.type), event
            assert NotHandled.from_event(event).text
        feed = [u for u in await voice_feed(hub) if u["source"] == "wyoming:127.0.0.1"]
        assert [(u["text"], u["status"], u["layer"]) for u in feed][0] == ("turn off the kitchen lights", "published",
                                                                           "hassil")
        assert feed[1]["text"] == "what is the capital of france" and feed[1]["status"] != "published"

        # Bad input, each answered with an error event; the server stays up.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Event(type="synthesize", data={"text": "hi"}))
            event = await next_event(c)
            assert event.type == "error" and "synthesize" in event.data["text"]
            await c.write_event(Describe().event())  # and the connection goes on
            assert (await next_event(c)).type == "info"
            await c.write_event(AudioStart(rate=16000, width=1, channels=1).event())
            await c.write_event(AudioChunk(rate=16000, width=1, channels=1, audio=b"\x80" * 1600).event())
            await c.write_event(AudioStop().event())
            event = await next_event(c)
            assert event.type == "error" and "width 1" in event.data["text"] and "16-bit" in event.data["text"]
            assert await closed(c)  # the stream was refused: the connection ends after audio-stop
        async with AsyncTcpClient("127.0.0.1", port) as c:  # more than 60 s: refused as it arrives
            await send_audio(c, silence(61, 8000), 8000, chunk_ms=1000)
            event = await next_event(c)
            assert event.type == "error" and "audio longer than 60 s" in event.data["text"]
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await send_audio(c, silence(1.0), 16000)  # silence: an empty transcript, no device asked
            assert Transcript.from_event(await next_event(c)).text == ""

        # A client that drops mid-event (a chunk's payload cut short), and one that is not JSON.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json.dumps({"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}}).encode()
                     + b"\n" + json.dumps({"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                                           "payload_length": 32000}).encode() + b"\n" + b"\0" * 1000)
        await writer.drain()
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"{this is not json\n")
        await writer.drain()
        garbage = await asyncio.wait_for(reader.read(), 10)
        assert b'"error"' in garbage and b"not JSON" in garbage  # said, then the connection ends
        writer.close()
        # The next client is served as if nothing happened.
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Transcribe().event())
            await send_audio(c, pcm16k(command).tobytes(), 16000)
            assert "kitchen" in words(Transcript.from_event(await next_event(c)).text)
        # Every one of those ended its connection cleanly: nothing crashed, nothing leaked.
        crashes = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
                   and (r.name.startswith("plugins.voice") or r.name == "asyncio")]
        assert not crashes, crashes


async def voice_feed(hub: Any) -> list[dict[str, Any]]:
    """The voice plugin's utterances, oldest first, from ``GET /api/voice``."""
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.http_url + "/api/voice") as r:
            assert r.status == 200
            return list(reversed((await r.json())["utterances"]))


class _Fleet:
    async def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": False, "error": {"code": "no_route", "message": "no device"}}


async def _publish(topic: str, payload: bytes | str, qos: int, retain: bool) -> bool:
    return True


def _pipeline() -> VoicePipeline:
    return VoicePipeline(_Fleet(), _publish, HomeVocabulary.demo(), PipelineSettings(), "sovereign")


async def test_peers_outside_the_allow_list_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    # Loopback is always allowed only while the list is empty (the server is then loopback-only).
    async with WyomingServer(_pipeline(), "127.0.0.1", 0, []) as server:
        async with AsyncTcpClient(*server.address) as c:
            await c.write_event(Describe().event())
            assert (await next_event(c, 5)).type == "info"
    # A list that does not name the peer: closed at once, counted and logged, even on loopback.
    caplog.set_level(logging.WARNING, logger="plugins.voice.wyoming")
    async with WyomingServer(_pipeline(), "127.0.0.1", 0, ["10.9.9.9"]) as server:
        for _ in range(2):
            c = AsyncTcpClient(*server.address)
            await c.connect()
            with contextlib.suppress(ConnectionError):
                await c.write_event(Describe().event())
            assert await closed(c)
            with contextlib.suppress(ConnectionError):
                await c.disconnect()
        assert server.refused == {"127.0.0.1": 2} and server.served == 0
        assert "127.0.0.1 refused: not in plugins.voice.wyoming_allowed_peers" in caplog.text
    # A list that names it (here as a network): served.
    async with WyomingServer(_pipeline(), "127.0.0.1", 0, ["10.9.9.9", "127.0.0.0/8"]) as server:
        async with AsyncTcpClient(*server.address) as c:
            await c.write_event(Describe().event())
            assert (await next_event(c, 5)).type == "info"
        assert not server.refused and server.served == 1
    with pytest.raises(ValueError, match="wyoming_allowed_peers: 'home-assistant.local' is not an IP"):
        WyomingServer(_pipeline(), "127.0.0.1", 0, ["home-assistant.local"])


async def test_no_unguarded_listening_beyond_loopback(make_hub: Any) -> None:
    with pytest.raises(ValueError, match="plugins.voice.wyoming_allowed_peers"):
        WyomingServer(_pipeline(), "0.0.0.0", 0, [])
    # The hub refuses such a config before it starts anything, naming the setting.
    for voice, why in (({"wyoming_host": "0.0.0.0"}, "beyond loopback.*plugins.voice.wyoming_allowed_peers"),
                       ({"wyoming_allowed_peers": ["not-an-ip"]}, "'not-an-ip' is not an IP address")):
        with pytest.raises(ConfigError, match=why):
            async with make_hub(None, zeroconf={"enabled": False}, plugins={"voice": {"wyoming_port": free_port(),
                                                                                        **voice}}):
                pass
