"""What a client asks the hub to run and what it gets back: the request (validated at the edge:
HTTP, MQTT commands, plugins), each attempt on a device, and the outcome. The dispatcher
(hub/dispatch.py) turns one into the other; the simulator reads the same outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from ..rpc import MAX_TIMEOUT_MS
from .model import TaskRequest


#: Tasks whose prompt may carry retrieved notes (``"context": "notes"``).
CONTEXT_TASKS = frozenset({"qa", "summarize", "draft"})


class InferRequest(TaskRequest):
    """What a client sends to run a task (``POST /api/infer``, ``<root>/cmd/infer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_required: ClassVar[bool] = True  # a task to run names what it runs on
    stream: bool = Field(default=False, description="Stream text as it is generated")
    options: dict[str, Any] = Field(default_factory=dict, description="max_tokens, temperature, system")
    timeout_ms: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_MS, description="Hard limit for the whole request")
    context: Literal["notes"] | None = Field(default=None, description="qa, summarize, draft: send the notes "
                                             "retrieved for the text with the prompt, and cite them")

    @model_validator(mode="after")
    def _context_for_text_tasks(self) -> "InferRequest":
        if self.context is not None and self.task not in CONTEXT_TASKS:
            raise ValueError(f"context is for {', '.join(sorted(CONTEXT_TASKS))}, not {self.task}")
        return self


@dataclass
class Attempt:
    device_id: str
    model: str
    tier: str
    ok: bool
    latency_ms: float
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device_id, "model": self.model, "tier": self.tier, "ok": self.ok,
                "latency_ms": round(self.latency_ms, 3), **({"error": self.error} if self.error else {})}


@dataclass
class InferOutcome:
    id: str
    task: str
    ok: bool
    output: Any = None
    served_by: dict[str, str] | None = None  # device, model, layer
    confidence: float | None = None
    latency_ms: float = 0.0
    joules: float = 0.0
    gco2: float = 0.0
    cost: float = 0.0
    cached: bool | Literal["semantic"] = False  # "semantic": a question that means the same was answered
    simulated: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    error: dict[str, Any] | None = None  # code, message; retry_after_s when overloaded
    reasons: list[str] = field(default_factory=list)
    deferred_s: float = 0.0
    votes: dict[str, int] | None = None
    hub: str = ""  # which hub answered (several may share a fleet)
    runtime: str = ""  # the answering model's runtime (the cache's key; not in the document)
    sources: list[dict[str, Any]] | None = None  # the notes sent with the prompt, as cited ([1] is sources[0])

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "hub": self.hub, "task": self.task, "ok": self.ok, "output": self.output,
                               "served_by": self.served_by, "confidence": self.confidence,
                               "latency_ms": round(self.latency_ms, 3), "joules": round(self.joules, 6),
                               "gco2": round(self.gco2, 9), "cost": round(self.cost, 9), "cached": self.cached,
                               "attempts": [a.to_dict() for a in self.attempts], "reasons": self.reasons}
        if self.simulated:
            doc["simulated"] = True
        if self.error:
            doc["error"] = self.error
        if self.deferred_s:
            doc["deferred_s"] = round(self.deferred_s, 3)
        if self.votes is not None:
            doc["votes"] = self.votes
        if self.sources is not None:
            doc["sources"] = self.sources
        return doc


class RequestError(ValueError):
    """A request the hub refuses before routing (too large, unknown device...)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
