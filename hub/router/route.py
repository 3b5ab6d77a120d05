"""``route(request, fleet, config) -> RouteDecision``: pure, no I/O, no clock of its own.

Every (device, model) that serves the task is either excluded with a reason or becomes a
candidate with predicted latency (p50/p95 including queueing), joules, gCO2, money and expected
quality, and a score (lower is better). The ranked candidates are the fallback chain.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from ..capability import Tier
from .model import AUDIO_TASKS, Candidate, Entry, Exclusion, FleetSnapshot, Live, RouteDecision, TaskRequest
from .cache import CacheConfig
from .predict import PredictorConfig
from .prices import BUILTIN_CLOUD_PRICES, DEFAULT_COUNTERFACTUAL_MODEL, PRICE_LIST_DATE
from .rules import RulesConfig
from .stats import Learned, LearningConfig, StatsSnapshot

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


#: The built-in list as the router uses it: (price, where it comes from), made once.
_BUILTIN_PRICES: dict[str, tuple[CloudPrice, str]] = {
    name: (CloudPrice(input_per_mtok=p.input_per_mtok, output_per_mtok=p.output_per_mtok),
           f"built-in price list ({p.source}; checked {p.checked})") for name, p in BUILTIN_CLOUD_PRICES.items()}


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
    #: Cloud prices per million tokens, by model name ("*" for any other cloud model). They win
    #: over the built-in list (hub/router/prices.py), "*" included.
    cloud_prices: dict[str, CloudPrice] = Field(default_factory=dict)
    #: Price the cloud models router.cloud_prices leaves unpriced from the built-in list of
    #: published prices (hub/router/prices.py); false: only router.cloud_prices.
    builtin_cloud_prices: bool = True
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
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    #: The cloud model the ledger's "had everything gone to the cloud" is priced with.
    counterfactual_model: str = DEFAULT_COUNTERFACTUAL_MODEL

    def cloud_price(self, model: str) -> tuple[CloudPrice | None, str | None]:
        """A cloud model's price per million tokens and where it comes from: router.cloud_prices
        (the model, then "*"), then the built-in list; (None, None) when neither knows it."""
        price = self.cloud_prices.get(model)
        if price is not None:
            return price, f"hub.toml router.cloud_prices.{model}"
        price = self.cloud_prices.get("*")
        if price is not None:
            return price, 'hub.toml router.cloud_prices."*"'
        listed = _BUILTIN_PRICES.get(model) if self.builtin_cloud_prices else None
        return listed if listed is not None else (None, None)


# -- complexity ------------------------------------------------------------------------------------

_SIMPLE_TASKS = {"intent", "classify", "embed", "eeg", "echo", "transcribe", "format"}
# Each cue is a list of (key, test): the test runs only when its key is in the text. `in` scans
# in C, where one big alternation tried every branch at every position (~100 µs on a
# 660-character note, most of a decision); and a pattern that starts with a literal is searched
# for by that literal, so whole words are `word\b` plus a look at the character before
# (`\bplan\b` took 8 µs on a note about "planning", `plan\b` 0.5 µs). Case-insensitive cues are
# lower-case and are looked for in the lower-cased text.
class _Word:
    """``key`` as a whole word: what ``\bkey\b`` matches."""

    __slots__ = ("pattern",)

    def __init__(self, key: str) -> None:
        self.pattern = re.compile(re.escape(key) + r"\b")

    def search(self, text: str) -> bool:
        return any(m.start() == 0 or not _is_word_char(text[m.start() - 1]) for m in self.pattern.finditer(text))


class _Anywhere:
    @staticmethod
    def search(text: str) -> bool:
        return True


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


Cue = list[tuple[str, "re.Pattern[str] | _Word | _Anywhere"]]
_CODE: Cue = [("```", _Anywhere()), ("def ", re.compile(r"\bdef ")), ("class ", re.compile(r"\bclass ")),
              ("function", _Word("function")), ("return", _Word("return")), ("{", re.compile(r"\{\s*$", re.M)),
              ("}", re.compile(r"\}\s*$", re.M)), (";", re.compile(r";\s*$", re.M)), ("#include", _Anywhere()),
              ("=>", _Anywhere())]
_MATH: Cue = [(k, _Word(k)) for k in ("integral", "derivative", "prove", "equation", "theorem", "probability")]
_ARITHMETIC = re.compile(r"[0-9]\s*[-+*/^=]\s*[0-9]")
_STEPS: Cue = [("step by step", _Word("step by step")), ("first", re.compile(r"\bfirst\b.*\bthen\b", re.S)),
               ("compare", _Word("compare")), ("explain why", _Word("explain why")),
               ("analy", re.compile(r"\banaly[sz]e\b")), ("plan", _Word("plan")),
               ("trade", re.compile(r"\btrade-?offs?\b"))]


def _cue(cue: Cue, text: str) -> bool:
    for key, test in cue:  # a loop, not any(generator): this runs ~20 times per decision
        if key in text and test.search(text):
            return True
    return False


def text_cues(text: str) -> tuple[bool, bool, bool]:
    """(code, maths, multi-step reasoning) cues in a text."""
    lowered = text.lower()
    maths = _cue(_MATH, lowered) or (any(c in text for c in "0123456789") and _ARITHMETIC.search(text) is not None)
    return _cue(_CODE, text), maths, _cue(_STEPS, lowered)


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
    code, maths, steps = text_cues(text)
    if code:
        cues.append("code")
    if maths:
        cues.append("maths")
    if steps:
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
    why = (f"approved compiled pattern {rule_id}: answered {answer!r} before, every time",)
    c = Candidate("hub", f"rule:{rule_id}", "code", Tier.tiny, 0.05, 0.1, 0.0, 0.0, 0.0, 1.0, 0.0, True, lambda: why)
    return RouteDecision(req.id, req.task, policy, Tier.tiny, (c,), (), (f"rule {rule_id} matches: no model needed",))


def _tokens(req: TaskRequest) -> tuple[int, int]:
    return req.size() // 4, OUTPUT_TOKENS.get(req.task, 150)


def cloud_counterfactual(req: TaskRequest, cfg: RouterConfig) -> tuple[float | None, float]:
    """Money and gCO2 of the same request sent to the cloud (the ledger's comparison); money is
    None when no price is known for ``router.counterfactual_model``."""
    tin, tout = _tokens(req)
    price, _ = cfg.cloud_price(cfg.counterfactual_model)
    cost = (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6 if price else None
    return cost, (tin + tout) * cfg.cloud_j_per_token / 3.6e6 * cfg.cloud_g_per_kwh


def counterfactual_document(cfg: RouterConfig) -> dict[str, object]:
    """Which price the all-cloud counterfactual uses (GET /api/costs, the CLI, the dashboard)."""
    price, source = cfg.cloud_price(cfg.counterfactual_model)
    return {"model": cfg.counterfactual_model,
            "input_per_mtok": price.input_per_mtok if price else None,
            "output_per_mtok": price.output_per_mtok if price else None,
            "price_list": None if price is None else "hub.toml" if (source or "").startswith("hub.toml")
            else f"built-in {PRICE_LIST_DATE}",
            "source": source}


def _request_costs(req: TaskRequest, e: Entry, cfg: RouterConfig) -> tuple[float, float, float, bool]:
    """Joules, gCO2 and money of a call whose cost depends on the request's tokens (a cloud model;
    a local model that announced joules per token), and whether a cloud price is configured."""
    tin, tout = _tokens(req)
    if not e.cloud:
        # Generation dominates: prompt tokens go through ~50x faster than answer tokens (llama.cpp
        # on an RTX 4090, pp512 7,139 vs tg512 131 tokens/s), so only the answer is counted.
        joules = tout * e.j_per_token + e.wake_j
        return joules, joules * e.g_per_j, joules * e.price_per_j, True
    joules = (tin + tout) * cfg.cloud_j_per_token
    price, _ = cfg.cloud_price(e.model.name)
    cost = (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6 if price else 0.0
    return joules, joules / 3.6e6 * cfg.cloud_g_per_kwh, cost, price is not None


def _candidate(req: TaskRequest, e: Entry, live: Live, quality: float, cfg: RouterConfig, score: float,
               escalated: bool, prior_k: float) -> Candidate:
    """A candidate of the returned chain; its reasons are written when read."""
    d, m, tier = e.device, e.model, e.tier
    joules, gco2, cost, priced = (_request_costs(req, e, cfg) if e.cloud or e.j_per_token
                                  else (e.joules, e.gco2, e.cost, True))
    extra_ms, extra_j = _unit_extra(req, e) if e.ms_per_unit or e.j_per_unit else (0.0, 0.0)
    if extra_ms or extra_j:
        live = _with_extra(live, extra_ms)
        joules, gco2, cost = joules + extra_j, gco2 + extra_j * e.g_per_j, cost + extra_j * e.price_per_j
    budget = req.budget_ms

    def explain() -> tuple[str, ...]:
        reasons = ["escalation: nothing the policy prefers can do it in the budget"] if escalated else []
        reasons += [f"{tier.value} {m.runtime} model, p95 {live.p95:.0f} ms of {budget:.0f} ms budget",
                    f"{joules:.3g} J, {gco2:.3g} gCO2, {cost:.4g} money, quality {quality:.2f}"
                    + (f" for this request (the model's {live.quality:.2f} in general)" if quality != live.quality
                       else "")]
        notes = _learned_note(live, prior_k)
        if notes:
            reasons += notes
        elif not e.measured:
            reasons.append("latency not measured yet: tier default")
        if e.queue_ms:
            reasons.append(f"{d.active_tasks} tasks running: +{e.queue_ms:.0f} ms queueing")
        if e.wake_ms or e.wake_j:
            reasons.append(f"asleep: waking it adds {e.wake_ms:.0f} ms and {e.wake_j:.3g} J (the wake and the "
                           f"idle minutes before it may sleep again)")
        if extra_ms or extra_j:
            what = (f"{req.audio_s:.1f} s of audio" if req.task in AUDIO_TASKS
                    else f"{_units(req) * 1000:.0f} input tokens")
            reasons.append(f"{what}: +{extra_ms:.0f} ms, +{extra_j:.3g} J")
        if not priced:
            reasons.append("no price for this cloud model (neither router.cloud_prices nor the built-in list)")
        if d.energy_mode == "prefer_small" and tier.rank > Tier.small.rank:
            reasons.append("device prefers small models (battery below 50 %)")
        return tuple(reasons)
    wake_score = 0.0
    if e.wake_ms or e.wake_j:
        # The part of the score that is the wake's (sovereign's terms): what being awake would
        # have saved, for the power planner's value of readiness (hub/power/plan.py).
        wake_score = (cfg.weight_latency * e.wake_ms / budget + e.wake_j * (
            cfg.weight_carbon * e.g_per_j / cfg.carbon_ref_g + cfg.weight_money * e.price_per_j / cfg.money_ref))
        if live.p95 > budget >= live.p95 - e.wake_ms:
            wake_score += 10.0
    return Candidate(d.id, m.name, m.runtime, tier, live.p50, live.p95, joules, gco2, cost, quality, score,
                     live.p95 <= budget, explain, m.max_concurrency, e.wake_ms, wake_score, extra_ms)


def _units(req: TaskRequest) -> float:
    """How much of what a model prices per unit the request holds: seconds of audio for speech,
    thousands of input tokens (~4 bytes each) otherwise."""
    return (req.audio_s or 0.0) if req.task in AUDIO_TASKS else req.size() / 4000


def _unit_extra(req: TaskRequest, e: Entry) -> tuple[float, float]:
    """The ms and joules the request's audio or tokens add to the model's per-call figures."""
    units = max(0.0, _units(req) - e.unit_free)
    return units * e.ms_per_unit, units * e.j_per_unit


def _with_extra(live: Live, ms: float) -> Live:
    return Live(live.p50 + ms, live.p95 + ms, live.success_rate, live.quality, live.learned, live.latency_weight,
                live.confidence_weight)


# -- the decision --------------------------------------------------------------------------------

def _blend(e: Entry, task: str, learned: Learned, cfg: LearningConfig, now: float) -> Live:
    """Latency and quality, announced and learned, blended: the announced figures are a prior worth
    `prior_outcomes`, and outcomes fade with time. Numbers only (the words are written when a
    candidate's reasons are read); kept on the entry while its Learned is the same object."""
    fade = 0.5 ** (max(0.0, now - learned.last_at) / cfg.half_life_s)
    k = cfg.prior_outcomes
    quality, w_conf = e.quality, 0.0
    if learned.confidence is not None and learned.confidence_n >= cfg.min_samples:
        w_conf = min(learned.confidence_n, cfg.window) * fade
        quality = (w_conf * learned.confidence + k * e.quality) / (w_conf + k)
    p50, p95, w_lat = e.p50, e.p95, 0.0
    if learned.n >= cfg.min_samples and learned.p95_ms is not None and learned.p50_ms is not None:
        w_lat = min(learned.n, cfg.window) * fade
        q = e.queue_ms + e.wake_ms  # learned latencies are of calls: the queue and a wake come on top
        p50 = (w_lat * learned.p50_ms + k * (p50 - q)) / (w_lat + k) + q
        p95 = (w_lat * learned.p95_ms + k * (p95 - q)) / (w_lat + k) + q
    live = Live(p50, p95, learned.success_rate, quality, learned, w_lat, w_conf)
    e.blended[task] = (learned, live)
    return live


def _learned_note(live: Live, stats_k: float) -> list[str]:
    learned = live.learned
    if learned is None:
        return []
    if live.latency_weight:
        notes = [f"learned from {learned.n} outcomes (weight {live.latency_weight:.0f} against the announced "
                 f"figure's {stats_k:.0f}): p95 {learned.p95_ms:.0f} ms, {learned.success_rate:.0%} success"]
    else:
        notes = [f"{learned.n} outcomes so far, {learned.success_rate:.0%} success"]
    if live.confidence_weight:
        notes.append(f"mean confidence {learned.confidence:.2f} over {learned.confidence_n} answers")
    return notes


def _kept_back(policy: str, e: Entry) -> str | None:
    """Why a rule-based policy keeps this candidate for escalation only (None: it does not)."""
    d = e.device
    if policy == "always-cloud" and not e.cloud:
        return "policy always-cloud: local only for what no cloud model does"
    if policy == "local-first" and e.cloud and d.energy_mode != "clean_grid":
        return f"policy {policy}: cloud only when the grid is clean or nothing local fits"
    if policy == "seed-rules":
        cap = SEED_RULE_CAP.get(d.energy_mode, Tier.small)
        if e.rank > cap.rank:
            return f"policy {policy}: mode {d.energy_mode} allows up to {cap.value} unless nothing else fits"
    return None


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


def route(req: TaskRequest, fleet: FleetSnapshot, cfg: RouterConfig, stats: StatsSnapshot | None = None,
          predicted: Mapping[str, float] | None = None) -> RouteDecision:
    """``predicted``: the per-prompt predictor's chance that each model answers this request well
    (hub/router/predict.py), worked out once per request by the caller. Under the sovereign
    policy a model it names is scored on that chance instead of its announced quality, and the
    text cues' minimum tier no longer excludes anything (the predictor has learned what the cues
    guess); a model it does not name keeps its announced quality. The rule-based policies are
    baselines and keep their rules."""
    policy = cfg.policy
    stats = stats or _NO_STATS
    if predicted and policy == "sovereign":
        complexity, min_tier, de_escalation = Complexity(Tier.tiny), Tier.tiny, ""
    else:
        complexity = estimate_complexity(req)
        min_tier, de_escalation = _de_escalate(req, complexity.min_tier, stats)
        predicted = None
    min_rank = min_tier.rank
    target = max(req.quality_floor, cfg.quality_good_enough)
    floor, local_only, requester = req.quality_floor, req.local_only, req.requester
    always_cloud, rule_policy = policy == "always-cloud", policy != "sovereign"
    learned_get = stats.models.get if stats.models else None
    learning, now, task = stats.config, fleet.now, req.task
    text_chars = len(req.text) if req.text is not None else 0
    pinned = req.model
    score_of = _scorer(req, cfg, policy, target)
    excluded: list[Exclusion] = []
    # (over budget, score, p95, n) for every candidate; reasons in words are written only for
    # the chain that is returned (a 1,000-device fleet has thousands of candidates).
    scored: list[tuple[bool, float, float, int]] = []
    entries: list[tuple[Entry, Live, float, bool]] = []
    held_back: list[tuple[Entry, Live]] = []  # what a rule-based policy keeps for escalation
    floors: set[str] = set()
    candidates = fleet.by_task.get(task, ())
    if pinned is not None:  # not what was asked for: not a candidate, and not worth a line of reasons
        candidates = [e for e in candidates if e.model.name == pinned]
    for e in candidates:
        d = e.device
        if e.below_floor and requester != d.id:
            if d.id not in floors:
                floors.add(d.id)
                excluded.append(Exclusion(d.id, None, f"battery {d.battery_pct:.0f} % below its floor "
                                                      f"{d.battery_floor_pct:.0f} %: serves only its own tasks"))
            continue
        # Inline rather than a call per candidate (~10 % of a decision at 100 devices).
        learned = learned_get((d.id, e.model.name, task)) if learned_get else None
        if learned is None:
            live, cooldown_until = e.announced, 0.0
        else:
            memo = e.blended.get(task)
            live = memo[1] if memo is not None and memo[0] is learned else _blend(e, task, learned, learning, now)
            cooldown_until = learned.cooldown_until
        why = None
        if local_only and e.cloud:
            why = "local_only: the cloud layer is excluded"
        elif live.quality < floor:
            why = f"quality {live.quality:.2f} below the floor {floor:.2f}"
        elif e.rank < min_rank:
            why = f"tier {e.tier.value} below the task's minimum {min_tier.value}" + (
                f" ({', '.join(complexity.cues)})" if complexity.cues else "")
        elif e.tiny_only:
            why = "device in tiny_only mode (battery low)"
        elif text_chars and e.model.max_text_chars is not None and text_chars > e.model.max_text_chars:
            why = f"text of {text_chars} characters over the model's limit of {e.model.max_text_chars}"
        elif learned is not None and cooldown_until > now:
            why = (f"cooling down for {cooldown_until - now:.0f} s more after "
                   f"{learned.consecutive_failures} failures in a row")
        elif rule_policy:
            why = _kept_back(policy, e)
            if why:
                held_back.append((e, live))
        if why:
            excluded.append(Exclusion(d.id, e.model.name, why))
            continue
        quality = live.quality if predicted is None else predicted.get(e.model.name, live.quality)
        scored.append(score_of(e, live, quality, len(entries)))
        entries.append((e, live, quality, False))
    if held_back and (not scored if always_cloud else not any(not s[0] for s in scored)):
        # Nothing the policy prefers fits (always-cloud: no cloud model does the task; the rule
        # policies: nothing local meets the budget): the held-back layer is allowed after all.
        for e, live in held_back:
            quality = live.quality if predicted is None else predicted.get(e.model.name, live.quality)
            scored.append(score_of(e, live, quality, len(entries)))
            entries.append((e, live, quality, True))
        escalated = {(e.device.id, e.model.name) for e, _ in held_back}
        excluded = [x for x in excluded if (x.device_id, x.model) not in escalated]
    head = heapq.nsmallest(cfg.chain_length, scored)
    chain = tuple(_candidate(req, entries[i][0], entries[i][1], entries[i][2], cfg, score, entries[i][3],
                             stats.config.prior_outcomes) for _over, score, _p95, i in head)
    reasons = [f"policy {policy}; minimum tier {min_tier.value}"
               + (f" ({', '.join(complexity.cues)})" if complexity.cues else "")]
    if predicted is not None:
        best = sorted(predicted.items(), key=lambda kv: -kv[1])[:4]
        reasons.append("per-prompt predictor, chance of a good answer: "
                       + ", ".join(f"{m} {p:.2f}" for m, p in best) + (" …" if len(predicted) > 4 else ""))
    if de_escalation:
        reasons.append(de_escalation)
    if chain:
        c = chain[0]
        reasons.append(f"chose {c.model} on {c.device_id}: score {c.score:.3f}"
                       + ("" if c.within_budget else " (no candidate meets the latency budget)"))
        if len(scored) > len(chain):
            reasons.append(f"{len(scored) - len(chain)} more candidates ranked below the chain of {len(chain)}")
    else:
        reasons.append(f"no device serves model {pinned!r} for this task" if pinned is not None and not excluded
                       else "no device can run this task" if not excluded else "every candidate was excluded")
    return RouteDecision(req.id, req.task, policy, min_tier, chain, tuple(excluded), tuple(reasons))


def _scorer(req: TaskRequest, cfg: RouterConfig, policy: str,
            target: float) -> Callable[[Entry, Live, float, int], tuple[bool, float, float, int]]:
    """The sort key of a candidate for this request: over budget last, then by score (lower is
    better). What depends only on the request and the config is worked out here, once."""
    inner = _policy_scorer(req, cfg, policy, target)
    if req.task in AUDIO_TASKS and not req.audio_s or req.task not in _PER_UNIT_TASKS:
        return inner
    # Speech and embeddings: what the request's size adds on the latency, and (sovereign) its
    # joules on carbon and money.
    w_carbon, w_money = ((cfg.weight_carbon / cfg.carbon_ref_g, cfg.weight_money / cfg.money_ref)
                         if policy == "sovereign" else (0.0, 0.0))

    def with_extra(e: Entry, live: Live, quality: float, n: int) -> tuple[bool, float, float, int]:
        if not e.ms_per_unit and not e.j_per_unit:
            return inner(e, live, quality, n)
        ms, joules = _unit_extra(req, e)
        over, score, p95, i = inner(e, _with_extra(live, ms), quality, n)
        return over, score + joules * (w_carbon * e.g_per_j + w_money * e.price_per_j), p95, i
    return with_extra


#: Tasks whose models may price per unit of input (announced per second of audio or per 1,000
#: tokens); other tasks skip the wrapper, which costs a call per candidate.
_PER_UNIT_TASKS = AUDIO_TASKS | {"embed"}


def _policy_scorer(req: TaskRequest, cfg: RouterConfig, policy: str,
                   target: float) -> Callable[[Entry, Live, float, int], tuple[bool, float, float, int]]:
    budget = req.budget_ms
    w_fail = cfg.weight_failure
    if policy == "local-first":
        def local_first(e: Entry, live: Live, quality: float, n: int) -> tuple[bool, float, float, int]:
            # The smallest capable layer first, then the fastest.
            p95 = live.p95
            return p95 > budget, e.rank + p95 / budget / 10 + w_fail * (1.0 - live.success_rate), p95, n
        return local_first
    if policy == "seed-rules":
        def seed_rules(e: Entry, live: Live, quality: float, n: int) -> tuple[bool, float, float, int]:
            # A rule table: the energy mode names a layer ("at solar peak run medium models");
            # the layer closest to it below wins, then the fastest.
            p95 = live.p95
            cap = SEED_RULE_CAP.get(e.device.energy_mode, Tier.small).rank
            return p95 > budget, abs(cap - e.rank) + p95 / budget / 10 + w_fail * (1.0 - live.success_rate), p95, n
        return seed_rules
    if policy == "always-cloud":
        def always_cloud(e: Entry, live: Live, quality: float, n: int) -> tuple[bool, float, float, int]:
            p95 = live.p95
            return p95 > budget, p95 / budget + w_fail * (1.0 - live.success_rate), p95, n
        return always_cloud
    w_quality, w_latency = cfg.weight_quality, cfg.weight_latency / budget
    w_carbon, w_money = cfg.weight_carbon / cfg.carbon_ref_g, cfg.weight_money / cfg.money_ref

    def sovereign(e: Entry, live: Live, quality: float, n: int) -> tuple[bool, float, float, int]:
        p95 = live.p95
        gco2, cost = _request_costs(req, e, cfg)[1:3] if e.cloud or e.j_per_token else (e.gco2, e.cost)
        shortfall = target - quality
        score = (w_latency * p95 + w_carbon * gco2 + w_money * cost + w_fail * (1.0 - live.success_rate)
                 + (w_quality * shortfall if shortfall > 0.0 else 0.0))
        over = p95 > budget
        if over:
            score += 10.0
        if e.rank > 1 and e.device.energy_mode == "prefer_small":
            score += 1.0
        return over, score, p95, n
    return sovereign
