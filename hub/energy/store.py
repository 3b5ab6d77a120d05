"""The hub's energy inputs: the last good value of every metric, with its age and any error.

Plugins report through :class:`hub.plugin_api.EnergySink`, which lands here. Each reading is
checked (known metric, finite, within range); a bad one is refused with a reason, counted, and
the last good value is kept and ages until it is stale. Nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from ..bus import EventBus
from ..rejects import Rejections
from .model import METRICS, POWER_METRICS, ForecastPoint, InputValue


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """A good reading, as stored in history."""

    metric: str
    value: float
    at: float
    source: str


@dataclass(frozen=True, slots=True)
class EnergyInputsChanged:
    metric: str


class EnergyStore:
    def __init__(self, bus: EventBus, rejections: Rejections, max_site_power_w: float = 100_000) -> None:
        self._bus = bus
        self._rejections = rejections
        self.max_site_power_w = max_site_power_w
        self.inputs: dict[str, InputValue] = {}
        self.forecasts: dict[str, list[ForecastPoint]] = {}
        self.version = 0  # bumped on every change: cheap "has anything changed" for publishers

    def check(self, metric: str, value: float) -> str | None:
        """Why ``value`` is not a plausible reading of ``metric``, or None when it is."""
        spec = METRICS.get(metric)
        if spec is None:
            return f"unknown metric {metric!r} (known: {', '.join(METRICS)})"
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"{metric} is not a finite number: {value!r}"
        low, high = spec.low, spec.high
        if metric in POWER_METRICS:
            low, high = max(low, -self.max_site_power_w), min(high, self.max_site_power_w)
        if not low <= value <= high:
            return f"{metric} = {value:g} {spec.unit} is outside the plausible range [{low:g}, {high:g}]"
        return None

    def report(self, source: str, metric: str, value: float, at: float | None = None,
               stale_after_s: float = 300) -> bool:
        at = time.time() if at is None else at
        problem = self.check(metric, value)
        if problem is not None:
            self.fail(source, metric, problem, at, rejected=True)
            return False
        self.inputs[metric] = InputValue(metric, float(value), source, at, stale_after_s)
        self.version += 1
        self._bus.publish(EnergyReading(metric, float(value), at, source))
        self._bus.publish(EnergyInputsChanged(metric))
        return True

    def fail(self, source: str, metric: str, reason: str, at: float | None = None, rejected: bool = False) -> None:
        """The source could not deliver ``metric`` (timeout, HTTP error, bad payload): keep the
        last good value, remember why."""
        at = time.time() if at is None else at
        if rejected:
            self._rejections.reject(f"energy input {metric!r} from {source}", reason, counter="rejected_readings")
        prev = self.inputs.get(metric)
        if prev is None:
            prev = InputValue(metric, None, source, None, 300)
        self.inputs[metric] = replace(prev, error=reason, error_at=at)
        self.version += 1
        self._bus.publish(EnergyInputsChanged(metric))

    def set_forecast(self, source: str, metric: str, points: list[ForecastPoint]) -> int:
        """Replace the forecast of ``metric``; implausible points are dropped (and counted).
        Returns how many points were kept."""
        kept = []
        for p in points:
            problem = self.check(metric, p.value)
            if problem is None and not (math.isfinite(p.start) and math.isfinite(p.end) and p.end > p.start):
                problem = f"forecast point with an empty or reversed interval [{p.start}, {p.end}]"
            if problem is not None:
                self._rejections.reject(f"energy forecast {metric!r} from {source}", problem,
                                        counter="rejected_readings")
                continue
            kept.append(p)
        self.forecasts[metric] = sorted(kept, key=lambda p: p.start)
        self.version += 1
        self._bus.publish(EnergyInputsChanged(metric))
        return len(kept)
