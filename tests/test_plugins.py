"""Plugins load through the ``sovereign.plugins`` entry points, built-in and third-party alike."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub.config import ConfigError

from .conftest import wait_for

# A third-party plugin, installed as a real (if minimal) distribution on sys.path.
THIRD_PARTY = '''
from hub.capability import Capability, Power
from hub.plugin_api import Plugin, PluginConfig, PluginContext

class Config(PluginConfig):
    greeting: str = "hello"

async def setup(ctx: PluginContext[Config]) -> None:
    ctx.state.set("thirdparty.greeting", ctx.config.greeting)
    ctx.devices.announce(Capability(v=1, id="thirdparty-dev", name="From a plugin", tier="tiny",
                                    power=Power(source="mains")))

PLUGIN = Plugin(name="thirdparty", version="9.9", description="test plugin", setup=setup, config_model=Config)
BROKEN = object()
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    (site / "sovthird").mkdir(parents=True)
    (site / "sovthird" / "__init__.py").write_text(THIRD_PARTY)
    dist = site / "sovthird-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sovthird\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [sovereign.plugins]
        thirdparty = sovthird:PLUGIN
        notaplugin = sovthird:BROKEN
        missing = sovthird_nonexistent:PLUGIN
    """))
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("sovthird", None)


async def test_third_party_and_builtin_load_the_same_way(third_party: Path, mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"thirdparty": {"greeting": "hi"}}) as hub:
        statuses = {name: s.to_dict() for name, s in hub.plugins.statuses.items()}
        assert statuses["ollama"]["state"] == "loaded" and "sovereign-hub" in statuses["ollama"]["source"]
        assert statuses["thirdparty"]["state"] == "loaded" and "sovthird" in statuses["thirdparty"]["source"]
        assert statuses["notaplugin"]["state"] == "failed" and "not a hub.plugin_api.Plugin" in statuses["notaplugin"]["error"]
        assert statuses["missing"]["state"] == "failed" and "import failed" in statuses["missing"]["error"]
        assert hub.state.get("thirdparty.greeting") == "hi"
        rec = hub.registry.get("thirdparty-dev")
        assert rec is not None and rec.sources == {"thirdparty": True}


async def test_plugin_config_errors_name_the_key(third_party: Path, mosquitto: Any, make_hub: Any) -> None:
    with pytest.raises(ConfigError, match=r"plugins\.thirdparty\.greeting: Input should be a valid string"):
        async with make_hub(mosquitto.url, plugins={"thirdparty": {"greeting": 5}}):
            pass
    with pytest.raises(ConfigError, match=r"plugins\.nosuch: no installed plugin of that name"):
        async with make_hub(mosquitto.url, plugins={"nosuch": {}}):
            pass
    with pytest.raises(ConfigError, match=r"plugins\.ollama\.servers\.0\.url: .*must be an http"):
        async with make_hub(mosquitto.url, plugins={"ollama": {"servers": [{"url": "ftp://x"}]}}):
            pass


async def test_plugin_can_be_disabled(third_party: Path, mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins={"thirdparty": {"enabled": False}}) as hub:
        assert hub.plugins.statuses["thirdparty"].state == "disabled"
        assert hub.registry.get("thirdparty-dev") is None


# Ollama cannot be installed on these machines, so this test runs against a stand-in server on
# loopback serving GET /api/tags. The first two entries are the example response of Ollama's API
# reference (docs/api.md, "List Local Models"); the third is an embedding model written in the
# same documented shape, to exercise the task mapping for the nomic-bert family.
OLLAMA_TAGS = {
    "models": [
        {"name": "deepseek-r1:latest", "model": "deepseek-r1:latest", "modified_at": "2025-05-10T08:06:48.639712648-07:00",
         "size": 4683075271, "digest": "0a8c266910232fd3291e71e5ba1e058cc5af9d411192cf88b6d30e92b6e73163",
         "details": {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                     "parameter_size": "7.6B", "quantization_level": "Q4_K_M"}},
        {"name": "llama3.2:latest", "model": "llama3.2:latest", "modified_at": "2025-05-04T17:37:44.706015396-07:00",
         "size": 2019393189, "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
         "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                     "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}},
        {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest",
         "modified_at": "2025-05-01T10:00:00.000000000-07:00", "size": 274302450,
         "digest": "0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
         "details": {"parent_model": "", "format": "gguf", "family": "nomic-bert", "families": ["nomic-bert"],
                     "parameter_size": "137M", "quantization_level": "F16"}},
    ]
}


async def test_ollama_server_appears_as_a_device(mosquitto: Any, make_hub: Any) -> None:
    served = {"tags": OLLAMA_TAGS}

    async def tags(_: web.Request) -> web.Response:
        return web.json_response(served["tags"])

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"ollama": {"poll_interval_s": 1, "timeout_s": 1,
                                                "servers": [{"url": url, "id": "box-ollama", "tier": "medium"}]}}) as hub:
            rec = await wait_for(lambda: hub.registry.get("box-ollama"), 30, what="ollama device")
            models = {m.name: m for m in rec.capability.models}
            assert set(models) == {"deepseek-r1:latest", "llama3.2:latest", "nomic-embed-text:latest"}
            assert models["nomic-embed-text:latest"].tasks == ["embed"]
            assert "summarize" in models["llama3.2:latest"].tasks and models["llama3.2:latest"].runtime == "ollama"
            assert models["llama3.2:latest"].latency_ms is None, "no latency is claimed before it is measured"
            assert rec.online and rec.sources == {"ollama": True}
            # A model pulled on the server shows up at the next poll.
            served["tags"] = {"models": OLLAMA_TAGS["models"][:1]}
            await wait_for(lambda: len(hub.registry.get("box-ollama").capability.models) == 1, 30, what="model list refresh")
            await runner.cleanup()  # the server goes away
            await wait_for(lambda: not rec.online, 30, what="ollama offline")
            assert "not answering" in rec.offline_reason
    finally:
        await runner.cleanup()
