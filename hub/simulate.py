"""`sovereign simulate`: replay a trace of tasks through the hub's own dispatcher, under each
routing policy, over simulated devices and real carbon and solar curves, in virtual time.

One task path: every policy runs ``hub.dispatch.Dispatcher`` (rules, cache, routing, deferral,
slots and queueing, escalation on failure, confidence floors, the ledger, learning) with the
simulated home of hub/sim/devices.py as its RPC caller, its fleet and its energy, on the clock of
hub/sim/loop.py. What differs between policies is ``router.policy`` and, for ``sovereign``
alone, power management: the hub's own ``PowerManager`` (hub/power) puts devices that announce a
way to wake them to sleep and wakes them for work; ``always-on`` is the same routing with every
device kept awake.

Accounting, the same for every policy:
- energy at the wall, idle draw included (hub/sim/devices.py), plus the cloud's per the ledger;
  a device asleep draws its sleep power, and each wake its wake energy;
- an answer counts toward quality only if it came within its latency budget
  (``quality_weighted_success``); ``quality_with_late`` counts late ones too;
- unserved tasks are counted, not given a latency.
The oracle (hub/sim/oracle.py) bounds what any policy could spend.

Deterministic for a given seed: latencies and failures come from one ``random.Random(seed)``
per policy run, and the virtual loop runs callbacks in a fixed order.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import DispatchConfig
from .dispatch import Dispatcher
from .energy.model import ModeThresholds
from .energy.series import Series
from .power.manager import PowerManager
from .power.plan import PowerConfig
from .router.cache import CacheConfig, ResultCache
from .router.ledger import Ledger
from .router.request import InferOutcome
from .router.route import RouterConfig
from .router.rules import RuleBook, RulesConfig
from .router.stats import LearningConfig, StatsStore
from .sim.devices import STEP_S, SimHome
from .sim.files import FleetFile, TraceTask, check_coverage, load_fleet, load_trace
from .sim.loop import LoopClock, run_virtual
from .sim.oracle import OracleBound, SiteAt, frontier, oracle_bound

POLICIES = ("always-cloud", "seed-rules", "local-first", "always-on", "sovereign")
#: The routing policy each simulated policy runs; only `sovereign` also manages power states
#: (hub/power): `always-on` is its routing with every device kept awake, today's behaviour.
ROUTING = {"always-on": "sovereign"}
DEFAULT_START = datetime(2020, 6, 1, tzinfo=timezone.utc)


@dataclass
class PolicyResult:
    tasks: int = 0
    unserved: int = 0
    late_answers: int = 0
    quality_on_time: float = 0.0
    quality_all: float = 0.0
    latencies: list[float] = field(default_factory=list)  # answered tasks only
    deferred: int = 0
    delays: list[float] = field(default_factory=list)
    escalations: int = 0
    cached: int = 0
    cloud_answers: int = 0
    cost: float = 0.0
    gco2: float = 0.0
    joules: float = 0.0
    idle_joules: float = 0.0
    idle_gco2: float = 0.0
    idle_cost: float = 0.0
    battery_floor_violations: int = 0
    wakes: int = 0
    waited_for_wake: int = 0
    asleep_h: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def q(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))] if lat else 0.0

        n = max(self.tasks, 1)
        misses = self.unserved + self.late_answers
        return {"tasks": self.tasks, "cost": round(self.cost, 4), "kwh": round(self.joules / 3.6e6, 4),
                "idle_kwh": round(self.idle_joules / 3.6e6, 4), "gco2": round(self.gco2, 2),
                # What the tasks themselves added to the fleet's idle draw:
                "task_cost": round(self.cost - self.idle_cost, 4), "task_gco2": round(self.gco2 - self.idle_gco2, 2),
                "task_kwh": round((self.joules - self.idle_joules) / 3.6e6, 4),
                "p50_ms": round(q(0.5), 1), "p95_ms": round(q(0.95), 1),
                "slo_miss_pct": round(100 * misses / n, 2),
                "quality_weighted_success": round(100 * self.quality_on_time / n, 2),
                "quality_with_late": round(100 * self.quality_all / n, 2),
                "late_answers": self.late_answers, "unserved": self.unserved,
                "battery_floor_violations": self.battery_floor_violations,
                "deferred": self.deferred,
                "mean_deferral_s": round(statistics.fmean(self.delays), 1) if self.delays else 0.0,
                "escalations": self.escalations, "cached": self.cached,
                "cloud_share_pct": round(100 * self.cloud_answers / n, 2),
                "wakes": self.wakes, "waited_for_wake": self.waited_for_wake,
                "asleep_h": {k: round(v, 1) for k, v in self.asleep_h.items()}}


def _quality_table(fleet: FleetFile) -> dict[tuple[str, str], float]:
    """(model, task) → quality. A model some devices share answers a cached question with the
    lowest quality any of them announced (the cache does not say which one produced it)."""
    table: dict[tuple[str, str], float] = {}
    for d in fleet.devices:
        for m in d.models:
            for task in m.tasks:
                q = (m.task_quality or {}).get(task, m.quality)
                table[(m.name, task)] = min(q, table.get((m.name, task), q))
    return table


async def _replay(policy: str, fleet: FleetFile, trace: list[TraceTask], carbon: Series, solar: Series | None,
                  start: float, seed: int, thresholds: ModeThresholds) -> tuple[PolicyResult, SimHome]:
    clock = LoopClock(start)
    home = SimHome(fleet, carbon, solar, clock, random.Random(seed), thresholds)
    router = RouterConfig(policy=ROUTING.get(policy, policy), cloud_prices=fleet.cloud_prices,
                          cloud_g_per_kwh=fleet.cloud_g_per_kwh, cloud_j_per_token=fleet.cloud_j_per_token)
    ledger = Ledger(None)
    stats, cache, rules = StatsStore(LearningConfig()), ResultCache(CacheConfig(), None), RuleBook(RulesConfig(), None)
    power = None
    if policy == "sovereign":
        power = PowerManager(PowerConfig(), router, records=lambda: [s.record for s in home.devices.values()],
                             energy=home.energy, rpc=home, signals=home, clock=clock,
                             on_change=home.fleet_view.changed)
        home.on_awake, home.wakeable = power.observed, lambda device_id: not power.wake_failed(device_id)
    dispatcher = Dispatcher(DispatchConfig(), router, fleet=home.fleet_view, energy=home.energy, stats=stats,
                            cache=cache, rules=rules, ledger=ledger, rpc=home, clock=clock, known_device=home.known,
                            thresholds=thresholds, power=power)
    quality = _quality_table(fleet)
    result = PolicyResult(tasks=len(trace))
    # Every policy is accounted over the same span: until the last deadline has passed.
    end = max(t.t + (t.deadline_s or 0.0) for t in trace) + STEP_S

    def tally(task: TraceTask, out: InferOutcome) -> None:
        if out.deferred_s:
            result.deferred += 1
            result.delays.append(out.deferred_s)
        if not out.ok or out.served_by is None:
            result.unserved += 1
            return
        result.latencies.append(out.latency_ms)
        result.escalations += sum(not a.ok for a in out.attempts) > 0
        result.cached += bool(out.cached)
        result.cloud_answers += out.served_by["layer"] == "large"
        q = quality.get((out.served_by["model"], task.task), 0.0)
        result.quality_all += q
        if out.latency_ms <= task.budget_ms:
            result.quality_on_time += q
        else:
            result.late_answers += 1

    async def run(i: int, task: TraceTask) -> None:
        req = task.request(f"t{i}", start)
        home.requesters[req.id] = task.requester
        tally(task, await dispatcher.infer(req))

    loop = asyncio.get_running_loop()
    home.set_inputs(clock.time())
    home.step(0.0)
    steps = asyncio.create_task(home.run_steps())
    planner = asyncio.create_task(power.run()) if power is not None else None
    running = []
    for i, task in enumerate(trace):
        if task.t > loop.time():
            await asyncio.sleep(task.t - loop.time())
        running.append(asyncio.create_task(run(i, task)))
    await asyncio.gather(*running)
    if end > loop.time():
        await asyncio.sleep(end - loop.time())
    steps.cancel()
    if planner is not None and power is not None:
        planner.cancel()
        await power.aclose()
    await dispatcher.aclose()
    home.catch_up()
    cloud = ledger.report(0, float("inf"))["by_layer"].get("large", {})
    result.cost = home.wall.cost + cloud.get("cost", 0.0)
    result.gco2 = home.wall.gco2 + cloud.get("gco2", 0.0)
    result.joules = home.wall.joules + cloud.get("joules", 0.0)
    result.idle_joules, result.idle_gco2, result.idle_cost = home.idle.joules, home.idle.gco2, home.idle.cost
    result.battery_floor_violations = sum(s.floor_violations for s in home.devices.values())
    result.wakes = sum(s.wakes for s in home.devices.values())
    result.waited_for_wake = dispatcher.counts["waited_for_wake"]
    result.asleep_h = {i: s.asleep_s / 3600 for i, s in home.devices.items() if s.spec.wake != "none"}
    for closing in (cache, rules, ledger, stats):
        closing.close()
    return result, home


def run_policy(policy: str, fleet: FleetFile, trace: list[TraceTask], carbon: Series, solar: Series | None,
               start: float, seed: int, thresholds: ModeThresholds | None = None) -> tuple[PolicyResult, SimHome]:
    return run_virtual(_replay(policy, fleet, trace, carbon, solar, start, seed, thresholds or ModeThresholds()))


def site_at(fleet: FleetFile, carbon: Series, solar: Series | None,
             thresholds: ModeThresholds) -> Any:
    solar_max = max(solar.values) if solar else 0.0

    def at(ts: float) -> SiteAt:
        pv = solar.at(ts) / solar_max * fleet.site.solar_peak_w if solar and solar_max else 0.0
        if pv > fleet.site.load_w:
            return SiteAt(thresholds.pv_g_per_kwh, fleet.site.export_price_per_kwh)
        return SiteAt(carbon.at(ts), fleet.site.price_per_kwh)
    return at


def simulate(fleet_path: Path, trace_path: Path, carbon_path: Path, solar_path: Path | None,
             start: datetime | None = None, seed: int = 1, policies: tuple[str, ...] = POLICIES,
             wrap: bool = False) -> dict[str, Any]:
    fleet = load_fleet(fleet_path)
    trace = load_trace(trace_path, fleet)
    carbon = Series.load(carbon_path, "Carbon Intensity")
    solar = Series.load(solar_path, "Solar MW") if solar_path else None
    t0 = (start or DEFAULT_START).replace(tzinfo=timezone.utc).timestamp()
    series = [(str(carbon_path), carbon)] + ([(str(solar_path), solar)] if solar else [])
    check_coverage(trace, t0, series, wrap)
    if wrap:
        carbon = carbon.wrapped()
        solar = solar.wrapped() if solar else None
    thresholds = ModeThresholds()
    out: dict[str, Any] = {}
    idle: list[tuple[float, float, float]] = []
    for p in policies:
        result, home = run_policy(p, fleet, trace, carbon, solar, t0, seed, thresholds)
        out[p] = result.summary()
        floor = home.idle_floor
        idle.append((floor.joules, floor.gco2, floor.cost))
    router = RouterConfig(cloud_prices=fleet.cloud_prices, cloud_g_per_kwh=fleet.cloud_g_per_kwh,
                          cloud_j_per_token=fleet.cloud_j_per_token)
    bound = oracle_bound(fleet, trace, t0, site_at(fleet, carbon, solar, thresholds), router,
                         min(idle, default=(0.0, 0.0, 0.0)), thresholds)
    for summary in out.values():
        summary["gap_to_oracle"] = _gap(summary, bound)
    oracle: dict[str, Any] = bound.to_dict()
    best = max((q for _, q in frontier(bound.questions, bound.tasks, "cost")), default=0.0)
    oracle["quality_max"] = round(best, 2)
    if "always-cloud" in out:
        # What the quality target (no more than 1 point below always-cloud) costs at the least.
        target = out["always-cloud"]["quality_weighted_success"] - 1
        money, carbon = bound.least_for_quality(target, "cost"), bound.least_for_quality(target, "gco2")
        oracle["at_target_quality"] = {"quality": round(target, 2),
                                       "task_cost": round(money[0], 4) if money else None,
                                       "task_gco2": round(carbon[0], 2) if carbon else None}
    return {"policies": out, "oracle": oracle, "seed": seed, "tasks": len(trace), "start": t0}


def _gap(summary: dict[str, Any], bound: OracleBound) -> dict[str, float | None]:
    """How much more than the bound the tasks cost under a policy, in per cent of the bound (the
    idle draw, the same for all, left out: it would hide every difference)."""
    def pct(spent: float, least: float) -> float | None:
        return round(100 * (spent - least) / least, 1) if least > 0 else None
    return {"task_cost_pct": pct(summary["task_cost"], bound.task_cost),
            "task_gco2_pct": pct(summary["task_gco2"], bound.task_gco2),
            "task_kwh_pct": pct(summary["task_kwh"], bound.task_kwh)}


def format_table(result: dict[str, Any]) -> str:
    cols = ["tasks", "cost", "task_cost", "kwh", "idle_kwh", "gco2", "task_gco2", "p50_ms", "p95_ms", "slo_miss_pct",
            "quality_weighted_success", "quality_with_late", "unserved", "late_answers", "battery_floor_violations",
            "deferred", "cloud_share_pct", "wakes", "waited_for_wake"]
    heads = ["policy", "tasks", "$", "task $", "kWh", "idle kWh", "gCO2", "task g", "p50 ms", "p95 ms", "SLO miss %",
             "quality %", "incl. late", "unserved", "late", "floor viol.", "deferred", "cloud %", "wakes",
             "waited", "task $ vs oracle", "task g vs oracle"]

    def signed(v: float | None) -> str:
        return "-" if v is None else f"{v:+}%"

    rows = [heads]
    for name, v in result["policies"].items():
        gap = v["gap_to_oracle"]
        rows.append([name] + [str(v[c]) for c in cols] + [signed(gap["task_cost_pct"]), signed(gap["task_gco2_pct"])])
    o = result["oracle"]
    rows.append(["oracle (bound)", str(result["tasks"]), str(o["cost"]), str(o["task_cost"]), str(o["kwh"]), "",
                 str(o["gco2"]), str(o["task_gco2"])] + [""] * (len(heads) - 8))
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    table = "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                      for r in rows)
    notes = [f"oracle: the least any policy could spend (perfect foresight, no failures or queues, every device "
             f"that can sleep asleep whenever it is not computing); its best reachable quality is {o['quality_max']} %"]
    asleep = {name: v["asleep_h"] for name, v in result["policies"].items() if any(v["asleep_h"].values())}
    for name, hours in asleep.items():
        notes.append(f"{name}: asleep " + ", ".join(f"{d} {h} h" for d, h in hours.items())
                     + " (waited: tasks that waited for a wake)")
    at = o.get("at_target_quality")
    if at:
        notes.append(f"oracle at quality {at['quality']} % (always-cloud's less 1 point): task $ {at['task_cost']}, "
                     f"task gCO2 {at['task_gco2']}")
    return table + "\n" + "\n".join(notes)
