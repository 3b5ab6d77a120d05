"""The agent's side of ``infer``: pick the model's executor, enforce its concurrency, time it,
estimate its joules, and keep the latency (and, for language models, the joules per generated
token) that the device advertises true to what it measures."""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..capability import LatencyMs, ModelSpec, Power
from ..rpc import InferAnswer, InferParams
from .executors import ExecutorSet
from .executors.base import Emit, ExecError, InferCall

#: Calls per model between refreshes of its advertised latency, and how many are kept.
REFRESH_EVERY = 20
WINDOW = 200


class InferService:
    def __init__(self, models: Callable[[], Sequence[ModelSpec]], power: Callable[[], Power],
                 executors: ExecutorSet, refresh_every: int = REFRESH_EVERY) -> None:
        self._models = models
        self._power = power
        self.executors = executors
        self.refresh_every = refresh_every
        self.active: collections.Counter[str] = collections.Counter()
        self._latencies: dict[str, collections.deque[float]] = {}
        #: (joules, tokens generated) per call of a local language model.
        self._token_energy: dict[str, collections.deque[tuple[float, int]]] = {}
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
        joules, estimated = result.joules, False
        if joules is None:
            joules, estimated = self._estimate_joules(model, seconds), True
        if not result.simulated:
            self._observe(model.name, seconds * 1000)
            if joules and result.tokens_out and model.runtime != "cloud":
                self._token_energy.setdefault(model.name, collections.deque(maxlen=WINDOW)).append(
                    (joules, result.tokens_out))
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

    def refreshed_figures(self) -> dict[str, dict[str, Any]]:
        """Updates for the models due for a refresh (every ``refresh_every`` calls) whose advertised
        figures are off by more than 20 % (and 1 ms): measured p50/p95 and, for local language
        models, joules per generated token. A re-announcement makes every hub re-validate the
        document and rebuild its fleet, so it is sent only when it matters."""
        out: dict[str, dict[str, Any]] = {}
        advertised = {m.name: m for m in self._models()}
        for name, samples in self._latencies.items():
            if self._calls[name] < self.refresh_every:
                continue
            self._calls[name] = 0
            updates: dict[str, Any] = {}
            ordered = sorted(samples)
            p50 = ordered[len(ordered) // 2]
            p95 = max(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], p50)
            old = advertised[name].latency_ms if name in advertised else None
            if old is None or _off(old.p50, p50, 1.0) or _off(old.p95, p95, 1.0):
                updates["latency_ms"] = LatencyMs(p50=round(p50, 3), p95=round(p95, 3))
            calls = self._token_energy.get(name)
            if calls:
                per_token = sum(j for j, _ in calls) / sum(t for _, t in calls)
                was = advertised[name].energy_j_per_token if name in advertised else None
                if was is None or _off(was, per_token, 0.0):
                    updates["energy_j_per_token"] = float(f"{per_token:.4g}")
            if updates:
                out[name] = updates
        return out


def _off(advertised: float, measured: float, at_least: float) -> bool:
    return abs(measured - advertised) > max(at_least, 0.2 * advertised)
