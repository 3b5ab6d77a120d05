"""What an executor is: the code that runs one model of one runtime inside the agent.

The agent picks the executor by the model's ``runtime`` (``code``, ``simulated``, ``tflite``,
``ollama``, ``cloud``, ``llamacpp``, ``whisper``, ``wakeword``) and calls :meth:`Executor.run`
once per request. An executor raises :class:`ExecError` with a code from :data:`ERROR_CODES` for
anything the caller should see; the agent turns it into the RPC error body. For text
generation, ``emit`` (when given) receives the answer in pieces as they are produced, in order;
``run`` still returns the whole answer at the end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...capability import ModelSpec

#: Error codes on the wire (docs/protocol.md). ``busy`` and ``timeout`` are set by the agent.
ERROR_CODES = ("bad_request", "too_large", "unknown_method", "unknown_model", "model_missing",
               "busy", "timeout", "cancelled", "rate_limited", "upstream", "unavailable", "no_answer",
               "internal")

Emit = Callable[[str], Awaitable[None]]


class ExecError(Exception):
    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code, self.message, self.retry_after_s = code, message, retry_after_s


@dataclass(frozen=True, slots=True)
class InferCall:
    """One request for one model. Exactly one of text, data or ref carries the input (the
    agent checked that); ``options`` are runtime-specific (temperature, max_tokens, ...)."""

    id: str
    task: str
    model: ModelSpec
    text: str | None = None
    data: bytes | None = None
    ref: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 30.0


@dataclass(slots=True)
class InferResult:
    output: Any  # str for text tasks, a label for intent/classify, a list of floats for embed
    confidence: float | None = None  # where the model gives one (softmax, a judge, logprobs)
    joules: float | None = None  # measured or estimated for this call; None: the agent estimates
    tokens_in: int | None = None
    tokens_out: int | None = None
    #: Figures the runtime reported (Ollama's eval_count/eval_duration, the cloud's usage) so the
    #: agent can refresh the latency it advertises.
    stats: dict[str, float] = field(default_factory=dict)
    simulated: bool = False


class Executor(Protocol):
    runtime: str

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult: ...

    async def aclose(self) -> None: ...
