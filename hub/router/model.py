"""The router's values: the task request, the fleet it sees, and the decision it returns."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..capability import ModelSpec, Tier, check_task_input, input_error, input_problem

if TYPE_CHECKING:
    from .stats import Learned

MAX_BUDGET_MS = 10 * 60 * 1000


class TaskRequest(BaseModel):
    """A task to route. Exactly one of text, data (base64) or ref carries the input, and it must
    be one the task takes (``hub.capability.TASK_INPUTS``): never empty or whitespace only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: A request to run (InferRequest) must carry its input; a dry run or a simulated trace
    #: may leave it out (the router needs only its size).
    input_required: ClassVar[bool] = False
    id: str = Field(default="", max_length=128)
    task: str
    text: str | None = None
    data: str | None = Field(default=None, description="base64 bytes")
    ref: str | None = Field(default=None, max_length=2048, description="a reference the device resolves (URL, path)")
    input_size: int | None = Field(default=None, ge=0, description="bytes; derived from text or data when absent")
    audio_s: float | None = Field(default=None, ge=0, le=86_400, description="seconds of audio in data (speech "
                                  "tasks); read from its WAV header at the edge when absent")
    model: str | None = Field(default=None, min_length=1, max_length=128, description="run only this model (on "
                              "whichever device serving it the router picks), as Ollama's model field")
    budget_ms: float = Field(default=5000, gt=0, le=MAX_BUDGET_MS)
    quality_floor: float = Field(default=0.0, ge=0, le=1)
    local_only: bool = False
    deadline: float | None = Field(default=None, description="Unix seconds; deferrable work when set")
    mode: Literal["single", "consensus"] = "single"
    requester: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> "TaskRequest":
        check_task_input(self.task, {"text": self.text, "data": self.data, "ref": self.ref})
        if self.data is not None:
            try:
                base64.b64decode(self.data, validate=True)
            except ValueError:
                raise ValueError("data is not valid base64") from None
        problem = input_problem(self.task, self.text, self.data, self.ref, self.input_required)
        if problem is not None:
            raise input_error(type(self).__name__, *problem, getattr(self, problem[0]))
        return self

    def size(self) -> int:
        if self.input_size is not None:
            return self.input_size
        if self.text is not None:
            return len(self.text.encode())
        if self.data is not None:
            return len(self.data) * 3 // 4
        return 0


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the router sees it: what it announced plus its power state now."""

    id: str
    tier: Tier
    models: tuple[ModelSpec, ...]
    power_source: str
    battery_pct: float | None
    battery_floor_pct: float
    charging: bool | None
    active_w: float | None
    idle_w: float | None
    active_tasks: int = 0
    energy_mode: str = "prefer_local"
    marginal_g_per_kwh: float | None = None
    marginal_price_per_kwh: float | None = None
    #: Asleep, and the hub can wake it (hub/power): a call first waits ``wake_ms`` and costs
    #: ``wake_j`` more (the wake, and the idle minutes before it may sleep again).
    asleep: bool = False
    wake_ms: float = 0.0
    wake_j: float = 0.0


@dataclass(slots=True)  # not frozen: one is made per candidate per decision, and frozen init costs 2x
class Live:
    """Latency, success rate and expected quality of an entry for one decision: announced, or
    blended with what was learned from outcomes (``learned``, with the weights its latency and
    its confidence had against the announced figures, for the reasons in words)."""

    p50: float
    p95: float
    success_rate: float
    quality: float
    learned: "Learned | None" = None
    latency_weight: float = 0.0
    confidence_weight: float = 0.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One (device, model) pair with everything about it that does not depend on the request,
    computed once per fleet snapshot instead of once per decision."""

    device: DeviceView
    model: ModelSpec
    cloud: bool
    tier: Tier
    quality: float
    p50: float
    p95: float
    queue_ms: float
    measured: bool
    joules: float  # per call; 0 where it depends on the request's tokens (cloud, per-token models)
    gco2: float
    cost: float
    #: Local energy per generated token (0: per call); gCO2 and money per joule on this device.
    j_per_token: float
    g_per_j: float
    price_per_j: float
    below_floor: bool  # on battery below its floor: serves only its own tasks
    wake_ms: float  # 0 unless the device is asleep: then its announced wake latency
    wake_j: float
    announced: Live  # what to use while nothing has been learned
    rank: int  # tier.rank, read once per candidate per decision
    tiny_only: bool  # a larger than tiny model on a device in tiny_only mode (its battery is low)
    #: What grows with the request's size, per unit beyond the first ``unit_free``: for speech
    #: models ms and joules per second of audio (``unit_free`` is 0 when the model announced
    #: per-second figures; otherwise its per-call figures cover a ``REFERENCE_AUDIO_S`` clip and
    #: longer audio scales them); for embedding models, per 1,000 input tokens.
    ms_per_unit: float = 0.0
    j_per_unit: float = 0.0
    unit_free: float = 0.0
    #: task → (the Learned it was blended with, the blend). The stats snapshot after an outcome
    #: shares every other key's Learned with the one before, so decisions in the same fleet
    #: snapshot (the same `now`) blend only what changed.
    blended: dict[str, "tuple[Learned, Live]"] = field(default_factory=dict, compare=False, repr=False)


#: Speech tasks, whose cost grows with the audio's length.
AUDIO_TASKS = frozenset({"transcribe", "wakeword"})
#: The clip a speech model's per-call figures are taken to cover when it announced no
#: per-second ones (a spoken command is 2-5 s).
REFERENCE_AUDIO_S = 5.0

#: Typical p50/p95 (ms) for a tier when a model has not been measured yet.
TIER_LATENCY_MS = {Tier.tiny: (10, 30), Tier.small: (600, 1500), Tier.medium: (1500, 4000), Tier.large: (2000, 6000)}


#: Expected quality of a model that announced none (an Ollama model, a cloud model): a larger
#: tier is presumed better until outcomes say otherwise.
TIER_QUALITY = {Tier.tiny: 0.6, Tier.small: 0.65, Tier.medium: 0.8, Tier.large: 0.9}


def _entry(d: DeviceView, m: ModelSpec, task: str) -> Entry:
    cloud = m.runtime == "cloud" or d.tier is Tier.large
    measured = m.latency_ms is not None
    p50, p95 = (m.latency_ms.p50, m.latency_ms.p95) if m.latency_ms is not None else TIER_LATENCY_MS[d.tier]
    queue = (d.active_tasks - m.max_concurrency + 1) * p50 if d.active_tasks >= m.max_concurrency else 0.0
    joules = gco2 = cost = 0.0
    g_per_j = (d.marginal_g_per_kwh or 0.0) / 3.6e6
    price_per_j = (d.marginal_price_per_kwh or 0.0) / 3.6e6
    per_token = 0.0 if cloud else (m.energy_j_per_token or 0.0)
    wake_ms, wake_j = (d.wake_ms, d.wake_j) if d.asleep else (0.0, 0.0)
    if not cloud and not per_token:
        joules = m.energy_j_per_call if m.energy_j_per_call is not None else (d.active_w or 0.0) * (p50 + queue) / 1000
        joules += wake_j
        gco2 = joules * g_per_j
        cost = joules * price_per_j
    p50, p95 = p50 + wake_ms, p95 + wake_ms
    below = (d.power_source == "battery" and not d.charging and d.battery_pct is not None
             and d.battery_pct < d.battery_floor_pct)
    tier = Tier.large if cloud else d.tier
    announced = m.quality_for(task)
    quality = announced if announced is not None else TIER_QUALITY[tier]
    per_unit = (0.0, 0.0, 0.0)
    if task in AUDIO_TASKS:
        if m.ms_per_audio_s is not None:
            per_unit = (m.ms_per_audio_s, m.energy_j_per_audio_s or 0.0, 0.0)
        else:
            per_unit = ((p50 - wake_ms) / REFERENCE_AUDIO_S, (joules - wake_j) / REFERENCE_AUDIO_S, REFERENCE_AUDIO_S)
    elif m.ms_per_1k_tokens is not None or m.energy_j_per_1k_tokens is not None:
        per_unit = (m.ms_per_1k_tokens or 0.0, m.energy_j_per_1k_tokens or 0.0, 0.0)
    return Entry(d, m, cloud, tier, quality, p50 + queue, p95 + queue, queue, measured, joules, gco2, cost, per_token,
                 g_per_j, price_per_j, below, wake_ms, wake_j, Live(p50 + queue, p95 + queue, 1.0, quality), tier.rank,
                 tier is not Tier.tiny and d.energy_mode == "tiny_only", *per_unit)


@dataclass(frozen=True)
class FleetSnapshot:
    now: float
    devices: tuple[DeviceView, ...]
    #: task → the (device, model) entries serving it; built once, read by every decision.
    by_task: dict[str, tuple[Entry, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Entry]] = {}
        for d in self.devices:
            for m in d.models:
                if m.task_quality:  # the entries differ by task
                    for task in m.tasks:
                        index.setdefault(task, []).append(_entry(d, m, task))
                    continue
                e = _entry(d, m, m.tasks[0])
                for task in m.tasks:
                    index.setdefault(task, []).append(e)
        object.__setattr__(self, "by_task", {t: tuple(es) for t, es in index.items()})


@dataclass(frozen=True, slots=True)
class Candidate:
    device_id: str
    model: str
    runtime: str
    tier: Tier
    p50_ms: float
    p95_ms: float
    joules: float
    gco2: float
    cost: float
    quality: float
    score: float
    within_budget: bool
    #: Writes the reasons in words. Only API callers and the CLI read a fallback's reasons, so
    #: they are formatted when read (formatting a chain of 8 was a third of a decision).
    explain: Callable[[], tuple[str, ...]] = field(repr=False, compare=False)
    #: The model's announced max_concurrency: the hub's slots for it (hub/dispatch.py).
    concurrency: int = 1
    #: The device is asleep: the dispatcher wakes it first (``wake_ms`` of the latencies above
    #: and ``wake_score`` of the score are the wake's).
    wake_ms: float = 0.0
    wake_score: float = 0.0
    #: The part of the latencies above that grows with the request (its audio, its tokens): what
    #: is learned from outcomes is the call without it, so a 10 min recording and a 2 s command
    #: teach the same figure.
    extra_ms: float = 0.0

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.explain()


@dataclass(frozen=True, slots=True)
class Exclusion:
    device_id: str
    model: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class RouteDecision:
    request_id: str
    task: str
    policy: str
    min_tier: Tier
    chain: tuple[Candidate, ...]  # ranked: the first is chosen, the rest are the fallbacks
    excluded: tuple[Exclusion, ...]
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def chosen(self) -> Candidate | None:
        return self.chain[0] if self.chain else None
