"""Request/response envelopes on ``<root>/device/<id>/rpc`` (MQTT 5 response topic and
correlation data; MQTT 3.1.1 clients name the reply topic in ``reply_to``).

A streamed answer is a sequence of :class:`RpcChunk` on the response topic (``seq`` from 0, in
order: one publisher, one topic, QoS 1), then the final :class:`RpcResponse`, which says how
many chunks there were, so that a receiver knows it has them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .capability import PROTOCOL_VERSION, check_task_input, input_error, input_problem

METHODS = ("health", "echo", "infer", "cancel", "sleep")
#: Longest a single call may be given, on the wire (an hour: batch transcription on a laptop).
MAX_TIMEOUT_MS = 3_600_000

#: Called with each piece of a streamed answer, in order.
OnChunk = Callable[[str], Awaitable[None]]

#: Refusals that are the caller's error, with their HTTP status: the request itself is invalid,
#: so it is not the device's failure (no cooldown) and not escalated (the next device would
#: refuse it too).
CALLER_ERRORS: dict[str, int] = {"bad_request": 400, "too_large": 413}
#: Back-pressure: the device is well but full. Never a failure: the hub tries another candidate
#: or waits for a slot.
BACKPRESSURE_ERRORS = frozenset({"busy", "rate_limited"})


class RpcRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION
    id: str = Field(min_length=1, max_length=128, description="Request id, echoed in the response")
    method: str = Field(min_length=1, max_length=64, description="health | echo | infer | cancel | sleep")
    params: dict[str, Any] = Field(default_factory=dict)
    #: MQTT 3.1.1 clients have no response-topic property: they name it here.
    reply_to: str | None = Field(default=None, max_length=512, description="Reply topic for MQTT 3.1.1 clients; must be under the topic root")


class InferParams(BaseModel):
    """``params`` of method ``infer``: run one model on one input."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="Task type, one of the known tasks")
    model: str = Field(min_length=1, max_length=128, description="A model this device announced")
    text: str | None = None
    data: str | None = Field(default=None, description="base64 bytes")
    ref: str | None = Field(default=None, max_length=2048)
    options: dict[str, Any] = Field(default_factory=dict, description="Runtime options: max_tokens, temperature, system")
    stream: bool = Field(default=False, description="Send the answer in chunks before the final response")
    timeout_ms: float = Field(default=30_000, gt=0, le=MAX_TIMEOUT_MS)

    @model_validator(mode="after")
    def _check(self) -> "InferParams":
        check_task_input(self.task, {"text": self.text, "data": self.data, "ref": self.ref})
        # The same input rules as the hub's (a direct caller, another hub): refused as the
        # caller's error before any executor runs.
        problem = input_problem(self.task, self.text, self.data, self.ref, required=True)
        if problem is not None:
            raise input_error(type(self).__name__, *problem, getattr(self, problem[0]))
        return self


class CancelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, description="The request to cancel")


class SleepParams(BaseModel):
    """``params`` of method ``sleep``: the hub asks an idle device to suspend (issue 16). The
    device answers ``{"sleeping": true, "after_s": 0, "wake": <its WakeMethod>}``, or refuses
    (``unavailable``: it has no sleep command; ``busy``: calls running, or not idle long enough)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=256, description="Why the hub asks, for the device's log")


class InferAnswer(BaseModel):
    """``result`` of a successful ``infer``."""

    model: str
    output: Any = Field(description="Text, a label, or a vector (embed)")
    confidence: float | None = Field(default=None, ge=0, le=1)
    joules: float | None = Field(default=None, ge=0, description="Measured, or estimated from the device's power")
    joules_estimated: bool = True
    tokens_in: int | None = None
    tokens_out: int | None = None
    stats: dict[str, float] = Field(default_factory=dict, description="What the runtime reported (tokens_per_s, load_ms, ...)")
    simulated: bool = Field(default=False, description="True when no real model ran (the demo's simulated runtime)")


class RpcTimings(BaseModel):
    queue_ms: float = Field(ge=0, description="From receipt to start of work")
    compute_ms: float = Field(ge=0, description="Work itself")


class RpcErrorBody(BaseModel):
    code: str = Field(description="bad_request | too_large | unknown_method | unknown_model | model_missing | busy "
                                  "| timeout | cancelled | rate_limited | upstream | unavailable | no_answer | internal; "
                                  "hub answers also: overloaded | no_route | failed | unknown_device")
    message: str
    retry_after_s: float | None = Field(default=None, description="busy, rate_limited, overloaded: when to try again")


class RpcResponse(BaseModel):
    v: int = PROTOCOL_VERSION
    id: str | None = Field(description="The request's id; null when the request could not be parsed")
    ok: bool
    result: dict[str, Any] | None = None
    timings: RpcTimings | None = None
    error: RpcErrorBody | None = None
    chunks: int | None = Field(default=None, description="Streamed answers: how many chunks came before")


class RpcChunk(BaseModel):
    v: int = PROTOCOL_VERSION
    id: str
    seq: int = Field(ge=0)
    chunk: str
    type: Literal["chunk"] = "chunk"
