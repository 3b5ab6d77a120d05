"""The router's values: the task request, the fleet it sees, and the decision it returns."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..capability import KNOWN_TASKS, ModelSpec, Tier

MAX_BUDGET_MS = 10 * 60 * 1000


class TaskRequest(BaseModel):
    """A task to route. Exactly one of text, data (base64) or ref carries the input."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(default="", max_length=128)
    task: str
    text: str | None = None
    data: str | None = Field(default=None, description="base64 bytes")
    ref: str | None = Field(default=None, max_length=2048, description="a reference the device resolves (URL, path)")
    input_size: int | None = Field(default=None, ge=0, description="bytes; derived from text or data when absent")
    budget_ms: float = Field(default=5000, gt=0, le=MAX_BUDGET_MS)
    quality_floor: float = Field(default=0.0, ge=0, le=1)
    local_only: bool = False
    deadline: float | None = Field(default=None, description="Unix seconds; deferrable work when set")
    mode: Literal["single", "consensus"] = "single"
    requester: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> "TaskRequest":
        if self.task not in KNOWN_TASKS:
            raise ValueError(f"unknown task {self.task!r} (known: {', '.join(KNOWN_TASKS)})")
        given = [k for k in ("text", "data", "ref") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one input, not {' and '.join(given)}")
        if self.data is not None:
            try:
                base64.b64decode(self.data, validate=True)
            except ValueError:
                raise ValueError("data is not valid base64") from None
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


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    now: float
    devices: tuple[DeviceView, ...]


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
    reasons: tuple[str, ...]


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
