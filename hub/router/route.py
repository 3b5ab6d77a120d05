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

from ..capability import Tier
from .model import Candidate, Entry, Exclusion, FleetSnapshot, Live, RouteDecision, TaskRequest
from .cache import CacheConfig
from .rules import RulesConfig
from .stats import LearningConfig, StatsSnapshot

_NO_STATS = StatsSnapshot()


#: Expected answer length per task (tokens), for cloud prices and energy per token.
OUTPUT_TOKENS = {"intent": 5, "classify": 5, "embed": 0, "eeg": 1, "echo": 0, "transcribe": 200, "format": 100,
                 "summarize": 150, "qa": 150, "vision": 150, "draft": 400, "code": 400, "reason": 600}
POLICIES = ("sovereign", "local-first", "always-cloud", "seed-rules")
#: The design's rule router (policy seed-rules): the largest tier each energy mode allows.
SEED_RULE_CAP = {"tiny_only": Tier.tiny, "prefer_small": Tier.small, "prefer_local": Tier.small,
                 "solar_peak": Tier.medium, "clean_grid": Tier.large}


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
    carbon_ref_g: float = Field(default=0.02, gt=0)
    money_ref: float = Field(default=0.001, gt=0)
    #: Cloud prices per million tokens, by model name ("*" for any other cloud model).
    cloud_prices: dict[str, CloudPrice] = Field(default_factory=dict)
    #: Energy of a cloud call per token and the carbon of the data centre's power: estimates to
    #: configure (no provider publishes them per call).
    cloud_j_per_token: float = Field(default=1.0, ge=0)
    cloud_g_per_kwh: float = Field(default=300, ge=0)
    #: How many ranked candidates a decision carries (the chosen one and its fallbacks).
    chain_length: int = Field(default=8, ge=1, le=100)
    #: Score added per unit of failure rate learned from outcomes.
    weight_failure: float = Field(default=3.0, ge=0)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    #: The cloud model the ledger's "had everything gone to the cloud" is priced with.
    counterfactual_model: str = "*"


# -- complexity ------------------------------------------------------------------------------------

_SIMPLE_TASKS = {"intent", "classify", "embed", "eeg", "echo", "transcribe", "format"}
# Each cue is a list of (substring, pattern): the pattern is tried only when its substring is in
# the text. `in` scans in C; one big alternation tries every branch at every position, which took
# ~100 µs on a 660-character note, most of a routing decision. Keys of case-insensitive patterns
# are lower-case and are looked for in the lower-cased text.
_CODE = [(k, re.compile(p, re.M)) for k, p in (
    ("```", r"```"), ("def ", r"\bdef "), ("class ", r"\bclass "), ("function", r"\bfunction\b"),
    ("return", r"\breturn\b"), ("{", r"\{\s*$"), ("}", r"\}\s*$"), (";", r";\s*$"), ("#include", r"#include"),
    ("=>", r"=>"))]
_MATH = [(k, re.compile(p, re.I)) for k, p in (
    ("integral", r"\bintegral\b"), ("derivative", r"\bderivative\b"), ("prove", r"\bprove\b"),
    ("equation", r"\bequation\b"), ("theorem", r"\btheorem\b"), ("probability", r"\bprobability\b"))]
_ARITHMETIC = re.compile(r"\d\s*[-+*/^=]\s*\d")
_DIGIT = re.compile(r"\d")
_STEPS = [(k, re.compile(p, re.I | re.S)) for k, p in (
    ("step by step", r"\bstep by step\b"), ("first", r"\bfirst\b.*\bthen\b"), ("compare", r"\bcompare\b"),
    ("explain why", r"\bexplain why\b"), ("analy", r"\banaly[sz]e\b"), ("plan", r"\bplan\b"),
    ("trade", r"\btrade-?offs?\b"))]


def _cue(cue: list[tuple[str, re.Pattern[str]]], text: str, haystack: str) -> bool:
    return any(key in haystack and pattern.search(text) for key, pattern in cue)


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
    lowered = text.lower()
    if _cue(_CODE, text, text):
        cues.append("code")
    if _cue(_MATH, text, lowered) or (_DIGIT.search(text) and _ARITHMETIC.search(text)):
        cues.append("maths")
    if _cue(_STEPS, text, lowered):
        cues.append("multi-step reasoning")
    tier = Tier.small
    if req.task in ("code", "reason") or len(cues) >= 2 or "code" in cues:
        tier = Tier.medium
    if req.task == "reason" and len(cues) >= 2:
        tier = Tier.large
    return Complexity(tier, tuple(cues))


# -- prediction ------------------------------------------------------------------------------------

def rule_decision(req: TaskRequest, rule_id: str, answer: object, policy: str) -> RouteDecision:
    """An approved compiled pattern answers at the code layer, before any model is asked."""
    c = Candidate("hub", f"rule:{rule_id}", "code", Tier.tiny, 0.05, 0.1, 0.0, 0.0, 0.0, 1.0, 0.0, True,
                  (f"approved compiled pattern {rule_id}: answered {answer!r} before, every time",))
    return RouteDecision(req.id, req.task, policy, Tier.tiny, (c,), (), (f"rule {rule_id} matches: no model needed",))


def _tokens(req: TaskRequest) -> tuple[int, int]:
    return req.size() // 4, OUTPUT_TOKENS.get(req.task, 150)


def cloud_counterfactual(req: TaskRequest, cfg: RouterConfig) -> tuple[float, float]:
    """Money and gCO2 of the same request sent to the cloud (the ledger's comparison)."""
    tin, tout = _tokens(req)
    price = cfg.cloud_prices.get(cfg.counterfactual_model) or cfg.cloud_prices.get("*")
    cost = (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6 if price else 0.0
    return cost, (tin + tout) * cfg.cloud_j_per_token / 3.6e6 * cfg.cloud_g_per_kwh


def _cloud_cost(req: TaskRequest, e: Entry, cfg: RouterConfig) -> tuple[float, float, float, bool]:
    """Joules, gCO2 and money of a cloud call: they depend on the request's tokens."""
    tin, tout = _tokens(req)
    joules = (tin + tout) * cfg.cloud_j_per_token
    price = cfg.cloud_prices.get(e.model.name) or cfg.cloud_prices.get("*")
    cost = (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6 if price else 0.0
    return joules, joules / 3.6e6 * cfg.cloud_g_per_kwh, cost, price is not None


def _candidate(req: TaskRequest, e: Entry, live: Live, cfg: RouterConfig, score: float, escalated: bool) -> Candidate:
    """The candidate with its reasons in words (only for the chain that is returned)."""
    d, m, tier = e.device, e.model, e.tier
    joules, gco2, cost, priced = _cloud_cost(req, e, cfg) if e.cloud else (e.joules, e.gco2, e.cost, True)
    reasons = ["escalation: nothing the policy prefers can do it in the budget"] if escalated else []
    reasons += [f"{tier.value} {m.runtime} model, p95 {live.p95:.0f} ms of {req.budget_ms:.0f} ms budget",
                f"{joules:.3g} J, {gco2:.3g} gCO2, {cost:.4g} money, quality {e.quality:.2f}"]
    if live.note:
        reasons.append(live.note)
    elif not e.measured:
        reasons.append("latency not measured yet: tier default")
    if e.queue_ms:
        reasons.append(f"{d.active_tasks} tasks running: +{e.queue_ms:.0f} ms queueing")
    if not priced:
        reasons.append("no price configured for this cloud model")
    if d.energy_mode == "prefer_small" and tier.rank > Tier.small.rank:
        reasons.append("device prefers small models (battery below 50 %)")
    return Candidate(d.id, m.name, m.runtime, tier, live.p50, live.p95, joules, gco2, cost, e.quality, score,
                     live.p95 <= req.budget_ms, tuple(reasons))


# -- the decision --------------------------------------------------------------------------------

def _live(e: Entry, task: str, stats: StatsSnapshot) -> tuple[Live, float]:
    """Learned latency (when there are enough outcomes) and success rate; and the cooldown end."""
    learned = stats.models.get((e.device.id, e.model.name, task)) if stats.models else None
    if learned is None:
        return e.announced, 0.0
    if learned.n >= stats.config.min_samples and learned.p95_ms is not None and learned.p50_ms is not None:
        live = Live(learned.p50_ms + e.queue_ms, learned.p95_ms + e.queue_ms, learned.success_rate,
                     f"learned from {learned.n} outcomes: p95 {learned.p95_ms:.0f} ms, "
                     f"{learned.success_rate:.0%} success")
    else:
        live = Live(e.p50, e.p95, learned.success_rate, f"{learned.n} outcomes so far, {learned.success_rate:.0%} success")
    return live, learned.cooldown_until


def _de_escalate(req: TaskRequest, min_tier: Tier, stats: StatsSnapshot) -> tuple[Tier, str]:
    """A smaller tier that keeps succeeding at this task is allowed below the estimate."""
    if min_tier is Tier.tiny:
        return min_tier, ""
    lower = [t for t in Tier if t.rank == min_tier.rank - 1][0]
    n, ok = stats.tiers.get((req.task, lower.value), (0, 0))
    cfg = stats.config
    if n >= cfg.de_escalate_samples and ok / n >= cfg.de_escalate_success:
        return lower, f"de-escalated to {lower.value}: it succeeded {ok / n:.0%} of {n} times at {req.task}"
    return min_tier, ""


def route(req: TaskRequest, fleet: FleetSnapshot, cfg: RouterConfig,
          stats: StatsSnapshot | None = None) -> RouteDecision:
    policy = cfg.policy
    stats = stats or _NO_STATS
    complexity = estimate_complexity(req)
    min_tier, de_escalation = _de_escalate(req, complexity.min_tier, stats)
    min_rank = min_tier.rank
    budget = req.budget_ms
    target = max(req.quality_floor, cfg.quality_good_enough)
    local_policy = policy in ("local-first", "seed-rules")
    learned_any = bool(stats.models)
    excluded: list[Exclusion] = []
    # (over budget, score, p95, n) for every candidate; reasons in words are written only for
    # the chain that is returned (a 1,000-device fleet has thousands of candidates).
    scored: list[tuple[bool, float, float, int]] = []
    entries: list[tuple[Entry, Live, bool]] = []
    held_back: list[Entry] = []  # entries a rule-based policy keeps for escalation
    floors: set[str] = set()
    for e in fleet.by_task.get(req.task, ()):
        d = e.device
        if e.below_floor and req.requester != d.id:
            if d.id not in floors:
                floors.add(d.id)
                excluded.append(Exclusion(d.id, None, f"battery {d.battery_pct:.0f} % below its floor "
                                                      f"{d.battery_floor_pct:.0f} %: serves only its own tasks"))
            continue
        tier = e.tier
        why = None
        if req.local_only and e.cloud:
            why = "local_only: the cloud layer is excluded"
        elif e.quality < req.quality_floor:
            why = f"quality {e.quality:.2f} below the floor {req.quality_floor:.2f}"
        elif tier.rank < min_rank:
            why = f"tier {tier.value} below the task's minimum {min_tier.value}" + (
                f" ({', '.join(complexity.cues)})" if complexity.cues else "")
        elif d.energy_mode == "tiny_only" and tier is not Tier.tiny:
            why = "device in tiny_only mode (battery low)"
        elif policy == "always-cloud" and not e.cloud:
            why = "policy always-cloud: local only for what no cloud model does"
            held_back.append(e)
        elif policy == "local-first" and e.cloud and d.energy_mode != "clean_grid":
            why = f"policy {policy}: cloud only when the grid is clean or nothing local fits"
            held_back.append(e)
        elif policy == "seed-rules" and tier.rank > SEED_RULE_CAP.get(d.energy_mode, Tier.small).rank:
            cap = SEED_RULE_CAP.get(d.energy_mode, Tier.small)
            why = f"policy {policy}: mode {d.energy_mode} allows up to {cap.value} unless nothing else fits"
            held_back.append(e)
        live, cooldown_until = _live(e, req.task, stats) if learned_any else (e.announced, 0.0)
        if why is None and cooldown_until > fleet.now:
            why = (f"cooling down for {cooldown_until - fleet.now:.0f} s more after "
                   f"{stats.models[(d.id, e.model.name, req.task)].consecutive_failures} failures in a row")
        if why:
            excluded.append(Exclusion(d.id, e.model.name, why))
            continue
        scored.append(_scored(req, e, live, cfg, policy, budget, target, len(entries)))
        entries.append((e, live, False))
    if held_back and (not scored if policy == "always-cloud" else not any(not s[0] for s in scored)):
        # Nothing the policy prefers fits (always-cloud: no cloud model does the task; the rule
        # policies: nothing local meets the budget): the held-back layer is allowed after all.
        for e in held_back:
            live, _ = _live(e, req.task, stats)
            scored.append(_scored(req, e, live, cfg, policy, budget, target, len(entries)))
            entries.append((e, live, True))
        escalated = {(e.device.id, e.model.name) for e in held_back}
        excluded = [x for x in excluded if (x.device_id, x.model) not in escalated]
    head = heapq.nsmallest(cfg.chain_length, scored)
    chain = tuple(_candidate(req, entries[i][0], entries[i][1], cfg, score, entries[i][2])
                  for _over, score, _p95, i in head)
    reasons = [f"policy {policy}; minimum tier {min_tier.value}"
               + (f" ({', '.join(complexity.cues)})" if complexity.cues else "")]
    if de_escalation:
        reasons.append(de_escalation)
    if chain:
        c = chain[0]
        reasons.append(f"chose {c.model} on {c.device_id}: score {c.score:.3f}"
                       + ("" if c.within_budget else " (no candidate meets the latency budget)"))
        if len(scored) > len(chain):
            reasons.append(f"{len(scored) - len(chain)} more candidates ranked below the chain of {len(chain)}")
    else:
        reasons.append("no device can run this task" if not excluded else "every candidate was excluded")
    return RouteDecision(req.id, req.task, policy, min_tier, chain, tuple(excluded), tuple(reasons))


def _scored(req: TaskRequest, e: Entry, live: Live, cfg: RouterConfig, policy: str, budget: float,
            target: float, n: int) -> tuple[bool, float, float, int]:
    """The sort key of a candidate: over budget last, then by score (lower is better)."""
    p95 = live.p95
    over = p95 > budget
    failing = cfg.weight_failure * (1.0 - live.success_rate)
    if policy == "local-first":
        # The smallest capable layer first, then the fastest.
        return over, e.tier.rank + p95 / budget / 10 + failing, p95, n
    if policy == "seed-rules":
        # A rule table: the energy mode names a layer ("at solar peak run medium models"); the
        # layer closest to it below wins, then the fastest.
        cap = SEED_RULE_CAP.get(e.device.energy_mode, Tier.small)
        return over, abs(cap.rank - e.tier.rank) + p95 / budget / 10 + failing, p95, n
    if policy == "always-cloud":
        return over, p95 / budget + failing, p95, n
    gco2, cost = (_cloud_cost(req, e, cfg)[1:3]) if e.cloud else (e.gco2, e.cost)
    score = (cfg.weight_quality * max(0.0, target - e.quality) + cfg.weight_latency * p95 / budget
             + cfg.weight_carbon * gco2 / cfg.carbon_ref_g + cfg.weight_money * cost / cfg.money_ref + failing)
    if over:
        score += 10.0
    if e.device.energy_mode == "prefer_small" and e.tier.rank > 1:
        score += 1.0
    return over, score, p95, n
