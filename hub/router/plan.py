"""Plans on top of a decision: when to run deferrable work, and how to fan out for consensus.
Both pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..energy.forecast import NoWindow, best_window, mean_over
from ..energy.model import EnergyMode, EnergySnapshot, ForecastPoint
from .model import Candidate, RouteDecision, TaskRequest

LABEL_TASKS = {"intent", "classify", "eeg"}


@dataclass(frozen=True, slots=True)
class DeferralPlan:
    run_at: float
    reason: str
    expected_g_per_kwh: float | None = None


def plan_deferral(req: TaskRequest, decision: RouteDecision, energy: EnergySnapshot) -> DeferralPlan:
    """Run now, or at the cleanest window that still finishes by the deadline.

    Guarantee: ``run_at + duration <= deadline`` whenever the deadline allows the job at all
    (otherwise: now). The job's duration is the chosen candidate's predicted p95."""
    now = energy.now
    if req.deadline is None:
        return DeferralPlan(now, "no deadline: runs now")
    duration = (decision.chosen.p95_ms / 1000) if decision.chosen else 1.0
    if energy.mode is EnergyMode.solar_peak:
        return DeferralPlan(now, f"solar surplus now ({energy.solar_surplus_w:.0f} W): runs now")
    forecast = [ForecastPoint(f.start, f.end, f.value) for f in energy.carbon_forecast]
    try:
        window = best_window(forecast, max(duration, 1.0), now, req.deadline)
    except NoWindow as exc:
        return DeferralPlan(now, f"runs now: {exc}")
    now_mean = mean_over(forecast, now, now + max(duration, 1.0))
    if window.start <= now or (now_mean is not None and window.mean >= now_mean):
        return DeferralPlan(now, "now is already the cleanest window before the deadline", now_mean)
    return DeferralPlan(window.start, f"deferred {window.start - now:.0f} s to a window at {window.mean:.0f} g/kWh"
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
