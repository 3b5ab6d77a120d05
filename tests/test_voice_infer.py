"""Audio through the one task path: ``POST /api/infer`` (JSON and multipart) and ``sovereign infer
--file``, transcribed by a real agent's Whisper tiny.en, priced by the audio's length."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from .conftest import ROOT
from .test_dispatch import fleet, post
from .voice_fixtures import speak, words


async def multipart(hub: Any, parts: dict[str, tuple[bytes, str | None]]) -> tuple[int, Any]:
    form = aiohttp.FormData()
    for name, (value, filename) in parts.items():
        form.add_field(name, value, filename=filename)
    async with aiohttp.ClientSession() as s:
        async with s.post(hub.http_url + "/api/infer", data=form) as r:
            return r.status, await r.json(content_type=None)


async def test_transcription_through_the_task_path(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                   tmp_path: Path) -> None:
    wav = speak("turn off the kitchen lights", "flite:slt", tmp_path / "command.wav")
    data = wav.read_bytes()
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))
        status, out = await post(hub, "/api/infer", {"task": "transcribe", "data": base64.b64encode(data).decode()})
        assert status == 200 and out["ok"], json.dumps(out)[:1500]
        assert words(out["output"]) == ["turn", "off", "the", "kitchen", "lights"]
        assert out["served_by"] == {"device": phone.device_id, "model": "whisper-tiny.en", "layer": "tiny"}
        status, dry = await post(hub, "/api/route", {"task": "transcribe", "data": base64.b64encode(data).decode()})
        assert status == 200 and "s of audio: +" in json.dumps(dry), "priced by the audio's seconds"

        status, up = await multipart(hub, {"file": (data, "command.wav"),
                                           "request": (json.dumps({"budget_ms": 8000}).encode(), None)})
        assert status == 200 and up["ok"] and words(up["output"]) == words(out["output"])

        # The CLI reads the file and sends it as data.
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "infer", "--task", "transcribe",
                                                        "--file", str(wav), "--url", hub.http_url],
                                       capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert words(proc.stdout) == ["turn", "off", "the", "kitchen", "lights"]
        assert "whisper-tiny.en on cache" in proc.stderr, "the same recording: answered from the cache"

        # Refusals, each naming what and why; the hub serves on.
        for parts, code, why in [
            ({"request": (b'{"task": "transcribe"}', None)}, "bad_request", "no part 'file'"),
            ({"file": (data, "a.wav"), "extra": (b"x", None)}, "bad_request", "unknown part 'extra'"),
            ({"file": (data, "a.wav"), "request": (b"{nope", None)}, "bad_request", "part 'request' is not JSON"),
            ({"file": (data, "a.wav"), "request": (b'{"data": "AAAA"}', None)}, "bad_request", "without data"),
            ({"file": (b'{"not": "audio"}', "a.wav")}, "bad_audio", "no RIFF/WAVE header"),
            ({"file": (data[:60], "a.wav")}, "bad_audio", "truncated"),
        ]:
            status, err = await multipart(hub, parts)
            assert status == 400 and err["error"]["code"] == code and why in err["error"]["message"], (parts, err)
        status, err = await post(hub, "/api/infer", {"task": "transcribe", "data": base64.b64encode(data).decode(),
                                                     "model": "whisper-large-v3"})
        assert status == 503 and "no device serves model 'whisper-large-v3'" in json.dumps(err)
        status, again = await post(hub, "/api/infer", {"task": "transcribe", "data": base64.b64encode(data).decode()})
        assert status == 200 and again["ok"]
