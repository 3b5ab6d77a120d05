"""The agent's side of ``infer``: pick the model's executor, enforce its concurrency, time it,
estimate its joules, and keep the latency the device advertises true to what it measures."""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Callable, Sequence

from ..capability import LatencyMs, ModelSpec, Power
from ..rpc import InferAnswer, InferParams
from .executors import ExecutorSet
from .executors.base import Emit, ExecError, InferCall

#: Calls per model between refreshes of its advertised latency, and how many are kept.
REFRESH_EVERY = 20
WINDOW = 200


class InferService:
    def __init__(self, models: Callable[[], Sequence[ModelSpec]], power: Callable[[], Power],
                 executors: ExecutorSet) -> None:
        self._models = models
        self._power = power
        self.executors = executors
        self.active: collections.Counter[str] = collections.Counter()
        self._latencies: dict[str, collections.deque[float]] = {}
        self._calls: collections.Counter[str] = collections.Counter()

    @property
    def total_active(self) -> int:
        return sum(self.active.values())

    def _model(self, name: str, task: str) -> ModelSpec:
        for m in self._models():
            if m.name == name:
                if task not in m.tasks:
                    raise ExecError("bad_request", f"model {name!r} does not do {task!r} (it does {', '.join(m.tasks)})")
                return m
        raise ExecError("unknown_model", f"this device has no model {name!r} "
                                         f"(it has {', '.join(m.name for m in self._models()) or 'none'})")

    async def run(self, request_id: str, params: InferParams, emit: Emit | None) -> InferAnswer:
        model = self._model(params.model, params.task)
        if self.active[model.name] >= model.max_concurrency:
            # Refuse rather than queue: the hub holds the queue and can send it elsewhere.
            raise ExecError("busy", f"{model.name} is running {self.active[model.name]} of "
                                    f"{model.max_concurrency} concurrent calls")
        data = None
        if params.data is not None:
            try:
                data = base64.b64decode(params.data, validate=True)
            except ValueError:
                raise ExecError("bad_request", "data is not valid base64") from None
        call = InferCall(id=request_id, task=params.task, model=model, text=params.text, data=data, ref=params.ref,
                         options=params.options, timeout_s=params.timeout_ms / 1000)
        executor = self.executors.get(model.runtime)
        self.active[model.name] += 1
        started = time.perf_counter()
        try:
            result = await executor.run(call, emit)
        finally:
            self.active[model.name] -= 1
        seconds = time.perf_counter() - started
        if not result.simulated:
            self._observe(model.name, seconds * 1000)
        joules, estimated = result.joules, False
        if joules is None:
            joules, estimated = self._estimate_joules(model, seconds), True
        return InferAnswer(model=model.name, output=result.output, confidence=result.confidence,
                           joules=round(joules, 6) if joules is not None else None, joules_estimated=estimated,
                           tokens_in=result.tokens_in, tokens_out=result.tokens_out, stats=result.stats,
                           simulated=result.simulated)

    def _estimate_joules(self, model: ModelSpec, seconds: float) -> float | None:
        power = self._power()
        if power.active_w is not None and model.runtime != "cloud":
            return (power.active_w - (power.idle_w or 0.0)) * seconds
        return model.energy_j_per_call

    def _observe(self, model: str, ms: float) -> None:
        self._latencies.setdefault(model, collections.deque(maxlen=WINDOW)).append(ms)
        self._calls[model] += 1

    def refreshed_latency(self) -> dict[str, LatencyMs]:
        """Measured p50/p95 of the models due for a refresh (every REFRESH_EVERY calls) whose
        advertised figures are off by more than 20 % and 1 ms: a re-announcement makes every hub
        re-validate the document and rebuild its fleet, so it is sent only when it matters."""
        out = {}
        advertised = {m.name: m.latency_ms for m in self._models()}
        for name, samples in self._latencies.items():
            if self._calls[name] < REFRESH_EVERY:
                continue
            self._calls[name] = 0
            ordered = sorted(samples)
            p50 = ordered[len(ordered) // 2]
            p95 = max(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], p50)
            old = advertised.get(name)
            if old is None or _off(old.p50, p50) or _off(old.p95, p95):
                out[name] = LatencyMs(p50=round(p50, 3), p95=round(p95, 3))
        return out


def _off(advertised: float, measured: float) -> bool:
    return abs(measured - advertised) > max(1.0, 0.2 * advertised)
