"""``route(request, fleet, config) -> RouteDecision``: pure, no I/O, no clock of its own.

Every (device, model) that serves the task is either excluded with a reason or becomes a
candidate with predicted latency (p50/p95 including queueing), joules, gCO2, money and expected
quality, and a score (lower is better). The ranked candidates are the fallback chain.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from ..capability import ModelSpec, Tier
from .model import Candidate, DeviceView, Exclusion, FleetSnapshot, RouteDecision, TaskRequest

#: When a model has not been measured yet: typical p50/p95 (ms) for its tier.
TIER_LATENCY_MS = {Tier.tiny: (10, 30), Tier.small: (600, 1500), Tier.medium: (1500, 4000), Tier.large: (2000, 6000)}
#: Expected answer length per task (tokens), for cloud prices and energy per token.
OUTPUT_TOKENS = {"intent": 5, "classify": 5, "embed": 0, "eeg": 1, "echo": 0, "transcribe": 200, "format": 100,
                 "summarize": 150, "qa": 150, "vision": 150, "draft": 400, "code": 400, "reason": 600}
POLICIES = ("sovereign", "local-first", "always-cloud", "seed-rules")


class CloudPrice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str = Field(default="sovereign", pattern="^(" + "|".join(POLICIES) + ")$")
    #: Score weights; each term is normalised by its reference (score = Σ weight × value / ref).
    weight_quality: float = Field(default=2.0, ge=0)
    #: Quality beyond this (or the request's floor, if higher) earns nothing: a tiny model that
    #: is good enough beats a cloud model that is better than needed.
    quality_good_enough: float = Field(default=0.75, ge=0, le=1)
    weight_latency: float = Field(default=0.5, ge=0)
    weight_carbon: float = Field(default=1.0, ge=0)
    weight_money: float = Field(default=1.0, ge=0)
    carbon_ref_g: float = Field(default=0.5, gt=0)
    money_ref: float = Field(default=0.001, gt=0)
    #: Cloud prices per million tokens, by model name ("*" for any other cloud model).
    cloud_prices: dict[str, CloudPrice] = Field(default_factory=dict)
    #: Energy of a cloud call per token and the carbon of the data centre's power: estimates to
    #: configure (no provider publishes them per call).
    cloud_j_per_token: float = Field(default=1.0, ge=0)
    cloud_g_per_kwh: float = Field(default=300, ge=0)
    #: How many ranked candidates a decision carries (the chosen one and its fallbacks).
    chain_length: int = Field(default=8, ge=1, le=100)


# -- complexity ------------------------------------------------------------------------------------

_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\breturn\b|[{};]\s*$|#include|=>", re.M)
_MATH = re.compile(r"\d\s*[-+*/^=]\s*\d|\b(integral|derivative|prove|equation|theorem|probability)\b", re.I)
_STEPS = re.compile(r"\b(step by step|first\b.*\bthen|compare|explain why|analy[sz]e|plan|trade-?offs?)\b", re.I | re.S)
_SIMPLE_TASKS = {"intent", "classify", "embed", "eeg", "echo", "transcribe", "format"}


@dataclass(frozen=True, slots=True)
class Complexity:
    min_tier: Tier
    cues: tuple[str, ...] = field(default_factory=tuple)


def estimate_complexity(req: TaskRequest) -> Complexity:
    """A minimum tier for text tasks from length, code, maths and multi-step cues."""
    if req.task in _SIMPLE_TASKS or req.text is None:
        return Complexity(Tier.tiny)
    text = req.text
    cues = []
    if len(text) > 4000:
        cues.append(f"long input ({len(text)} characters)")
    if _CODE.search(text):
        cues.append("code")
    if _MATH.search(text):
        cues.append("maths")
    if _STEPS.search(text):
        cues.append("multi-step reasoning")
    tier = Tier.small
    if req.task in ("code", "reason") or len(cues) >= 2 or "code" in cues:
        tier = Tier.medium
    if req.task == "reason" and len(cues) >= 2:
        tier = Tier.large
    return Complexity(tier, tuple(cues))


# -- prediction ------------------------------------------------------------------------------------

def _tokens(req: TaskRequest) -> tuple[int, int]:
    return req.size() // 4, OUTPUT_TOKENS.get(req.task, 150)


def _is_cloud(model: ModelSpec, device: DeviceView) -> bool:
    return model.runtime == "cloud" or device.tier is Tier.large


@dataclass(frozen=True, slots=True)
class _Prediction:
    p50: float
    p95: float
    joules: float
    gco2: float
    cost: float
    measured: bool
    queue_ms: float
    priced: bool


def _predict(req: TaskRequest, d: DeviceView, m: ModelSpec, cfg: RouterConfig) -> _Prediction:
    measured = m.latency_ms is not None
    p50, p95 = (m.latency_ms.p50, m.latency_ms.p95) if m.latency_ms is not None else TIER_LATENCY_MS[d.tier]
    queue = 0.0
    if d.active_tasks >= m.max_concurrency:
        queue = (d.active_tasks - m.max_concurrency + 1) * p50
        p50, p95 = p50 + queue, p95 + queue
    priced = True
    if _is_cloud(m, d):
        tin, tout = _tokens(req)
        joules = (tin + tout) * cfg.cloud_j_per_token
        gco2 = joules / 3.6e6 * cfg.cloud_g_per_kwh
        price = cfg.cloud_prices.get(m.name) or cfg.cloud_prices.get("*")
        priced = price is not None
        cost = (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6 if price else 0.0
    else:
        joules = m.energy_j_per_call if m.energy_j_per_call is not None else (d.active_w or 0.0) * p50 / 1000
        gco2 = joules / 3.6e6 * (d.marginal_g_per_kwh or 0.0)
        cost = joules / 3.6e6 * (d.marginal_price_per_kwh or 0.0)
    return _Prediction(p50, p95, joules, gco2, cost, measured, queue, priced)


def _candidate(req: TaskRequest, d: DeviceView, m: ModelSpec, tier: Tier, quality: float, pr: _Prediction,
               score: float, escalated: bool = False) -> Candidate:
    """The candidate with its reasons in words (only for the chain that is returned)."""
    reasons = ["escalation: nothing local meets the budget"] if escalated else []
    reasons += [f"{tier.value} {m.runtime} model, p95 {pr.p95:.0f} ms of {req.budget_ms:.0f} ms budget",
                f"{pr.joules:.3g} J, {pr.gco2:.3g} gCO2, {pr.cost:.4g} money, quality {quality:.2f}"]
    if not pr.measured:
        reasons.append("latency not measured yet: tier default")
    if pr.queue_ms:
        reasons.append(f"{d.active_tasks} tasks running: +{pr.queue_ms:.0f} ms queueing")
    if not pr.priced:
        reasons.append("no price configured for this cloud model")
    if d.energy_mode == "prefer_small" and tier.rank > Tier.small.rank:
        reasons.append("device prefers small models (battery below 50 %)")
    return Candidate(d.id, m.name, m.runtime, tier, pr.p50, pr.p95, pr.joules, pr.gco2, pr.cost, quality, score,
                     pr.p95 <= req.budget_ms, tuple(reasons))


# -- the decision --------------------------------------------------------------------------------

def route(req: TaskRequest, fleet: FleetSnapshot, cfg: RouterConfig) -> RouteDecision:
    policy = cfg.policy
    complexity = estimate_complexity(req)
    min_tier = complexity.min_tier
    excluded: list[Exclusion] = []
    # (over budget, score, p95, index) → what is needed to build the candidate later; reasons in
    # words are written only for the chain that is returned (a 1,000-device fleet has thousands).
    scored: list[tuple[bool, float, float, int]] = []
    parts: list[tuple[DeviceView, ModelSpec, Tier, float, _Prediction, bool]] = []
    for d in fleet.devices:
        models = [m for m in d.models if req.task in m.tasks]
        if not models:
            continue
        on_battery = d.power_source == "battery" and not d.charging
        if (on_battery and d.battery_pct is not None and d.battery_pct < d.battery_floor_pct
                and req.requester != d.id):
            excluded.append(Exclusion(d.id, None, f"battery {d.battery_pct:.0f} % below its floor "
                                                  f"{d.battery_floor_pct:.0f} %: serves only its own tasks"))
            continue
        for m in models:
            cloud = _is_cloud(m, d)
            tier = Tier.large if cloud else d.tier
            why = None
            quality = m.quality if m.quality is not None else 0.5
            if req.local_only and cloud:
                why = "local_only: the cloud layer is excluded"
            elif quality < req.quality_floor:
                why = f"quality {quality:.2f} below the floor {req.quality_floor:.2f}"
            elif tier.rank < min_tier.rank:
                why = f"tier {tier.value} below the task's minimum {min_tier.value}" + (
                    f" ({', '.join(complexity.cues)})" if complexity.cues else "")
            elif d.energy_mode == "tiny_only" and tier is not Tier.tiny:
                why = "device in tiny_only mode (battery low)"
            elif policy == "always-cloud" and not cloud:
                why = "policy always-cloud"
            elif policy in ("local-first", "seed-rules") and cloud and d.energy_mode != "clean_grid":
                why = f"policy {policy}: cloud only when the grid is clean or nothing local fits"
            if why:
                excluded.append(Exclusion(d.id, m.name, why))
                continue
            pr = _predict(req, d, m, cfg)
            within = pr.p95 <= req.budget_ms
            score = _score(policy, cfg, tier, pr.p95, req.budget_ms, pr.gco2, pr.cost, _shortfall(req, cfg, quality),
                           within, d)
            scored.append((not within, score, pr.p95, len(parts)))
            parts.append((d, m, tier, quality, pr, False))
    if policy in ("local-first", "seed-rules") and not any(not s[0] for s in scored):
        # Nothing local fits: escalation to the cloud is allowed after all.
        for ex in [e for e in excluded if e.reason.startswith(f"policy {policy}: cloud")]:
            d = next(x for x in fleet.devices if x.id == ex.device_id)
            m = next(x for x in d.models if x.name == ex.model)
            quality = m.quality if m.quality is not None else 0.5
            pr = _predict(req, d, m, cfg)
            score = _score(policy, cfg, Tier.large, pr.p95, req.budget_ms, pr.gco2, pr.cost,
                           _shortfall(req, cfg, quality), pr.p95 <= req.budget_ms, d)
            scored.append((pr.p95 > req.budget_ms, score, pr.p95, len(parts)))
            parts.append((d, m, Tier.large, quality, pr, True))
            excluded.remove(ex)
    head = heapq.nsmallest(cfg.chain_length, scored)
    chain = tuple(_candidate(req, *parts[i][:5], score, parts[i][5]) for _over, score, _p95, i in head)
    reasons = [f"policy {policy}; minimum tier {min_tier.value}"
               + (f" ({', '.join(complexity.cues)})" if complexity.cues else "")]
    if chain:
        c = chain[0]
        reasons.append(f"chose {c.model} on {c.device_id}: score {c.score:.3f}"
                       + ("" if c.within_budget else " (no candidate meets the latency budget)"))
        if len(scored) > len(chain):
            reasons.append(f"{len(scored) - len(chain)} more candidates ranked below the chain of {len(chain)}")
    else:
        reasons.append("no device can run this task" if not excluded else "every candidate was excluded")
    return RouteDecision(req.id, req.task, policy, min_tier, chain, tuple(excluded), tuple(reasons))


def _shortfall(req: TaskRequest, cfg: RouterConfig, quality: float) -> float:
    return max(0.0, max(req.quality_floor, cfg.quality_good_enough) - quality)


def _score(policy: str, cfg: RouterConfig, tier: Tier, p95: float, budget: float, gco2: float, cost: float,
           shortfall: float, within: bool, d: DeviceView) -> float:
    if policy in ("local-first", "seed-rules"):
        # The smallest capable layer first, then the fastest.
        return tier.rank + p95 / budget / 10
    if policy == "always-cloud":
        return p95 / budget
    penalty = 0.0 if within else 10.0
    if d.energy_mode == "prefer_small" and tier.rank > Tier.small.rank:
        penalty += 1.0
    return (cfg.weight_quality * shortfall + cfg.weight_latency * p95 / budget
            + cfg.weight_carbon * gco2 / cfg.carbon_ref_g + cfg.weight_money * cost / cfg.money_ref + penalty)
