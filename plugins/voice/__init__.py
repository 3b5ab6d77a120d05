"""Voice: the hub as the home's speech pipeline (wake word, Whisper, local intents first).

Entry points, all behind the hub's own guards (an API token, same-origin; the broker's ACL):

- ``POST /api/voice``: one utterance, as JSON (``text``, or ``data``: base64 WAV) or a multipart
  upload (part ``audio``); ``GET /api/voice``: the feed; ``POST /api/voice/{id}/confirm``.
- ``<root>/cmd/voice``: the same as an MQTT command, answered on its response topic.
- ``<root>/device/<id>/voice``: live dictation, 16 kHz PCM frames from a paired device
  (``plugins/voice/stream.py``).
- A Wyoming server (``wyoming_port``), so Home Assistant's Assist can use the fleet for ``asr``,
  ``wake`` and ``handle``.

Every utterance goes out on ``<root>/voice/utterance`` and to the dashboard (``voice.utterance``);
actions on ``<root>/voice/action``, and to Home Assistant's intent API when ``homeassistant_url``
is set. docs/protocol.md has the payloads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import Field, ValidationError, field_validator, model_validator

from hub.plugin_api import (AudioError, Message, Plugin, PluginConfig, PluginContext, decode_audio,
                            format_validation_error, web)

from .intents import CLASSIFIER_THRESHOLD, Action, HomeVocabulary
from .pipeline import PipelineSettings, Utterance, VoicePipeline
from .schema import VoicePost
from .stream import Finished, StreamAssembler, StreamError, parse_frame

#: The largest utterance a client may post: 2 min of 16 kHz 16-bit mono as base64, plus JSON.
MAX_AUDIO_BYTES = 2 * 60 * 16_000 * 2


class VoiceConfig(PluginConfig):
    wake_word: str = Field(default="okay_nabu", min_length=1, max_length=64)
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    transcribe_budget_ms: float = Field(default=5000, gt=0, le=600_000)
    classifier_model: str = Field(default="intent-tiny", min_length=1, max_length=128)
    classifier_threshold: float | None = Field(default=None, gt=0, le=1,
                                               description="default: the bundled classifier's calibrated one")
    escalate: bool = True
    escalate_task: str = "format"
    llm_budget_ms: float = Field(default=15000, gt=0, le=600_000)
    confirm_timeout_s: float = Field(default=30, gt=0, le=3600)
    summary_after_s: float = Field(default=30, gt=0, le=3600)
    analysis_deadline_s: float = Field(default=3600, gt=0, le=7 * 86400)
    stream_max_s: float = Field(default=120, gt=0, le=600)
    stream_idle_s: float = Field(default=5, gt=0, le=300)
    max_streams: int = Field(default=8, ge=1, le=256)
    #: The home's areas and entities, for Home Assistant's sentences ({areas = [...],
    #: entities = [{name, domain, area}]}); default: a small example home.
    home: dict[str, Any] | None = None
    wyoming_port: int | None = Field(default=None, ge=1, le=65535)
    wyoming_host: str = "127.0.0.1"
    #: Peers allowed to use the Wyoming server when it listens beyond loopback: Wyoming has no
    #: authentication, so the address is the only guard.
    wyoming_allowed_peers: list[str] = Field(default_factory=list)
    homeassistant_url: str | None = Field(default=None, pattern=r"^https?://")
    homeassistant_token_file: Path | None = None

    @model_validator(mode="after")
    def _wyoming_guarded(self) -> "VoiceConfig":
        if self.wyoming_port is not None:
            from .wyoming import allowed_networks  # the wyoming package: only when it serves
            allowed_networks(self.wyoming_host, self.wyoming_allowed_peers)
        return self

    @field_validator("homeassistant_token_file")
    @classmethod
    def _token_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v}: no such file (a Home Assistant long-lived access token)")
        return v


class VoiceRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Voice:
    def __init__(self, ctx: PluginContext[VoiceConfig]) -> None:
        cfg = ctx.config
        self.ctx = ctx
        home = (HomeVocabulary.from_config(cfg.home, "plugins.voice.home") if cfg.home is not None
                else HomeVocabulary.demo())
        # The pipeline's settings are the config's keys of the same names.
        shared = set(PipelineSettings.__dataclass_fields__) & set(VoiceConfig.model_fields)
        settings = PipelineSettings(**{**cfg.model_dump(include=shared),
                                       "classifier_threshold": cfg.classifier_threshold or CLASSIFIER_THRESHOLD})
        self.pipeline = VoicePipeline(ctx.infer, self._publish, home, settings, ctx.topic_root,
                                      on_utterance=self._announce, forward=self._forward if cfg.homeassistant_url
                                      else None, spawn=lambda coro: ctx.create_task(coro, "summary"))
        self.streams = StreamAssembler(cfg.stream_max_s, cfg.stream_idle_s, cfg.max_streams)
        self.rejected: dict[str, int] = {}
        self.last_rejection = ""
        self._ha_token = (cfg.homeassistant_token_file.read_text().strip()
                          if cfg.homeassistant_token_file is not None else None)
        self._http: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def _publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> bool:
        return await self.ctx.publish(topic, payload, qos, retain)

    def _announce(self, u: Utterance) -> None:
        doc = u.to_dict()
        self.ctx.emit("voice.utterance", doc)
        self.ctx.create_task(self.ctx.publish(f"{self.ctx.topic_root}/voice/utterance", json.dumps(doc), 1),
                             "utterance")

    def reject(self, where: str, why: str) -> None:
        self.rejected[where] = self.rejected.get(where, 0) + 1
        self.last_rejection = f"{where}: {why}"
        self.ctx.log.warning("voice: refused %s: %s", where, why)

    async def _forward(self, action: Action) -> str | None:
        """To Home Assistant's intent API (``POST /api/intent/handle``, which its ``intent:``
        integration enables); the note says what happened, for the utterance's stages."""
        cfg = self.ctx.config
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        headers = {"Authorization": f"Bearer {self._ha_token}"} if self._ha_token else {}
        body = {"name": action.intent, "data": {k: v for k, v in action.slots.items() if k != "domain"}}
        try:
            async with self._http.post(f"{cfg.homeassistant_url}/api/intent/handle", json=body,
                                       headers=headers) as resp:
                if resp.status != 200:
                    return f"Home Assistant answered {resp.status}: {(await resp.text())[:200]}"
                return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"Home Assistant unreachable: {type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # -- one request -----------------------------------------------------------------------------

    async def handle(self, post: VoicePost, source: str, audio_bytes: bytes | None = None) -> Utterance:
        if post.confirm is not None:
            try:
                return await self.pipeline.confirm(post.confirm, post.yes, source=source)
            except KeyError:
                raise VoiceRefused(404, "not_found", f"no held action {post.confirm!r} (confirmed, cancelled, "
                                                     "expired or never held)") from None
        if audio_bytes is None and post.data is not None:
            try:
                audio_bytes = base64.b64decode(post.data, validate=True)
            except (binascii.Error, ValueError):
                raise VoiceRefused(400, "bad_request", "data is not valid base64") from None
        if audio_bytes is not None:
            if post.text is not None:
                raise VoiceRefused(400, "bad_request", "give text or audio, not both")
            if len(audio_bytes) > MAX_AUDIO_BYTES:
                raise VoiceRefused(413, "too_large", f"audio of {len(audio_bytes)} bytes exceeds {MAX_AUDIO_BYTES} "
                                                     "(2 min of 16 kHz 16-bit mono): send longer recordings to "
                                                     "/api/infer as a transcribe task")
            try:
                audio = decode_audio(audio_bytes, where="audio", pcm_rate=post.pcm_rate)
            except AudioError as exc:
                raise VoiceRefused(413 if exc.code == "too_long" else 400, exc.code, exc.message) from None
            return await self.pipeline.handle_audio(audio, source=source, wake=post.wake)
        if post.text is None:
            raise VoiceRefused(400, "bad_request", "give text, data (base64 audio), a multipart 'audio' part, "
                                                   "or confirm")
        return await self.pipeline.handle_text(post.text, source=source)

    def status(self) -> dict[str, Any]:
        p = self.pipeline
        p._expire()
        return {"utterances": [u.to_dict() for u in reversed(p.feed)],
                "pending": [u.to_dict() for u in p.pending.values()],
                "summaries": list(p.summaries), "counts": dict(p.counts), "rejected": self.rejected,
                "last_rejection": self.last_rejection, "streams_open": self.streams.open,
                "wake_word": p.cfg.wake_word, "classifier_threshold": p.cfg.classifier_threshold}

    # -- live dictation --------------------------------------------------------------------------

    def on_frame(self, message: Message) -> None:
        root = self.ctx.topic_root
        device_id = message.topic[len(root) + len("/device/"):-len("/voice")]
        where = f"{message.topic}"
        if self.ctx.devices.known(device_id) is None:
            self.reject(where, f"device {device_id!r} is not known to the hub")
            return
        try:
            frame = parse_frame(bytes(message.payload))
            done = self.streams.feed(f"device:{device_id}", frame, time.monotonic())
        except StreamError as exc:
            self.reject(where, str(exc))
            return
        if done is not None:
            self.ctx.create_task(self._finish(done), "dictation")
        if self.streams.open and self._sweeper is None:
            self._sweeper = self.ctx.create_task(self.sweep(), "stream sweep")

    async def sweep(self) -> None:
        """Sessions that went quiet, processed as partial utterances. Runs only while a stream is
        open: a hub nobody dictates to has no timer waking it."""
        try:
            while self.streams.open:
                await asyncio.sleep(min(1.0, self.ctx.config.stream_idle_s / 2))
                for done in self.streams.expire(time.monotonic()):
                    await self._finish(done)
        finally:
            self._sweeper = None

    async def _finish(self, done: Finished) -> None:
        try:
            audio = decode_audio(done.pcm, where=f"{done.source} session {done.session}", pcm_rate=done.rate)
        except AudioError as exc:
            self.reject(f"{done.source} session {done.session}", exc.message)
            return
        await self.pipeline.handle_audio(audio, source=done.source, partial=done.partial_reason)


def _refusal(exc: VoiceRefused) -> web.Response:
    return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)


async def _read_post(request: web.Request) -> tuple[VoicePost, bytes | None]:
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        fields: dict[str, Any] = {}
        audio: bytes | None = None
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader):
                raise VoiceRefused(400, "bad_request", "nested multipart is not supported")
            if part.name == "audio":
                audio = bytes(await part.read(decode=False))
            elif part.name in ("wake", "pcm_rate", "text", "id"):
                fields[part.name] = (await part.text()).strip()
            else:
                raise VoiceRefused(400, "bad_request", f"unknown part {part.name!r} (audio, wake, pcm_rate, text, id)")
        if "wake" in fields:
            fields["wake"] = fields["wake"].lower() in ("1", "true", "yes", "on")
        try:
            return VoicePost.model_validate(fields), audio
        except ValidationError as exc:
            raise VoiceRefused(400, "bad_request", format_validation_error(exc).replace("\n", "; ")) from None
    try:
        return VoicePost.model_validate_json(await request.read()), None
    except ValidationError as exc:
        raise VoiceRefused(400, "bad_request", format_validation_error(exc).replace("\n", "; ")) from None


async def setup(ctx: PluginContext[VoiceConfig]) -> None:
    voice = Voice(ctx)
    ctx.on_stop(voice.close)

    async def post(request: web.Request) -> web.Response:
        try:
            body, audio = await _read_post(request)
            u = await voice.handle(body, "api", audio)
        except VoiceRefused as exc:
            voice.reject("POST /api/voice", exc.message)
            return _refusal(exc)
        return web.json_response(u.to_dict())

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(voice.status())

    async def confirm(request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        try:
            raw = json.loads(await request.read() or b"{}")
            if not isinstance(raw, dict) or not isinstance(raw.get("confirm", True), bool):
                raise VoiceRefused(400, "bad_request", 'body must be {"confirm": true|false}')
            u = await voice.handle(VoicePost(confirm=uid, yes=raw.get("confirm", True)), "api")
        except json.JSONDecodeError as exc:
            return _refusal(VoiceRefused(400, "bad_request", f"body is not JSON: {exc}"))
        except VoiceRefused as exc:
            return _refusal(exc)
        return web.json_response(u.to_dict())

    ctx.add_route("POST", "", post)
    ctx.add_route("GET", "", listing)
    ctx.add_route("POST", "/{id}/confirm", confirm)

    async def command(message: Message) -> None:
        props = getattr(message, "properties", None)
        reply_topic, corr = getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)
        answer: dict[str, Any]
        cmd_id = None
        try:
            try:
                cmd = VoicePost.model_validate_json(message.payload)
            except ValidationError as exc:
                raise VoiceRefused(400, "bad_request", format_validation_error(exc).replace("\n", "; ")) from None
            cmd_id, reply_topic = cmd.id, reply_topic or cmd.reply_to
            u = await voice.handle(cmd, "mqtt")
            answer = {"v": 1, "id": cmd_id, "ok": True, "result": u.to_dict()}
        except VoiceRefused as exc:
            voice.reject(f"{ctx.topic_root}/cmd/voice", exc.message)
            answer = {"v": 1, "id": cmd_id, "ok": False, "error": {"code": exc.code, "message": exc.message}}
        if reply_topic:
            await ctx.publish_reply(reply_topic, json.dumps(answer), corr)

    await ctx.subscribe(f"{ctx.topic_root}/cmd/voice", lambda m: ctx.create_task(command(m), "command"))
    await ctx.subscribe(f"{ctx.topic_root}/device/+/voice", voice.on_frame, qos=1)

    if ctx.config.wyoming_port is not None:
        from .wyoming import WyomingServer
        server = WyomingServer(voice.pipeline, ctx.config.wyoming_host, ctx.config.wyoming_port,
                               ctx.config.wyoming_allowed_peers)
        await server.start()
        ctx.on_stop(server.stop)


PLUGIN = Plugin(name="voice", version="1.0.0", description="Wake word, Whisper and local intents; Wyoming server",
                setup=setup, config_model=VoiceConfig)
