"""Ollama servers given by address in the config appear as devices.

Their models come from the server's own list (``/api/tags`` through the official ``ollama``
client). A server that stops answering goes offline with the reason; models that appear or
disappear on the server are re-announced on the next poll.

    [plugins.ollama]
    [[plugins.ollama.servers]]
    url = "http://192.168.1.20:11434"
    id = "gpu-box-ollama"
    tier = "medium"
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.capability import DEVICE_ID_PATTERN, PROTOCOL_VERSION, Capability, Endpoints, Power, PowerSource, Tier
from hub.ollama_models import list_ollama_models
from hub.plugin_api import Plugin, PluginConfig, PluginContext

from .._http import check_http_url


class OllamaServer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    name: str | None = None
    tier: Tier = Tier.medium
    power_source: PowerSource = PowerSource.mains
    idle_w: float | None = Field(default=None, ge=0)
    active_w: float | None = Field(default=None, ge=0)
    max_concurrency: int = Field(default=1, ge=1, le=64)

    _http = field_validator("url")(check_http_url)

    def device_id(self) -> str:
        if self.id:
            return self.id
        parts = urlsplit(self.url)
        return "ollama-" + re.sub(r"[^A-Za-z0-9_.-]", "-", f"{parts.hostname}-{parts.port or 11434}")[:56]


class OllamaConfig(PluginConfig):
    servers: list[OllamaServer] = Field(default_factory=list)
    poll_interval_s: float = Field(default=30, ge=1, le=3600)
    timeout_s: float = Field(default=5, gt=0, le=60)


async def _poll(ctx: PluginContext[OllamaConfig], server: OllamaServer) -> None:
    device_id = server.device_id()
    announced: Capability | None = None
    while True:
        try:
            models = await list_ollama_models(server.url, ctx.config.timeout_s)
        except Exception as exc:  # httpx, ResponseError, JSON errors: all mean "not usable now"
            ctx.log.warning("Ollama %s (%s) not answering: %r", device_id, server.url, exc)
            if announced is not None:
                ctx.devices.set_online(device_id, False, f"{server.url} not answering: {type(exc).__name__}")
        else:
            models = [m.model_copy(update={"max_concurrency": server.max_concurrency}) for m in models]
            cap = Capability(
                v=PROTOCOL_VERSION, id=device_id, name=server.name or f"Ollama at {urlsplit(server.url).netloc}",
                tier=server.tier, power=Power(source=server.power_source, idle_w=server.idle_w, active_w=server.active_w),
                models=models, endpoints=Endpoints(host=urlsplit(server.url).hostname, http_port=urlsplit(server.url).port),
                software="ollama",
            )
            if cap != announced:
                ctx.devices.announce(cap)
                announced = cap
            else:
                ctx.devices.set_online(device_id, True, "answered")
        await asyncio.sleep(ctx.config.poll_interval_s)


async def setup(ctx: PluginContext[OllamaConfig]) -> None:
    ids = [s.device_id() for s in ctx.config.servers]
    if len(ids) != len(set(ids)):
        raise ValueError(f"two Ollama servers share a device id: {ids}")
    for server in ctx.config.servers:
        ctx.create_task(_poll(ctx, server), name=server.device_id())


PLUGIN = Plugin(
    name="ollama",
    version="0.1.0",
    description="Ollama servers given by address appear as devices",
    setup=setup,
    config_model=OllamaConfig,
)
