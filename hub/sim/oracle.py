"""The offline bound: the least money, carbon and energy any policy could spend on a trace, and
the least it could spend for a given quality.

Knowing the whole trace and the energy series in advance, the oracle answers every distinct
question once (a repeat within the cache's lifetime is free, as it is for the hub) with the
(device, model, start time) that spends the least, subject to:
- it meets the task's quality floor, as every policy must;
- its quality counts only if it is on time (the model's p50 fits the budget); a late first
  answer still makes its repeats on time, as the cache does for the hub;
- deferrable work starts between its arrival and its deadline less its duration.
It ignores failures, queueing and battery floors, so its figures are lower bounds (no policy can
beat them), not a schedule: a policy's distance to them is an upper bound on what better routing
could still save. Idle draw is the same for every policy and is added as the runs measured it.

``frontier`` trades quality for money or carbon: for a price λ on quality, each question takes
the option that minimises spend − λ × quality; sweeping λ traces the convex hull of what any
policy could reach, and ``least_for_quality`` reads the cheapest point at a quality target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..energy.model import ModeThresholds
from ..router.cache import CacheConfig, normalise
from ..router.route import OUTPUT_TOKENS, RouterConfig
from .files import FleetFile, SimModel, TraceTask

#: Start times a deferrable task is tried at (seconds apart) within its window.
SEARCH_STEP_S = 900.0


@dataclass(frozen=True)
class SiteAt:
    """The site's marginal carbon (g/kWh) and price at a time: PV surplus first, then the grid."""

    g_per_kwh: float
    price_per_kwh: float


@dataclass(frozen=True)
class Option:
    cost: float
    gco2: float
    joules: float
    quality: float  # of one answer
    on_time: bool  # its p50 fits the budget of the question's first asking
    model: str  # "device/model"

    def value(self, times: int) -> float:
        """Quality earned over a question asked ``times``: repeats come from the cache."""
        return self.quality * (times if self.on_time else times - 1)


@dataclass
class Question:
    """A distinct question: its first asking, and how many times it was asked while cached."""

    task: str
    options: list[Option]
    times: int = 1


@dataclass
class OracleBound:
    cost: float
    gco2: float
    kwh: float
    task_cost: float  # the tasks' share, over the idle draw
    task_gco2: float
    task_kwh: float
    unservable: int  # tasks no model can answer at their quality floor
    questions: list[Question]
    tasks: int

    def to_dict(self) -> dict[str, float | int]:
        return {"cost": round(self.cost, 4), "gco2": round(self.gco2, 2), "kwh": round(self.kwh, 4),
                "task_cost": round(self.task_cost, 4), "task_gco2": round(self.task_gco2, 2),
                "task_kwh": round(self.task_kwh, 4), "unservable": self.unservable}

    def least_for_quality(self, quality_pct: float, spend: str) -> tuple[float, float] | None:
        """The least task ``spend`` ("cost" or "gco2") on the hull at or above ``quality_pct``
        (quality-weighted success, %), with the quality reached; None when no choice gets there."""
        points = frontier(self.questions, self.tasks, spend)
        reached = [(s, q) for s, q in points if q >= quality_pct - 1e-9]
        return min(reached) if reached else None


def _quality(m: SimModel, task: str) -> float:
    return (m.task_quality or {}).get(task, m.quality)


def _options(fleet: FleetFile, task: TraceTask, start: float, site_at: Callable[[float], SiteAt],
             router: RouterConfig, t: ModeThresholds) -> list[Option]:
    out = []
    t0 = start + task.t
    last = t0 + (task.deadline_s or 0.0)
    tin = (len(task.text.encode()) if task.text else task.input_size or 0) // 4
    tout = OUTPUT_TOKENS.get(task.task, 150)
    for d in fleet.devices:
        for m in d.models:
            q = _quality(m, task.task)
            if task.task not in m.tasks or q < task.quality_floor or (task.local_only and m.runtime == "cloud"):
                continue
            on_time = m.p50_ms <= task.budget_ms
            if m.runtime == "cloud":
                price, _ = router.cloud_price(m.name)
                j = (tin + tout) * router.cloud_j_per_token
                cost = (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6 if price else 0.0
                out.append(Option(cost, j / 3.6e6 * router.cloud_g_per_kwh, j, q, on_time, f"{d.id}/{m.name}"))
                continue
            j = m.j_per_token * tout if m.j_per_token else m.joules
            if d.battery_wh:
                j /= t.battery_efficiency  # it is put back into the battery, with losses
            end = max(t0, last - m.p95_ms / 1000)
            sites = [site_at(t0 + k * SEARCH_STEP_S) for k in range(int((end - t0) // SEARCH_STEP_S) + 1)]
            out.append(Option(j / 3.6e6 * min(s.price_per_kwh for s in sites),
                              j / 3.6e6 * min(s.g_per_kwh for s in sites), j, q, on_time, f"{d.id}/{m.name}"))
    return out


def questions(fleet: FleetFile, trace: list[TraceTask], start: float, site_at: Callable[[float], SiteAt],
              router: RouterConfig, thresholds: ModeThresholds | None = None,
              cache: CacheConfig | None = None) -> tuple[list[Question], int]:
    """The trace's distinct questions with their options, and how many tasks have none."""
    t = thresholds or ModeThresholds()
    c = cache or CacheConfig()
    seen: dict[tuple[str, str], tuple[float, Question]] = {}
    out: list[Question] = []
    unservable = 0
    for i, task in enumerate(trace):
        ttl = c.ttl_s.get(task.task, 0) if c.enabled and task.task not in c.non_deterministic else 0
        key = (task.task, normalise(task.request(f"t{i}", start)))
        first = seen.get(key) if ttl > 0 else None
        if first is not None and task.t - first[0] < ttl:
            first[1].times += 1
            continue
        options = _options(fleet, task, start, site_at, router, t)
        if not options:
            unservable += 1
            continue
        q = Question(task.task, options)
        out.append(q)
        if ttl > 0:
            seen[key] = (task.t, q)
    return out, unservable


def oracle_bound(fleet: FleetFile, trace: list[TraceTask], start: float, site_at: Callable[[float], SiteAt],
                 router: RouterConfig, idle: tuple[float, float, float],
                 thresholds: ModeThresholds | None = None) -> OracleBound:
    """``idle`` is (joules, gCO2, cost) of the fleet's idle draw over the run."""
    qs, unservable = questions(fleet, trace, start, site_at, router, thresholds)
    cost = sum(min(o.cost for o in q.options) for q in qs)
    grams = sum(min(o.gco2 for o in q.options) for q in qs)
    joules = sum(min(o.joules for o in q.options) for q in qs)
    idle_j, idle_g, idle_cost = idle
    return OracleBound(cost + idle_cost, grams + idle_g, (joules + idle_j) / 3.6e6, cost, grams, joules / 3.6e6,
                       unservable, qs, len(trace))


def frontier(qs: list[Question], tasks: int, spend: str) -> list[tuple[float, float]]:
    """(task spend, quality-weighted success %) at each price of quality on a geometric sweep:
    points on the convex hull of everything the fleet could do for the trace."""
    points = []
    for k in range(-2, 121):
        lam = 0.0 if k < 0 else 1e-9 * 1.25 ** k  # money or grams per unit of quality
        s = q = 0.0
        for question in qs:
            best = min(question.options, key=lambda o: (getattr(o, spend) - lam * o.value(question.times),
                                                        -o.value(question.times)))
            s += getattr(best, spend)
            q += best.value(question.times)
        points.append((s, 100 * q / max(tasks, 1)))
    return points
