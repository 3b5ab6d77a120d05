"""`sovereign simulate`: replay a trace of tasks over days through the SAME router, stats, cache,
rules and ledger code, with batteries that drain and charge, PV from a solar CSV and grid carbon
from a carbon CSV, and device latency, energy and failure models from a fleet file.

Deterministic for a given seed: the only randomness (latency spread, failures) comes from one
``random.Random(seed)`` per policy run.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .capability import LatencyMs, ModelSpec, Tier
from .config import ConfigError, format_validation_error
from .energy.model import ForecastPoint, InputValue, ModeThresholds
from .energy.series import Series
from .energy.snapshot import DeviceEnergyView, compute_snapshot
from .router.cache import CacheConfig, ResultCache
from .router.ledger import Ledger, LedgerEntry
from .router.model import DeviceView, FleetSnapshot, TaskRequest
from .router.plan import plan_deferral
from .router.route import CloudPrice, RouterConfig, cloud_counterfactual, route
from .router.stats import LearningConfig, Outcome, StatsStore

POLICIES = ("always-cloud", "seed-rules", "local-first", "sovereign")


# -- the fleet file --------------------------------------------------------------------------------

class SimModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    runtime: str
    tasks: list[str]
    p50_ms: float = Field(gt=0)
    p95_ms: float = Field(gt=0)
    joules: float = Field(default=0, ge=0, description="per call (local models)")
    j_per_token: float | None = Field(default=None, ge=0, description="language models: per generated token, "
                                                                       "instead of per call")
    quality: float = Field(ge=0, le=1)
    #: Per task where a published benchmark for that task differs from the general figure.
    task_quality: dict[str, float] | None = None
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    max_concurrency: int = Field(default=1, ge=1)


class SimDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    tier: Tier
    power_source: str = "mains"
    battery_wh: float | None = Field(default=None, gt=0)
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    battery_floor_pct: float = Field(default=20, ge=0, le=100)
    idle_w: float = Field(default=0, ge=0)
    active_w: float = Field(default=0, ge=0)
    charge_w: float = Field(default=0, ge=0)
    #: Local hours [start, end) when the device is plugged in (may wrap past midnight).
    plugged_hours: list[tuple[int, int]] = Field(default_factory=list)
    models: list[SimModel]


class SimSite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    solar_peak_w: float = Field(default=4000, ge=0)
    load_w: float = Field(default=400, ge=0)
    price_per_kwh: float = Field(default=0.25, ge=0)
    export_price_per_kwh: float = Field(default=0.05, ge=0)


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: SimSite = Field(default_factory=SimSite)
    devices: list[SimDevice]
    cloud_prices: dict[str, CloudPrice] = Field(default_factory=dict)
    cloud_g_per_kwh: float = Field(default=300, ge=0)
    cloud_j_per_token: float = Field(default=1.0, ge=0)


class TraceTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: float = Field(ge=0, description="seconds from the start of the replay")
    task: str
    text: str | None = None
    ref: str | None = Field(default=None, description="input held elsewhere (an audio clip, an EEG window)")
    input_size: int | None = Field(default=None, ge=0, description="bytes of a ref's input")
    budget_ms: float = 5000
    quality_floor: float = 0.0
    local_only: bool = False
    deadline_s: float | None = Field(default=None, gt=0, description="seconds after t")
    requester: str | None = None


def load_fleet(path: Path) -> FleetFile:
    try:
        return FleetFile.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{path}: ")) from None


def load_trace(path: Path) -> list[TraceTask]:
    tasks = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tasks.append(TraceTask.model_validate_json(line))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"{path}:{n}: ")) from None
    return sorted(tasks, key=lambda t: t.t)


# -- device state ----------------------------------------------------------------------------------

@dataclass
class Battery:
    spec: SimDevice
    pct: float
    violations: int = 0

    def plugged(self, local_hour: float) -> bool:
        for start, end in self.spec.plugged_hours:
            if (start <= end and start <= local_hour < end) or (start > end and (local_hour >= start or local_hour < end)):
                return True
        return False

    def advance(self, seconds: float, local_hour: float) -> None:
        if self.spec.battery_wh is None:
            return
        watts = (self.spec.charge_w if self.plugged(local_hour) else 0.0) - self.spec.idle_w
        self.pct = min(100.0, max(0.0, self.pct + watts * seconds / 3600 / self.spec.battery_wh * 100))

    def drain(self, joules: float) -> None:
        if self.spec.battery_wh is not None:
            self.pct = max(0.0, self.pct - joules / 3600 / self.spec.battery_wh * 100)


@dataclass
class PolicyResult:
    tasks: int = 0
    cost: float = 0.0
    joules: float = 0.0
    gco2: float = 0.0
    latencies: list[float] = field(default_factory=list)
    slo_misses: int = 0
    quality_sum: float = 0.0
    deferred: int = 0
    delays: list[float] = field(default_factory=list)
    battery_floor_violations: int = 0
    failures: int = 0
    escalations: int = 0

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)

        def q(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))] if lat else 0.0

        return {"tasks": self.tasks, "cost": round(self.cost, 4), "kwh": round(self.joules / 3.6e6, 4),
                "gco2": round(self.gco2, 2), "p50_ms": round(q(0.5), 1), "p95_ms": round(q(0.95), 1),
                "slo_miss_pct": round(100 * self.slo_misses / max(self.tasks, 1), 2),
                "quality_weighted_success": round(100 * self.quality_sum / max(self.tasks, 1), 2),
                "battery_floor_violations": self.battery_floor_violations,
                "deferred": self.deferred, "mean_deferral_s": round(statistics.fmean(self.delays), 1) if self.delays else 0.0,
                "escalations": self.escalations}


# -- the run -------------------------------------------------------------------------------------

def _views(fleet: FleetFile, batteries: dict[str, Battery], energy: Any, local_hour: float,
           running: dict[str, int]) -> tuple[DeviceView, ...]:
    views = []
    for d in fleet.devices:
        b = batteries[d.id]
        plugged = b.plugged(local_hour)
        models = tuple(ModelSpec(name=m.name, runtime=m.runtime, tasks=m.tasks, latency_ms=LatencyMs(p50=m.p50_ms, p95=m.p95_ms),
                                 energy_j_per_call=m.joules, energy_j_per_token=m.j_per_token, quality=m.quality, task_quality=m.task_quality,
                                 max_concurrency=m.max_concurrency)
                       for m in d.models)
        power = energy.devices.get(d.id)
        views.append(DeviceView(
            id=d.id, tier=d.tier, models=models, power_source=d.power_source,
            battery_pct=b.pct if d.battery_wh else None, battery_floor_pct=d.battery_floor_pct, charging=plugged,
            active_w=d.active_w, idle_w=d.idle_w, active_tasks=running.get(d.id, 0),
            energy_mode=power.mode.value if power else energy.mode.value,
            marginal_g_per_kwh=power.marginal_g_per_kwh if power else energy.site_marginal_g_per_kwh,
            marginal_price_per_kwh=power.marginal_price_per_kwh if power else energy.site_marginal_price_per_kwh))
    return tuple(views)


def run_policy(policy: str, fleet: FleetFile, trace: list[TraceTask], carbon: Series, solar: Series | None,
               start: float, seed: int) -> PolicyResult:
    rng = random.Random(seed)
    cfg = RouterConfig(policy=policy, cloud_prices=fleet.cloud_prices, cloud_g_per_kwh=fleet.cloud_g_per_kwh,
                       cloud_j_per_token=fleet.cloud_j_per_token)
    stats = StatsStore(LearningConfig())
    cache = ResultCache(CacheConfig(), None)
    ledger = Ledger(None)
    thresholds = ModeThresholds()
    batteries = {d.id: Battery(d, d.battery_pct if d.battery_pct is not None else 100.0) for d in fleet.devices}
    specs = {(d.id, m.name): m for d in fleet.devices for m in d.models}
    solar_max = max(solar.values) if solar else 0.0
    result = PolicyResult()
    queue: list[tuple[float, int, TraceTask, float]] = [(t.t, i, t, t.t) for i, t in enumerate(trace)]
    heapq.heapify(queue)
    clock = 0.0
    n = len(trace)
    while queue:
        at, seq, task, submitted = heapq.heappop(queue)
        now = start + at
        local_hour = datetime.fromtimestamp(now, timezone.utc).hour + datetime.fromtimestamp(now, timezone.utc).minute / 60
        for b in batteries.values():
            b.advance(at - clock, local_hour)
        clock = at
        pv = solar.at(now) / solar_max * fleet.site.solar_peak_w if solar and solar_max else 0.0
        inputs = {"carbon_g_per_kwh": InputValue("carbon_g_per_kwh", carbon.at(now), "sim", now, 3600),
                  "pv_w": InputValue("pv_w", pv, "sim", now, 3600),
                  "load_w": InputValue("load_w", fleet.site.load_w, "sim", now, 3600),
                  "price_per_kwh": InputValue("price_per_kwh", fleet.site.price_per_kwh, "sim", now, 3600),
                  "export_price_per_kwh": InputValue("export_price_per_kwh", fleet.site.export_price_per_kwh, "sim", now, 3600)}
        forecast = {"carbon_g_per_kwh": [ForecastPoint(a, b, v) for a, b, v in carbon.window(now, now + 48 * 3600)]}
        device_energy = [DeviceEnergyView(d.id, d.power_source, batteries[d.id].pct if d.battery_wh else None,
                                          batteries[d.id].plugged(local_hour), d.active_w, now) for d in fleet.devices]
        energy = compute_snapshot(now, inputs, forecast, device_energy, thresholds)
        req = TaskRequest(id=f"t{seq}", task=task.task, text=task.text, ref=task.ref, input_size=task.input_size,
                          budget_ms=task.budget_ms,
                          quality_floor=task.quality_floor, local_only=task.local_only, requester=task.requester,
                          deadline=(start + submitted + task.deadline_s) if task.deadline_s else None)
        fleet_snap = FleetSnapshot(now, _views(fleet, batteries, energy, local_hour, {}))
        decision = route(req, fleet_snap, cfg, stats.snapshot())
        if req.deadline is not None and at == submitted and policy in ("sovereign",):
            plan = plan_deferral(req, decision, energy)
            if plan.run_at > now + 1:
                result.deferred += 1
                result.delays.append(plan.run_at - now)
                heapq.heappush(queue, (plan.run_at - start, n + len(result.delays), task, submitted))
                continue
        result.tasks += 1
        # The simulated cache keys answers by the chosen layer (the fleet file's models do not
        # change runtime during a replay), as the hub did before it keyed them by model.
        hit = cache.get(req, [(decision.chosen.tier.value, "layer")] if decision.chosen else [], now=now)
        if hit is not None:
            result.latencies.append(1.0)
            result.quality_sum += hit[1]["quality"]
            continue
        latency_total = 0.0
        served = False
        for i, cand in enumerate(decision.chain):
            spec = specs[(cand.device_id, cand.model)]
            sigma = max(0.05, math.log(spec.p95_ms / spec.p50_ms) / 1.645)
            latency = spec.p50_ms * math.exp(rng.gauss(0, sigma))
            ok = rng.random() >= spec.failure_rate
            latency_total += latency if ok else min(latency, task.budget_ms)
            stats.record(Outcome(req.id, cand.device_id, cand.model, req.task, cand.tier.value, ok, latency, now))
            joules = cand.joules
            batteries[cand.device_id].drain(joules)
            b = batteries[cand.device_id]
            if (b.spec.battery_wh and b.pct < b.spec.battery_floor_pct and req.requester != cand.device_id
                    and not b.plugged(local_hour)):
                result.battery_floor_violations += 1  # drained below its floor for another device's task
            result.joules += joules
            result.gco2 += cand.gco2
            result.cost += cand.cost
            cloud_cost, cloud_g = cloud_counterfactual(req, cfg)
            ledger.add(LedgerEntry(req.id, now, req.task, cand.device_id, cand.model, cand.tier.value, ok, latency,
                                   joules, cand.gco2, cand.cost, cloud_cost, cloud_g))
            if ok:
                served = True
                result.escalations += i > 0
                result.quality_sum += cand.quality
                cache.put(req, (cand.tier.value, "layer"), {"quality": cand.quality}, now=now)
                break
            result.failures += 1
        result.latencies.append(latency_total)
        if not served or latency_total > task.budget_ms:
            result.slo_misses += 1
    cache.close()
    ledger.close()
    return result


def simulate(fleet_path: Path, trace_path: Path, carbon_path: Path, solar_path: Path | None,
             start: datetime | None = None, seed: int = 1, policies: tuple[str, ...] = POLICIES) -> dict[str, Any]:
    fleet = load_fleet(fleet_path)
    trace = load_trace(trace_path)
    carbon = Series.load(carbon_path, "Carbon Intensity")
    solar = Series.load(solar_path, "Solar MW") if solar_path else None
    t0 = (start or datetime(2020, 6, 1, tzinfo=timezone.utc)).replace(tzinfo=timezone.utc).timestamp()
    return {"policies": {p: run_policy(p, fleet, trace, carbon, solar, t0, seed).summary() for p in policies},
            "seed": seed, "tasks": len(trace), "start": t0}


def format_table(result: dict[str, Any]) -> str:
    cols = ["tasks", "cost", "kwh", "gco2", "p50_ms", "p95_ms", "slo_miss_pct", "quality_weighted_success",
            "battery_floor_violations", "deferred", "mean_deferral_s"]
    heads = ["policy", "tasks", "$", "kWh", "gCO2", "p50 ms", "p95 ms", "SLO miss %", "quality %", "floor viol.",
             "deferred", "delay s"]
    rows = [heads] + [[name] + [str(v[c]) for c in cols] for name, v in result["policies"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)
