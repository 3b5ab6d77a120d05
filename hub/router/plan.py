"""Plans on top of a decision: when to run deferrable work, and how to fan out for consensus.
Both pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..energy.forecast import NoWindow, best_window, mean_over
from ..energy.model import EnergyMode, EnergySnapshot, ForecastPoint, ModeThresholds
from .model import Candidate, RouteDecision, TaskRequest

LABEL_TASKS = {"intent", "classify", "eeg"}


@dataclass(frozen=True, slots=True)
class DeferralPlan:
    run_at: float
    reason: str
    expected_g_per_kwh: float | None = None


def site_carbon_forecast(energy: EnergySnapshot, draw_w: float, pv_g_per_kwh: float = 0.0) -> list[ForecastPoint]:
    """The carbon of the site's electricity ahead, for a job drawing ``draw_w``: the grid's
    forecast, except that where the PV forecast leaves a surplus over the house's load it covers
    the job (in proportion, where the surplus is smaller than the draw)."""
    carbon = [ForecastPoint(f.start, f.end, f.value) for f in energy.carbon_forecast]
    if not energy.pv_forecast or not carbon:
        return carbon
    load = energy.load_w or 0.0
    pv = [ForecastPoint(f.start, f.end, f.value) for f in energy.pv_forecast]
    cuts = sorted({p.start for p in carbon + pv} | {p.end for p in carbon + pv})
    out: list[ForecastPoint] = []
    ci = pi = 0
    for a, b in zip(cuts, cuts[1:]):
        while ci < len(carbon) and carbon[ci].end <= a:
            ci += 1
        while pi < len(pv) and pv[pi].end <= a:
            pi += 1
        if ci == len(carbon) or carbon[ci].start > a:
            continue  # no grid forecast here: unknown, not clean
        surplus = max(0.0, pv[pi].value - load) if pi < len(pv) and pv[pi].start <= a else 0.0
        cover = min(1.0, surplus / draw_w) if draw_w > 0 else (1.0 if surplus > 0 else 0.0)
        out.append(ForecastPoint(a, b, cover * pv_g_per_kwh + (1 - cover) * carbon[ci].value))
    return out


def _next_solar_peak(energy: EnergySnapshot, duration: float, deadline: float,
                     solar_peak_w: float) -> float | None:
    """When the PV forecast first leaves ``solar_peak_w`` to spare for long enough, before the deadline."""
    load = energy.load_w or 0.0
    for f in energy.pv_forecast:
        start = max(f.start, energy.now)
        if start + duration > deadline:
            return None
        if f.value - load >= solar_peak_w:
            return start
    return None


def plan_deferral(req: TaskRequest, decision: RouteDecision, energy: EnergySnapshot,
                  thresholds: ModeThresholds | None = None) -> DeferralPlan:
    """Run now, or at the cleanest window that still finishes by the deadline.

    Guarantee: ``run_at + duration <= deadline`` whenever the deadline allows the job at all
    (otherwise: now). The job's duration is the chosen candidate's predicted p95. The policy
    ``seed-rules`` follows the design's rule table instead: batch work waits for the next solar
    peak the PV forecast shows before its deadline."""
    t = thresholds or ModeThresholds()
    now = energy.now
    if req.deadline is None:
        return DeferralPlan(now, "no deadline: runs now")
    chosen = decision.chosen
    duration = max((chosen.p95_ms / 1000) if chosen else 1.0, 1.0)
    if energy.mode is EnergyMode.solar_peak:
        return DeferralPlan(now, f"solar surplus now ({energy.solar_surplus_w:.0f} W): runs now")
    if decision.policy == "seed-rules":
        start = _next_solar_peak(energy, duration, req.deadline, t.solar_peak_surplus_w)
        if start is None or start <= now:
            return DeferralPlan(now, "seed rules: no solar peak forecast before the deadline: runs now")
        return DeferralPlan(start, f"seed rules: batched {start - now:.0f} s to the next solar peak")
    draw_w = chosen.joules / max(chosen.p50_ms / 1000, 1e-3) if chosen and chosen.joules else 0.0
    forecast = site_carbon_forecast(energy, draw_w, t.pv_g_per_kwh)
    try:
        window = best_window(forecast, duration, now, req.deadline)
    except NoWindow as exc:
        return DeferralPlan(now, f"runs now: {exc}")
    now_mean = mean_over(forecast, now, now + duration)
    if window.start <= now or (now_mean is not None and window.mean >= now_mean):
        return DeferralPlan(now, "now is already the cleanest window before the deadline", now_mean)
    return DeferralPlan(window.start, f"deferred {window.start - now:.0f} s to a window at {window.mean:.0f} g/kWh"
                        + (" (own PV counted)" if energy.pv_forecast else "")
                        + (f" (now {now_mean:.0f})" if now_mean is not None else "")
                        + f"; finishes {req.deadline - window.end:.0f} s before the deadline", window.mean)


@dataclass(frozen=True, slots=True)
class ConsensusPlan:
    members: tuple[Candidate, ...]
    aggregate: Literal["majority", "highest_confidence", "judge"]
    reason: str


def plan_consensus(req: TaskRequest, decision: RouteDecision, k: int = 3) -> ConsensusPlan:
    """Up to ``k`` candidates on distinct devices, all within the budget (run in parallel, so the
    slowest member bounds the latency); labels are decided by majority, text by the highest
    confidence, or by a judge when the chain holds a large-tier model to ask."""
    members: list[Candidate] = []
    seen: set[str] = set()
    for c in decision.chain:
        if c.within_budget and c.device_id not in seen:
            members.append(c)
            seen.add(c.device_id)
        if len(members) == k:
            break
    if req.task in LABEL_TASKS:
        return ConsensusPlan(tuple(members), "majority", f"{len(members)} votes on a label: the majority wins")
    judge = any(c.tier.value == "large" for c in decision.chain)
    return ConsensusPlan(tuple(members), "judge" if judge else "highest_confidence",
                         f"{len(members)} answers: " + ("a large model judges" if judge else
                                                        "the most confident answer wins"))
