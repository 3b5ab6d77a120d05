"""The agent's side of ``infer``: pick the model's executor, enforce its concurrency, time it,
estimate its joules, and keep the latency (and, for language models, the joules per generated
token; for speech models, the milliseconds and joules per second of audio; for embedding models,
per 1,000 input tokens) that the device advertises true to what it measures."""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..capability import LatencyMs, ModelSpec, Power
from ..rpc import InferAnswer, InferParams
from .executors import ExecutorSet
from .executors.base import Emit, ExecError, InferCall

#: Calls per model between refreshes of its advertised latency, and how many are kept.
REFRESH_EVERY = 20
WINDOW = 200

#: Tasks whose cost grows with the length of the audio: their models advertise a fixed part
#: (latency_ms, energy_j_per_call) plus a part per second of audio.
SPEECH_TASKS = frozenset({"transcribe", "wakeword"})
#: Tasks whose cost grows with the number of input tokens (a one-line query, a batch of 32 note
#: chunks): their models advertise a fixed part plus a part per 1,000 input tokens.
TOKEN_TASKS = frozenset({"embed"})
#: A line is fitted through (size, cost) once this many calls span this much of the unit (seconds
#: of audio, thousands of tokens); with fewer, or calls all of one size, the fixed part cannot be
#: told from the rest and the whole cost is put per unit.
MIN_FIT_CALLS = 5
MIN_FIT_SPREAD_S = 1.0
#: A short query (~10 tokens) and a note chunk (~200) are 0.19 apart.
MIN_FIT_SPREAD_KTOKENS = 0.1


@dataclass(frozen=True, slots=True)
class _Unit:
    """What a model's cost grows with. Its calls' sizes are fitted against their time and joules
    as a fixed part (latency_ms, energy_j_per_call) plus a part per unit (ModelSpec fields
    ``ms_field`` and ``j_field``)."""

    ms_field: str
    j_field: str
    min_spread: float


AUDIO_SECONDS = _Unit("ms_per_audio_s", "energy_j_per_audio_s", MIN_FIT_SPREAD_S)
KILO_TOKENS = _Unit("ms_per_1k_tokens", "energy_j_per_1k_tokens", MIN_FIT_SPREAD_KTOKENS)


@dataclass(frozen=True, slots=True)
class _SizedCall:
    """One call of a model priced per unit that ran the model."""

    size: float  # in the model's unit: seconds of audio, thousands of input tokens
    ms: float
    joules: float | None  # None: neither measured nor estimable from the device's power


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
        #: Size (audio seconds, kilo-tokens), time and joules per call that ran a model priced
        #: per unit (:func:`_unit`).
        self._sized_calls: dict[str, collections.deque[_SizedCall]] = {}
        self._calls: collections.Counter[str] = collections.Counter()
        #: Models loaded by their first call, with their warm figures to announce.
        self._loaded: dict[str, dict[str, Any]] = {}

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
            unit = _unit(model)
            if joules and result.tokens_out and model.runtime != "cloud" and unit is None:
                self._token_energy.setdefault(model.name, collections.deque(maxlen=WINDOW)).append(
                    (joules, result.tokens_out))
            if "load_ms" in result.stats and model.runtime == "whisper" and model.latency_ms is not None:
                # Loaded now: the cold-start allowance comes off at once.
                lat = model.latency_ms
                self._loaded[model.name] = {"latency_ms": LatencyMs(
                    p50=lat.p50, p95=max(lat.p50, lat.p95 - COLD_LOAD_MS))}
            size = _size(unit, call.task, result.stats, result.tokens_in) if unit is not None else None
            # A call that loaded the model first (load_ms) says more about the load than the model.
            if size is not None and "load_ms" not in result.stats:
                # Joules fitted per unit must come from this call: measured, or from the device's
                # power. The catalogue's energy_j_per_call fallback is a constant.
                from_power = self._power().active_w is not None and model.runtime != "cloud"
                self._sized_calls.setdefault(model.name, collections.deque(maxlen=WINDOW)).append(
                    _SizedCall(size, seconds * 1000, joules if (not estimated or from_power) else None))
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
        models, joules per generated token. A speech model's latency_ms is the fixed part of a
        call: it comes with ms_per_audio_s (and energy_j_per_call with energy_j_per_audio_s) from
        a line fitted through its calls (:func:`fit_line`); an embedding model's likewise with
        ms_per_1k_tokens and energy_j_per_1k_tokens. A re-announcement makes every hub
        re-validate the document and rebuild its fleet, so it is sent only when it matters."""
        out: dict[str, dict[str, Any]] = dict(self._loaded)
        self._loaded.clear()
        advertised = {m.name: m for m in self._models()}
        for name, samples in self._latencies.items():
            if self._calls[name] < self.refresh_every:
                continue
            self._calls[name] = 0
            updates: dict[str, Any] = {}
            spec = advertised.get(name)
            unit = _unit(spec) if spec is not None else None
            sized = self._sized_calls.get(name)
            if spec is not None and unit is not None and (sized or unit is AUDIO_SECONDS):
                # Only calls that ran the model count: the time of a silent clip is no fixed part.
                # (An embedding runtime that reports no token counts gets the plain p50/p95.)
                if sized:
                    updates.update(_sized_figures(spec, unit, list(sized)))
            else:
                ordered = sorted(samples)
                p50 = ordered[len(ordered) // 2]
                p95 = max(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], p50)
                old = spec.latency_ms if spec is not None else None
                if old is None or _off(old.p50, p50, 1.0) or _off(old.p95, p95, 1.0):
                    updates["latency_ms"] = LatencyMs(p50=round(p50, 3), p95=round(p95, 3))
            calls = self._token_energy.get(name)
            if calls:
                per_token = sum(j for j, _ in calls) / sum(t for _, t in calls)
                was = advertised[name].energy_j_per_token if name in advertised else None
                if was is None or _off(was, per_token, 0.0):
                    updates["energy_j_per_token"] = float(f"{per_token:.4g}")
            if updates:
                out.setdefault(name, {}).update(updates)
        return out


#: A Whisper model loads on its first call: 0.5 s on a quiet 2-core CPU, several seconds on a
#: busy one. Until it has, its p95 is announced with this on top, so that the hub's attempt
#: timeout (a multiple of p95) allows for the load instead of failing the first request.
COLD_LOAD_MS = 3000.0


def cold_start(model: ModelSpec) -> ModelSpec:
    """The figures to announce for a model that has not been loaded yet."""
    if model.runtime != "whisper" or model.latency_ms is None:
        return model
    lat = model.latency_ms
    return model.model_copy(update={"latency_ms": LatencyMs(p50=lat.p50, p95=lat.p95 + COLD_LOAD_MS)})


def _off(advertised: float, measured: float, at_least: float) -> bool:
    return abs(measured - advertised) > max(at_least, 0.2 * advertised)


def _unit(model: ModelSpec) -> _Unit | None:
    """What the model's cost grows with: audio for speech models, input tokens for embedding
    models; None for the others (a fixed latency, or joules per generated token)."""
    if not SPEECH_TASKS.isdisjoint(model.tasks):
        return AUDIO_SECONDS
    if not TOKEN_TASKS.isdisjoint(model.tasks):
        return KILO_TOKENS
    return None


def _size(unit: _Unit, task: str, stats: dict[str, float], tokens_in: int | None) -> float | None:
    """A call's size in ``unit``, or None when the call says nothing about the model's cost: a
    silent clip answered without running the model, a runtime that counts nothing."""
    if unit is AUDIO_SECONDS:
        audio_s = stats.get("audio_s")
        return float(audio_s) if audio_s and audio_s > 0 and stats.get("speech") != 0.0 else None
    if task in TOKEN_TASKS and tokens_in:
        return tokens_in / 1000
    return None


def fit_line(points: Sequence[tuple[float, float]], min_spread: float = MIN_FIT_SPREAD_S) -> tuple[float, float]:
    """(fixed part, per unit) for (size, cost) points, the size in seconds of audio or thousands
    of tokens: least squares once :data:`MIN_FIT_CALLS` points span ``min_spread``, else the
    whole cost per unit (through the origin). Neither part is ever negative: a line that would
    need one (noise, a cache that makes long clips cheap) gives way to the other part alone."""
    n = len(points)
    if n == 0:
        return 0.0, 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    total_x = sum(xs)
    through_origin = (0.0, sum(ys) / total_x if total_x > 0 else 0.0)
    if n < MIN_FIT_CALLS or max(xs) - min(xs) < min_spread:
        return through_origin
    mx, my = total_x / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    if slope < 0:
        return max(my, 0.0), 0.0  # cost does not grow with audio here: all of it is fixed
    intercept = my - slope * mx
    if intercept < 0:
        return through_origin
    return intercept, slope


def _sized_figures(spec: ModelSpec, unit: _Unit, calls: list[_SizedCall]) -> dict[str, Any]:
    """Updates of a model's fixed and per-unit figures, where they are off by more than 20 %. The
    fixed part's p50 is the fitted line's intercept; its p95 adds the 95th percentile of how far
    calls ran over the line."""
    out: dict[str, Any] = {}
    fixed, per_unit = fit_line([(c.size, c.ms) for c in calls], unit.min_spread)
    over = sorted(c.ms - (fixed + per_unit * c.size) for c in calls)
    p50 = fixed
    p95 = max(p50, fixed + over[min(len(over) - 1, int(0.95 * len(over)))])
    old = spec.latency_ms
    if old is None or _off(old.p50, p50, 1.0) or _off(old.p95, p95, 1.0):
        out["latency_ms"] = LatencyMs(p50=round(p50, 3), p95=round(p95, 3))
    was = getattr(spec, unit.ms_field)
    if was is None or _off(was, per_unit, 1.0):
        out[unit.ms_field] = float(f"{per_unit:.4g}")
    energy = [(c.size, c.joules) for c in calls if c.joules is not None]
    if energy:
        j_fixed, j_per_unit = fit_line(energy, unit.min_spread)
        if spec.energy_j_per_call is None or _off(spec.energy_j_per_call, j_fixed, 0.0):
            out["energy_j_per_call"] = float(f"{j_fixed:.4g}")
        was = getattr(spec, unit.j_field)
        if was is None or _off(was, j_per_unit, 0.0):
            out[unit.j_field] = float(f"{j_per_unit:.4g}")
    return out
