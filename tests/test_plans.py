"""Deferral runs by the deadline in the cleanest window; consensus fans out within the budget."""

from __future__ import annotations

from hub.energy.model import EnergySnapshot, ForecastPoint, InputValue, ModeThresholds
from hub.energy.snapshot import compute_snapshot
from hub.router.model import TaskRequest
from hub.router.plan import plan_consensus, plan_deferral
from hub.router.route import route

from .test_router import CFG, HOME

NOW = 1_800_000_000.0


def energy(carbon_now: float, forecast: list[float], pv: float = 0) -> EnergySnapshot:
    inputs = {"carbon_g_per_kwh": InputValue("carbon_g_per_kwh", carbon_now, "t", NOW, 300),
              "pv_w": InputValue("pv_w", pv, "t", NOW, 300), "load_w": InputValue("load_w", 500, "t", NOW, 300)}
    fc = {"carbon_g_per_kwh": [ForecastPoint(NOW + i * 1800, NOW + (i + 1) * 1800, v) for i, v in enumerate(forecast)]}
    return compute_snapshot(NOW, inputs, fc, [], ModeThresholds())


def test_deferred_to_the_clean_window_and_done_by_the_deadline() -> None:
    req = TaskRequest(task="summarize", text="the week's notes", deadline=NOW + 6 * 3600, budget_ms=60_000)
    d = route(req, HOME, CFG)
    plan = plan_deferral(req, d, energy(300, [300, 280, 260, 90, 80, 85, 200, 250, 300, 310, 300, 290]))
    # A job of a few seconds fits in the cleanest half hour (80 g/kWh, starting in 2 h).
    assert plan.run_at == NOW + 4 * 1800 and plan.expected_g_per_kwh == 80
    assert plan.run_at + d.chosen.p95_ms / 1000 <= req.deadline
    assert plan.reason.startswith("deferred 7200 s")


def test_runs_now_when_no_better_window_or_no_deadline_or_sun() -> None:
    req = TaskRequest(task="summarize", text="notes", deadline=NOW + 3 * 3600)
    d = route(req, HOME, CFG)
    assert plan_deferral(req, d, energy(80, [80, 200, 300, 300, 300, 300])).run_at == NOW
    assert plan_deferral(req.model_copy(update={"deadline": None}), d, energy(300, [300])).reason == "no deadline: runs now"
    sunny = plan_deferral(req, d, energy(300, [300, 50, 50, 50, 50, 50], pv=4000))
    assert sunny.run_at == NOW and "solar surplus now" in sunny.reason
    late = plan_deferral(req.model_copy(update={"deadline": NOW + 1}), d, energy(300, [300, 50]))
    assert late.run_at == NOW and "deadline" in late.reason


def test_consensus_plan() -> None:
    vote = plan_consensus(TaskRequest(task="intent", text="lights off", mode="consensus"),
                          route(TaskRequest(task="intent", text="lights off"), HOME, CFG))
    assert vote.aggregate == "majority" and len(vote.members) == 3
    assert len({m.device_id for m in vote.members}) == 3 and all(m.within_budget for m in vote.members)
    text = plan_consensus(TaskRequest(task="summarize", text="notes"),
                          route(TaskRequest(task="summarize", text="notes", budget_ms=10_000), HOME, CFG))
    assert text.aggregate == "judge" and 1 <= len(text.members) <= 3


def _with_pv(snap: EnergySnapshot, pv: list[float]) -> EnergySnapshot:
    from hub.energy.model import ForecastOut
    return snap.model_copy(update={"pv_forecast": [ForecastOut(start=NOW + i * 1800, end=NOW + (i + 1) * 1800, value=v)
                                                   for i, v in enumerate(pv)]})


def test_deferral_counts_the_sites_own_pv_as_clean() -> None:
    """A grid at 200 g all day, but the panels will cover the job from 10:00: that is the window."""
    req = TaskRequest(task="summarize", text="the week's notes", deadline=NOW + 6 * 3600, budget_ms=60_000)
    d = route(req, HOME, CFG)
    flat = energy(200, [200] * 12)
    assert plan_deferral(req, d, flat).run_at == NOW, "no PV forecast: nothing to wait for"
    plan = plan_deferral(req, d, _with_pv(flat, [0, 0, 0, 0, 0, 3000, 3000, 3000, 0, 0, 0, 0]))
    assert plan.run_at == NOW + 5 * 1800 and plan.expected_g_per_kwh == 0 and "own PV" in plan.reason


def test_seed_rules_batch_deferrable_work_at_the_next_solar_peak() -> None:
    req = TaskRequest(task="summarize", text="notes", deadline=NOW + 6 * 3600, budget_ms=60_000)
    d = route(req, HOME, CFG.model_copy(update={"policy": "seed-rules"}))
    peak = _with_pv(energy(50, [50] * 12), [0, 0, 0, 1000, 2500, 2500, 0, 0, 0, 0, 0, 0])
    plan = plan_deferral(req, d, peak)
    # The cleanest grid is now (50 g), but the rule table waits for a 1.5 kW surplus (2,500 - 500 W load).
    assert plan.run_at == NOW + 4 * 1800 and "solar peak" in plan.reason
    none = plan_deferral(req, d, _with_pv(energy(50, [50] * 12), [0] * 12))
    assert none.run_at == NOW and "no solar peak" in none.reason
