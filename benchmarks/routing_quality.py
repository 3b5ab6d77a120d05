"""Routing quality on real per-question outcomes: what each policy's answers were really worth.

    .venv/bin/python benchmarks/routing_quality.py [--dataset mmlu-pro] [--splits 5] [--json]
                                                   [--plot docs/routing_quality.png]

The questions of a public benchmark, with how each real model of a home fleet did on each one
(benchmarks/data/: MMLU-Pro's per-question outputs of eight models), are
replayed through the hub's own dispatcher and router (the one task path of `sovereign simulate`:
``Dispatcher`` on the simulated home of hub/sim/devices.py, virtual time, real GB carbon and solar
curves). Each answer is scored with the real outcome of the model that gave it on that question;
its real length prices tokens, joules and money.

For each of ``--splits`` random splits (no question in two parts): the per-prompt predictor
(hub/router/predict.py) learns from 56 % of the questions (fit), sovereign's one knob
(``router.weight_quality``) is set on the next 14 % (validation: the largest weight whose $ stays
within ``--cost-share`` of always-cloud's, RouteLLM's way of calibrating a threshold; set apart for
sovereign with and without the predictor), and every
policy is measured on the other 30 % (test), each model's announced quality being its mean score
on the fit part (what a per-model constant knows). Policies:

- always-cloud, seed-rules, local-first, sovereign: the hub's policies, through the dispatcher;
  sovereign with the per-prompt predictor on;
- sovereign-cues: sovereign without the predictor (the complexity cues and per-model constants);
- random: each question to a model drawn at random with sovereign's share of every model;
- oracle: knows every outcome: the cheapest model that gets the question right, else the cheapest.

Every policy's answers are costed by one function: local joules from the model's joules per token
times the answer's real tokens, at the site's marginal carbon and price at that moment (PV while
the sun shines, the grid otherwise); cloud calls at the fleet's price list and per-token energy.
Also reported: the AUC of "the model fails this question" from the predictor and from the
complexity estimator (hub/router/route.py, today's rule), on the same test questions.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.capability import KNOWN_TASKS  # noqa: E402
from hub.config import DispatchConfig  # noqa: E402
from hub.dispatch import Dispatcher  # noqa: E402
from hub.energy.model import ModeThresholds  # noqa: E402
from hub.energy.series import Series  # noqa: E402
from hub.router.cache import CacheConfig, ResultCache  # noqa: E402
from hub.router.learner import PromptLearner  # noqa: E402
from hub.router.ledger import Ledger  # noqa: E402
from hub.router.model import TaskRequest  # noqa: E402
from hub.router.predict import PredictorConfig, auc  # noqa: E402
from hub.router.request import InferRequest  # noqa: E402
from hub.router.route import RouterConfig, estimate_complexity  # noqa: E402
from hub.router.rules import RuleBook, RulesConfig  # noqa: E402
from hub.router.stats import LearningConfig, StatsStore  # noqa: E402
from hub.sim.devices import SimHome  # noqa: E402
from hub.sim.files import FleetFile, SimInputError, SimModel, load_fleet  # noqa: E402
from hub.sim.loop import LoopClock, run_virtual  # noqa: E402
from hub.simulate import site_at  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
GRID = ROOT / "plugins" / "replay" / "data"
#: dataset → (outcomes table, fleet, what a score is)
#: (AlpacaEval's table is CC BY-NC, so not in the repository: benchmarks/data/README.md.)
DATASETS = {"mmlu-pro": ("mmlu_pro_outcomes.jsonl.gz", "routing_fleet.toml", "accuracy")}
POLICIES = ("always-cloud", "seed-rules", "local-first", "sovereign", "sovereign-cues")
#: sovereign's knob, router.weight_quality, from "money and carbon first" to "quality first".
SWEEP = (0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0)
START = datetime(2020, 6, 1, tzinfo=timezone.utc).timestamp()
SPACING_S = 60.0  # one question a minute: the fleet is never the bottleneck, quality and cost are
BUDGET_MS = 120_000.0  # a question answered within two minutes: every model of the fleet fits it at p95


class DataError(Exception):
    pass


@dataclass(frozen=True)
class Item:
    id: str
    task: str
    category: str
    text: str
    score: dict[str, float]  # model → score (0/1 correct, or a judged win probability)
    tokens: dict[str, int]  # model → answer tokens


def load_items(path: Path) -> list[Item]:
    """The derived table, every line checked (a bad one names the file and line)."""
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                d = json.loads(line)
                outcomes = d["outcomes"]
                score = {m: float(o["score"]) for m, o in outcomes.items()}
                tokens = {m: int(o["out_tokens"]) for m, o in outcomes.items()}
                if not score:
                    raise ValueError("no outcomes")
                if not all(0.0 <= s <= 1.0 for s in score.values()) or min(tokens.values()) < 1:
                    raise ValueError("a score outside 0..1 or an answer of no tokens")
                if d["task"] not in KNOWN_TASKS or not str(d["text"]).strip():
                    raise ValueError(f"task {d['task']!r} unknown or the text empty")
                items.append(Item(str(d["id"]), str(d["task"]), str(d.get("category", "")), str(d["text"]),
                                  score, tokens))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{n}: {exc!r}") from exc
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def split(items: list[Item], seed: int) -> tuple[list[Item], list[Item], list[Item]]:
    """fit 56 %, validation 14 %, test 30 %: each question in exactly one."""
    order = sorted(items, key=lambda i: i.id)
    random.Random(seed).shuffle(order)
    a, b = int(len(order) * 0.56), int(len(order) * 0.70)
    return order[:a], order[a:b], order[b:]


def fleet_for(fleet: FleetFile, fit: list[Item]) -> FleetFile:
    """The fleet with each model announcing its mean score on the fit questions."""
    def mean(model: str) -> float:
        return round(statistics.fmean(i.score[model] for i in fit), 4)
    devices = [d.model_copy(update={"models": [m.model_copy(update={"quality": mean(m.name)}) for m in d.models]})
               for d in fleet.devices]
    return fleet.model_copy(update={"devices": devices})


def train(fit: list[Item], models: list[str], task: str) -> PromptLearner:
    learner = PromptLearner(PredictorConfig(tasks=[task]))
    predictor = learner.predictor
    rows = [(predictor.features(i.text), i) for i in fit]
    for m in models:
        predictor.fit(task, m, [(f, i.score[m]) for f, i in rows], epochs=3, seed=1)
    return learner


# -- cost of an answer, the same for every policy -------------------------------------------------

@dataclass
class Tally:
    quality: float = 0.0
    cost: float = 0.0
    gco2: float = 0.0
    joules: float = 0.0
    by_model: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    n: int = 0

    def add(self, item: Item, model: str | None, costs: tuple[float, float, float]) -> None:
        self.n += 1
        cost, gco2, joules = costs
        self.cost, self.gco2, self.joules = self.cost + cost, self.gco2 + gco2, self.joules + joules
        if model is None:
            self.unanswered += 1
            return
        self.quality += item.score[model]
        self.by_model[model] = self.by_model.get(model, 0) + 1

    def summary(self, cloud: set[str]) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"quality": round(100 * self.quality / n, 2), "cost": round(self.cost, 4),
                "kwh": round(self.joules / 3.6e6, 4), "gco2": round(self.gco2, 2),
                "cloud_share": round(100 * sum(v for m, v in self.by_model.items() if m in cloud) / n, 2),
                "unanswered": self.unanswered, "models": dict(sorted(self.by_model.items()))}


class Costing:
    def __init__(self, fleet: FleetFile, carbon: Series, solar: Series) -> None:
        self.fleet = fleet
        self.specs: dict[str, SimModel] = {m.name: m for d in fleet.devices for m in d.models}
        self.cloud = {m.name for d in fleet.devices for m in d.models if m.runtime == "cloud"}
        self.tiers = {m.name: d.tier.value for d in fleet.devices for m in d.models}
        self.site = site_at(fleet, carbon, solar, ModeThresholds())

    def of(self, model: str, item: Item, at: float) -> tuple[float, float, float]:
        """($, gCO2, joules) of ``model`` answering ``item`` at ``at``, with the answer's real length."""
        m, out = self.specs[model], item.tokens[model]
        if model in self.cloud:
            price = self.fleet.cloud_prices[model]
            tin = len(item.text) // 4
            joules = (tin + out) * self.fleet.cloud_j_per_token
            return ((tin * price.input_per_mtok + out * price.output_per_mtok) / 1e6,
                    joules / 3.6e6 * self.fleet.cloud_g_per_kwh, joules)
        joules = m.j_per_token * out if m.j_per_token else m.joules
        site = self.site(at)
        return joules / 3.6e6 * site.price_per_kwh, joules / 3.6e6 * site.g_per_kwh, joules


# -- replays through the hub's dispatcher ----------------------------------------------------------

async def _replay(policy: str, fleet: FleetFile, items: list[Item], costing: Costing, carbon: Series,
                  solar: Series, learner: PromptLearner | None, weight_quality: float, seed: int) -> Tally:
    clock = LoopClock(START)
    home = SimHome(fleet, carbon, solar, clock, random.Random(seed))
    router = RouterConfig(policy=policy, cloud_prices=fleet.cloud_prices, cloud_g_per_kwh=fleet.cloud_g_per_kwh,
                          cloud_j_per_token=fleet.cloud_j_per_token, weight_quality=weight_quality,
                          quality_good_enough=1.0)
    dispatcher = Dispatcher(DispatchConfig(), router, fleet=home.fleet_view, energy=home.energy,
                            stats=StatsStore(LearningConfig()), cache=ResultCache(CacheConfig(), None),
                            rules=RuleBook(RulesConfig(), None), ledger=Ledger(None), rpc=home, clock=clock,
                            known_device=home.known, thresholds=ModeThresholds(), learner=learner)
    tally = Tally()
    loop = asyncio.get_running_loop()
    home.set_inputs(clock.time())
    home.step(0.0)
    steps = asyncio.create_task(home.run_steps())

    async def ask(i: int, item: Item) -> None:
        at = clock.time()
        out = await dispatcher.infer(InferRequest(id=f"q{i}", task=item.task, text=item.text, budget_ms=BUDGET_MS))
        spent = [costing.of(a.model, item, at) for a in out.attempts]  # failed attempts cost too
        model = out.served_by["model"] if out.ok and out.served_by else None
        tally.add(item, model, tuple(map(sum, zip(*spent))) if spent else (0.0, 0.0, 0.0))  # type: ignore[arg-type]

    running = []
    for i, item in enumerate(items):
        t = i * SPACING_S
        if t > loop.time():
            await asyncio.sleep(t - loop.time())
        running.append(asyncio.create_task(ask(i, item)))
    await asyncio.gather(*running)
    steps.cancel()
    await dispatcher.aclose()
    return tally


def replay(policy: str, fleet: FleetFile, items: list[Item], costing: Costing, carbon: Series, solar: Series,
           learner: PromptLearner | None = None, weight_quality: float = 2.0, seed: int = 1) -> Tally:
    return run_virtual(_replay(policy, fleet, items, costing, carbon, solar, learner, weight_quality, seed))


def random_router(items: list[Item], shares: dict[str, int], costing: Costing, seed: int) -> Tally:
    """Each question to a model drawn with the given shares (sovereign's), blind to the question."""
    rng = random.Random(seed)
    pool = [m for m, n in shares.items() for _ in range(n)]
    rng.shuffle(pool)
    tally = Tally()
    for i, (item, model) in enumerate(zip(items, pool)):
        tally.add(item, model, costing.of(model, item, START + i * SPACING_S))
    return tally


def oracle(items: list[Item], models: list[str], costing: Costing) -> Tally:
    """The cheapest model that gets each question right (else the cheapest): a bound, not a policy."""
    tally = Tally()
    for i, item in enumerate(items):
        at = START + i * SPACING_S
        options = sorted((costing.of(m, item, at), m) for m in models)
        right = [(c, m) for c, m in options if item.score[m] >= 0.5]
        costs, model = (right or options)[0]
        tally.add(item, model, costs)
    return tally


def complexity_score(item: Item) -> float:
    """Today's rule as a score of difficulty: the estimated minimum tier, then its number of cues."""
    c = estimate_complexity(TaskRequest(task=item.task, text=item.text))
    return c.min_tier.rank + 0.1 * len(c.cues)


def aucs(learner: PromptLearner, test: list[Item], tiers: dict[str, str], task: str) -> dict[str, dict[str, Any]]:
    """AUC of "the model fails this question" (score < 0.5), from the predictor and from the cues."""
    out = {}
    feats = [learner.predictor.features(i.text) for i in test]
    cues = [complexity_score(i) for i in test]
    for m in sorted(tiers):
        fails = [i.score[m] < 0.5 for i in test]
        if all(fails) or not any(fails):
            continue
        est = [learner.predictor.estimate(task, f, [m]).get(m, 0.5) for f in feats]
        out[m] = {"tier": tiers[m], "predictor": round(auc([1 - p for p in est], fails), 4),
                  "complexity": round(auc(cues, fails), 4)}
    return out


# -- one split ---------------------------------------------------------------------------------------

def run_split(items: list[Item], fleet0: FleetFile, carbon: Series, solar: Series, seed: int,
              cost_share: float, sweep: bool) -> dict[str, Any]:
    fit, val, test = split(items, seed)
    fleet = fleet_for(fleet0, fit)
    costing = Costing(fleet, carbon, solar)
    models = sorted(costing.specs)
    task = items[0].task
    learner = train(fit, models, task)
    # The knob, on validation, for each of sovereign's variants: the largest weight whose $ stays
    # within cost_share of always-cloud's.
    cloud_val = replay("always-cloud", fleet, val, costing, carbon, solar, seed=seed).cost
    knobs = {}
    for variant, with_learner in (("sovereign", learner), ("sovereign-cues", None)):
        knobs[variant] = SWEEP[0]
        for w in SWEEP:
            if replay("sovereign", fleet, val, costing, carbon, solar, with_learner, w, seed).cost \
                    <= cost_share * cloud_val:
                knobs[variant] = w
    results: dict[str, Tally] = {}
    for p in POLICIES:
        if p == "sovereign":
            results[p] = replay(p, fleet, test, costing, carbon, solar, learner, knobs[p], seed)
        elif p == "sovereign-cues":
            results[p] = replay("sovereign", fleet, test, costing, carbon, solar, None, knobs[p], seed)
        else:
            results[p] = replay(p, fleet, test, costing, carbon, solar, seed=seed)
    results["random"] = random_router(test, results["sovereign"].by_model, costing, seed)
    results["oracle"] = oracle(test, models, costing)
    out: dict[str, Any] = {"seed": seed, "fit": len(fit), "validation": len(val), "test": len(test),
                           "weight_quality": knobs,
                           "policies": {p: t.summary(costing.cloud) for p, t in results.items()},
                           "auc": aucs(learner, test, costing.tiers, task)}
    if sweep:
        out["sweep"] = [{"weight_quality": w, **{
            name: t.summary(costing.cloud) for name, t in _sweep_point(fleet, test, costing, carbon, solar, learner,
                                                                        w, seed).items()}} for w in SWEEP]
    return out


def _sweep_point(fleet: FleetFile, test: list[Item], costing: Costing, carbon: Series, solar: Series,
                 learner: PromptLearner, w: float, seed: int) -> dict[str, Tally]:
    sov = replay("sovereign", fleet, test, costing, carbon, solar, learner, w, seed)
    return {"sovereign": sov, "sovereign-cues": replay("sovereign", fleet, test, costing, carbon, solar, None, w, seed),
            "random": random_router(test, sov.by_model, costing, seed)}


def gap_recovered(q: float, low: float, high: float) -> float | None:
    return round(100 * (q - low) / (high - low), 1) if high != low else None


def summarise(splits: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the splits, each figure's spread (max − min), and the targets' checks."""
    names = list(splits[0]["policies"])
    keys = ("quality", "cost", "kwh", "gco2", "cloud_share")
    policies: dict[str, Any] = {}
    for p in names:
        policies[p] = {k: round(statistics.fmean(s["policies"][p][k] for s in splits), 4) for k in keys}
        policies[p]["quality_spread"] = round(max(s["policies"][p]["quality"] for s in splits)
                                              - min(s["policies"][p]["quality"] for s in splits), 2)
    pgr = [gap_recovered(s["policies"]["sovereign"]["quality"], s["policies"]["local-first"]["quality"],
                         s["policies"]["always-cloud"]["quality"]) for s in splits]
    cost_pct = [100 * s["policies"]["sovereign"]["cost"] / s["policies"]["always-cloud"]["cost"] for s in splits]
    margin = [s["policies"]["sovereign"]["quality"] - s["policies"]["random"]["quality"] for s in splits]
    spread = max(policies["sovereign"]["quality_spread"], policies["random"]["quality_spread"])
    auc_models = sorted(splits[0]["auc"])
    auc_summary = {m: {"tier": splits[0]["auc"][m]["tier"],
                       **{k: round(statistics.fmean(s["auc"][m][k] for s in splits if m in s["auc"]), 4)
                          for k in ("predictor", "complexity")}} for m in auc_models}
    for p in policies.values():
        p["gap_recovered"] = gap_recovered(p["quality"], policies["local-first"]["quality"],
                                           policies["always-cloud"]["quality"])
    return {"policies": policies,
            "sovereign_vs_cloud": {"cost_pct": round(statistics.fmean(cost_pct), 2),
                                   "cost_pct_max": round(max(cost_pct), 2),
                                   "gap_recovered_pct": round(statistics.fmean([g for g in pgr if g is not None]), 1),
                                   "gap_recovered_min": min((g for g in pgr if g is not None), default=None)},
            "sovereign_vs_random": {"margin_mean": round(statistics.fmean(margin), 2),
                                    "margin_min": round(min(margin), 2), "spread": round(spread, 2),
                                    "beats_by_more_than_spread": statistics.fmean(margin) > spread},
            "auc": auc_summary,
            # The same by tier, for benchmarks/targets.toml (whose paths split at the dots of "llama-3.1-8b").
            "auc_by_tier": {a["tier"]: a for a in auc_summary.values()}}


def plot(result: dict[str, Any], path: Path, dataset: str, unit: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    first = result["splits"][0]
    cloud_cost = first["policies"]["always-cloud"]["cost"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for name, style in (("sovereign", "o-"), ("sovereign-cues", "s--"), ("random", "^:")):
        pts = sorted((100 * p[name]["cost"] / cloud_cost, p[name]["quality"]) for p in first["sweep"])
        ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=f"{name} (weight_quality swept)", ms=4)
    for name, marker in (("always-cloud", "D"), ("local-first", "v"), ("seed-rules", "P"), ("oracle", "*")):
        p = first["policies"][name]
        ax.plot([100 * p["cost"] / cloud_cost], [p["quality"]], marker, ms=9, label=name)
    ax.axvline(25, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("$ as % of always-cloud's (electricity + cloud API)")
    ax.set_ylabel(f"{unit}, %")
    ax.set_title(f"{dataset}: quality against money, split seed {first['seed']}, {first['test']} test questions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_report(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"{result['dataset']}: {result['questions']} questions, {len(result['splits'])} splits "
             f"(test {result['splits'][0]['test']} each); quality = {result['unit']}; means over splits",
             f"{'policy':15} {'quality %':>9} {'spread':>7} {'$':>9} {'kWh':>8} {'gCO2':>8} {'cloud %':>8} "
             f"{'gap rec. %':>10}"]
    for name, p in s["policies"].items():
        lines.append(f"{name:15} {p['quality']:9.2f} {p['quality_spread']:7.2f} {p['cost']:9.4f} {p['kwh']:8.4f} "
                     f"{p['gco2']:8.2f} {p['cloud_share']:8.2f} {p['gap_recovered'] if p['gap_recovered'] is not None else '-':>10}")
    v, r = s["sovereign_vs_cloud"], s["sovereign_vs_random"]
    lines.append(f"sovereign: $ {v['cost_pct']} % of always-cloud's (worst split {v['cost_pct_max']} %), "
                 f"gap recovered {v['gap_recovered_pct']} % (worst split {v['gap_recovered_min']} %)")
    lines.append(f"sovereign − random (same model shares): {r['margin_mean']} points (worst split "
                 f"{r['margin_min']}); spread over splits {r['spread']}")
    lines.append("knob per split (weight_quality, sovereign / sovereign-cues): "
                 + ", ".join(f"{x['weight_quality']['sovereign']:g} / {x['weight_quality']['sovereign-cues']:g}"
                             for x in result["splits"]))
    for m, a in s["auc"].items():
        lines.append(f"AUC of '{m} fails': predictor {a['predictor']:.3f}, complexity estimator {a['complexity']:.3f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="mmlu-pro")
    ap.add_argument("--table", type=Path, help="another outcomes table of the same format (benchmarks/data/README.md)")
    ap.add_argument("--fleet", type=Path, help="another fleet file whose models the table scores")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--cost-share", type=float, default=0.25,
                    help="sovereign's knob is set so that its $ stays within this share of always-cloud's (0.25)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N questions (a quick look)")
    ap.add_argument("--plot", type=Path, help="write the cost-quality curve of the first split (PNG)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    table, fleet_file, unit = DATASETS[args.dataset]
    t0 = time.perf_counter()
    try:
        items = load_items(args.table or DATA / table)
        fleet = load_fleet(args.fleet or DATA / fleet_file)
        unscored = sorted({m.name for d in fleet.devices for m in d.models} - set(items[0].score))
        if unscored:
            raise DataError(f"{args.table or DATA / table}: no outcomes of the fleet's {', '.join(unscored)}")
        missing = next((i for i in items if set(i.score) != set(items[0].score)), None)
        if missing is not None:
            raise DataError(f"{args.table or DATA / table}: {missing.id} scores {sorted(missing.score)}, "
                            f"the first question {sorted(items[0].score)}: every question needs the same models")
    except (DataError, SimInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        items = sorted(items, key=lambda i: i.id)[:args.limit]
    carbon = Series.load(GRID / "gb_ci_2020.csv", "Carbon Intensity")
    solar = Series.load(GRID / "gb_solar_2020.csv", "Solar MW")
    splits = [run_split(items, fleet, carbon, solar, seed, args.cost_share, sweep=seed == 1 and bool(args.plot))
              for seed in range(1, args.splits + 1)]
    result = {"dataset": args.dataset, "unit": unit, "questions": len(items), "cost_share_target": args.cost_share,
              "splits": splits, "summary": summarise(splits), "seconds": round(time.perf_counter() - t0, 1)}
    result["policies"] = result["summary"]["policies"]  # the shape: {"policies": {name: {...}}}
    if args.plot:
        plot(result, args.plot, args.dataset, unit)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
