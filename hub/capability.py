"""The capability document a device announces, and the small payloads that go with it.

One schema serves the Python agent, the MicroPython firmware and the Ollama adapter; the
registry stores exactly what a device announced. Validation happens here, once, at the edge:
every model forbids unknown keys at the top level so that a typo in a device's firmware is
reported instead of silently ignored.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

#: Version of the capability document. A device announcing another major version is rejected
#: with a message naming both versions; minor additions stay compatible.
PROTOCOL_VERSION = 1

#: Device ids become MQTT topic levels and zeroconf instance names: no `/`, `#`, `+`, spaces.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


def is_valid_device_id(value: str) -> bool:
    return bool(_DEVICE_ID_RE.match(value))


DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="Stable device id; a single MQTT topic level")]


class Tier(StrEnum):
    tiny = "tiny"  # microcontrollers, watches, phones running TinyML
    small = "small"  # laptops running small models
    medium = "medium"  # a GPU box running medium models
    large = "large"  # cloud models

    @property
    def rank(self) -> int:
        return _TIER_RANK[self]


_TIER_RANK = {Tier.tiny: 0, Tier.small: 1, Tier.medium: 2, Tier.large: 3}


class PowerSource(StrEnum):
    battery = "battery"
    mains = "mains"
    solar = "solar"
    ups = "ups"


#: Task types the router knows. Devices may announce others (forward compatibility); the
#: router simply never matches them.
KNOWN_TASKS = (
    "intent", "classify", "embed", "transcribe", "summarize", "qa", "format",
    "draft", "code", "reason", "vision", "eeg", "echo", "wakeword",
)
TaskName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


def check_task_input(task: str, inputs: dict[str, object]) -> None:
    """A request names a known task and carries at most one input (text, data or ref)."""
    if task not in KNOWN_TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(KNOWN_TASKS)})")
    given = [k for k, v in inputs.items() if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one input, not {' and '.join(given)}")


#: Which input each known task takes, and what it is, in words (what the executors accept:
#: language models, the code rules, the text classifiers and the firmware read ``text``; the
#: EEG-state model a JSON array of numbers in ``text`` or float32 bytes in ``data``; embedding
#: models one text in ``text`` or a batch, the UTF-8 JSON of an array of texts, in ``data``;
#: speech models audio, inline or by reference; ``echo`` anything).
TASK_INPUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "intent": (("text",), "the text to classify"),
    "classify": (("text", "data"), "the text (or the feature bytes) to classify"),
    "embed": (("text", "data"), "the text to embed, or in data a JSON array of up to 256 texts (a batch), base64"),
    "transcribe": (("data", "ref"), "audio: base64 bytes in data, or a ref the device resolves"),
    "wakeword": (("data",), "audio: base64 WAV (or 16 kHz 16-bit mono PCM) bytes in data"),
    "summarize": (("text",), "the text to summarise"),
    "qa": (("text",), "the question as text"),
    "format": (("text",), "the text to format"),
    "draft": (("text",), "the instructions as text"),
    "code": (("text",), "the request as text"),
    "reason": (("text",), "the problem as text"),
    "vision": (("text", "data", "ref"), "an image (base64 in data, or a ref) or a prompt in text"),
    "eeg": (("text", "data", "ref"), "a feature vector: a JSON array of numbers in text, little-endian float32 "
                                     "bytes in data, or a ref to a window the device holds"),
    "echo": (("text", "data", "ref"), "anything"),
}
INPUT_FIELDS = ("text", "data", "ref")


def input_problem(task: str, text: str | None, data: str | None, ref: str | None,
                  required: bool = False) -> tuple[str, str] | None:
    """What is wrong with a request's input for its task, as (field, why); None when it fits.

    Empty or whitespace-only text, empty data or ref, an input the task does not take, and
    (``required``) no input at all. Unknown tasks are :func:`check_task_input`'s to refuse;
    ``data`` is valid base64 (checked before)."""
    spec = TASK_INPUTS.get(task)
    if spec is None:
        return None
    takes, what = spec
    given = {"text": text, "data": data, "ref": ref}
    for name in INPUT_FIELDS:
        value = given[name]
        if value is None:
            continue
        if name not in takes:
            return name, (f"{task} does not take {name}: it takes {what} "
                          f"(give {' or '.join(takes)})")
        if value == "":
            return name, f"empty: {task} needs {what}"
        if not value.strip():
            return name, f"only whitespace ({len(value)} characters): {task} needs {what}"
        if task == "eeg" and name == "text":
            why = _number_array_problem(value)
            if why:
                return name, f"{why}: eeg takes a JSON array of numbers in text (or float32 bytes in data)"
        if task == "eeg" and name == "data":
            size = len(value) * 3 // 4 - value[-2:].count("=")
            if size % 4:
                return name, f"{size} bytes is not a whole number of little-endian float32 values"
        return None
    if required:
        return takes[0], f"missing: {task} needs {what} (give {' or '.join(takes)})"
    return None


def input_error(title: str, field: str, why: str, value: object) -> ValidationError:
    """:func:`input_problem`'s answer as a validation error located at the input field
    (``text: empty: ...``), not at the model, for a model validator to raise."""
    return ValidationError.from_exception_data(title, [InitErrorDetails(
        type=PydanticCustomError("bad_input", "{why}", {"why": why}), loc=(field,), input=value)])


def _number_array_problem(text: str) -> str | None:
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(values, list):
        return f"a JSON {type(values).__name__}, not an array"
    if not values:
        return "an empty array"
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"value {i} ({str(v)[:20]}) is not a finite number"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accelerator(_Strict):
    kind: Literal["gpu", "npu", "tpu", "dsp", "other"] = "gpu"
    name: str = Field(max_length=128)
    memory_mb: int | None = Field(default=None, ge=0, le=10_000_000)


class Hardware(_Strict):
    cpu: str = Field(default="unknown", max_length=128)
    cores: int = Field(default=1, ge=1, le=4096)
    ram_mb: int = Field(default=0, ge=0, le=100_000_000)
    accelerator: Accelerator | None = None


MAC_PATTERN = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"
#: What a hub may publish to wake a device through a smart plug: a concrete topic, no wildcards.
SWITCH_TOPIC_PATTERN = r"^[^#+\x00]{1,256}$"


class WakeMethod(_Strict):
    """How the hub wakes the device once it sleeps (hub/power/signals.py).

    ``wol``: Wake-on-LAN magic packets (UDP) to ``broadcast`` on ``ports``. ``ha_switch``: the
    hub publishes ``payload_on`` to ``command_topic``, the command topic of the smart plug's
    switch in Home Assistant's MQTT (a zigbee2mqtt or Tasmota plug, say); the hub publishes only
    to topics its ``power.switch_topics`` allows. ``none``: the device cannot be woken by the
    hub, so it is never put to sleep."""

    kind: Literal["wol", "ha_switch", "none"] = "none"
    mac: str | None = Field(default=None, pattern=MAC_PATTERN)
    #: A LAN address only (private, link-local or loopback, or 255.255.255.255): a device may
    #: not make the hub send packets anywhere else.
    broadcast: str = "255.255.255.255"
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=lambda: [9, 7], min_length=1,
                                                                 max_length=4)
    command_topic: str | None = Field(default=None, pattern=SWITCH_TOPIC_PATTERN)
    payload_on: str = Field(default="ON", min_length=1, max_length=64)

    @field_validator("broadcast")
    @classmethod
    def _lan_address(cls, v: str) -> str:
        try:
            addr = ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"broadcast {v!r} is not an IPv4 address") from None
        if addr.is_unspecified or not (addr.is_private or addr.is_link_local or addr.is_loopback
                                       or v == "255.255.255.255"):
            raise ValueError(f"broadcast {v} is not a LAN address (private, link-local, loopback or "
                             f"255.255.255.255): the hub sends wake packets only on the home's network")
        return v

    @model_validator(mode="after")
    def _complete(self) -> "WakeMethod":
        if self.kind == "wol" and self.mac is None:
            raise ValueError("wake kind wol needs the mac of the network card to wake")
        if self.kind == "ha_switch" and self.command_topic is None:
            raise ValueError("wake kind ha_switch needs the switch's command_topic")
        return self


NO_WAKE = WakeMethod()


class Power(_Strict):
    source: PowerSource
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    charging: bool | None = None
    idle_w: float | None = Field(default=None, ge=0, le=100_000)
    active_w: float | None = Field(default=None, ge=0, le=100_000)
    #: Below this charge the device serves only its own tasks (the router never drains it).
    battery_floor_pct: float = Field(default=20, ge=0, le=100)
    #: Power states (issue 16). Draw while asleep (suspend to RAM: a desktop 1-3 W).
    sleep_w: float | None = Field(default=None, ge=0, le=100_000)
    #: From the wake signal to online with its models loaded; the agent measures it each time it
    #: comes back and the hub keeps what it observes itself.
    wake_latency_ms: float | None = Field(default=None, ge=0, le=3_600_000)
    #: Energy of one wake (resume and model loading); when absent, active_w x wake latency.
    wake_j: float | None = Field(default=None, ge=0, le=10_000_000)
    #: None: the hub cannot wake it (kind none). Absent rather than a default object: validating
    #: a default model costs every announcement ~6 µs (an announce storm of a thousand devices).
    wake: WakeMethod | None = None
    #: The device sleeps when the hub asks (RPC ``sleep``) and only after this many seconds
    #: without work; None: it does not sleep (no sleep command configured).
    allow_sleep_after_s: float | None = Field(default=None, ge=0, le=86_400)

    @property
    def can_sleep(self) -> bool:
        """Both halves: it goes to sleep when asked, and the hub has a way to wake it."""
        return self.allow_sleep_after_s is not None and self.wake_method.kind != "none"

    @property
    def wake_method(self) -> WakeMethod:
        return self.wake or NO_WAKE

    def wake_energy_j(self) -> float:
        if self.wake_j is not None:
            return self.wake_j
        return (self.active_w or self.idle_w or 0.0) * (self.wake_latency_ms or 0.0) / 1000


class LatencyMs(_Strict):
    p50: float = Field(ge=0, le=3_600_000)
    p95: float = Field(ge=0, le=3_600_000)

    @model_validator(mode="after")
    def _ordered(self) -> "LatencyMs":
        if self.p95 < self.p50:
            raise ValueError(f"p95 ({self.p95}) must be >= p50 ({self.p50})")
        return self


class ModelSpec(_Strict):
    name: str = Field(min_length=1, max_length=128)
    runtime: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = Field(
        description="code | tflite | onnx | ollama | llamacpp | cloud | simulated | ..."
    )
    tasks: list[TaskName] = Field(min_length=1, max_length=64)
    latency_ms: LatencyMs | None = Field(default=None, description="Measured per call; null when not yet measured")
    energy_j_per_call: float | None = Field(default=None, ge=0, le=1_000_000)
    energy_j_per_token: float | None = Field(
        default=None, ge=0, le=10_000, description="Language models: energy per generated token. The router then "
                                                   "predicts a call's energy from the answer's expected length "
                                                   "instead of energy_j_per_call")
    max_concurrency: int = Field(default=1, ge=1, le=1024, description="Calls run at once; the hub queues the "
                                                                      "rest, the device refuses them as busy")
    max_text_chars: int | None = Field(default=None, ge=1, description="Longest text input the model takes "
                                                                       "(characters); the hub sends longer ones "
                                                                       "elsewhere, or refuses them (413)")
    quality: float | None = Field(default=None, ge=0, le=1, description="Expected quality 0..1 for its tasks")
    task_quality: dict[TaskName, Annotated[float, Field(ge=0, le=1)]] | None = Field(
        default=None, description="Expected quality for the tasks where it differs from `quality` (a model that "
                                  "chats well and reasons badly); keys must be among `tasks`")
    size_mb: float | None = Field(default=None, ge=0)
    #: Speech models: a call costs latency_ms (its fixed part) plus this per second of audio, so
    #: the router prices a 2 s command and a 10 min recording differently.
    ms_per_audio_s: float | None = Field(default=None, ge=0, le=1_000_000, description="Speech models: "
                                         "processing ms per second of audio, on top of latency_ms")
    energy_j_per_audio_s: float | None = Field(default=None, ge=0, le=100_000, description="Speech models: "
                                               "joules per second of audio, on top of energy_j_per_call")
    #: Embedding models: a call costs latency_ms (its fixed part) plus this per 1,000 input tokens,
    #: so the router prices a one-line query and a batch of 32 note chunks differently.
    ms_per_1k_tokens: float | None = Field(default=None, ge=0, le=1_000_000, description="Embedding models: "
                                           "processing ms per 1,000 input tokens, on top of latency_ms")
    energy_j_per_1k_tokens: float | None = Field(default=None, ge=0, le=100_000, description="Embedding models: "
                                                 "joules per 1,000 input tokens, on top of energy_j_per_call")

    @model_validator(mode="after")
    def _task_quality_for_own_tasks(self) -> "ModelSpec":
        if not self.task_quality:  # the usual case: nothing to check, no sets built
            return self
        unknown = sorted(set(self.task_quality) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_quality names tasks the model does not serve: {', '.join(unknown)}")
        return self

    def quality_for(self, task: str) -> float | None:
        if self.task_quality and task in self.task_quality:
            return self.task_quality[task]
        return self.quality


class Endpoints(_Strict):
    http_port: int | None = Field(default=None, ge=1, le=65535)
    host: str | None = Field(default=None, max_length=253)


class Capability(_Strict):
    """What a device announces at ``<root>/device/<id>/announce`` (retained)."""

    v: int = Field(description="Capability schema version")
    id: DeviceId
    name: str = Field(min_length=1, max_length=128)
    tier: Tier
    hardware: Hardware = Hardware()
    power: Power
    models: list[ModelSpec] = Field(default_factory=list, max_length=256)
    endpoints: Endpoints = Endpoints()
    software: str | None = Field(default=None, max_length=128, description="Agent or firmware name and version")

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != PROTOCOL_VERSION:
            raise ValueError(f"unsupported capability schema version {v} (this hub speaks {PROTOCOL_VERSION})")
        return v

    def tasks(self) -> set[str]:
        return {t for m in self.models for t in m.tasks}


class Load(_Strict):
    active: int = Field(default=0, ge=0, le=100_000)
    queued: int = Field(default=0, ge=0, le=1_000_000)


class EnergyReport(_Strict):
    """Periodic heartbeat at ``<root>/device/<id>/energy`` (not retained)."""

    v: int = PROTOCOL_VERSION
    ts: float = Field(description="Device clock, Unix seconds")
    source: PowerSource
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    charging: bool | None = None
    power_w: float | None = Field(default=None, ge=0, le=100_000)
    load: Load = Load()

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != PROTOCOL_VERSION:
            raise ValueError(f"unsupported energy report version {v} (this hub speaks {PROTOCOL_VERSION})")
        return v
