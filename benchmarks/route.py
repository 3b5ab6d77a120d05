"""Router decision latency: ``route()`` on fleets of 100 and 1,000 devices.

    .venv/bin/python benchmarks/route.py [--rounds 2000] [--json]

The fleet mixes the agent profiles (watch, phone, laptop, GPU box) plus one cloud device; the
request mix is an intent, a summary and a code question. Measured without outcomes (a new hub)
and with 20 learned outcomes for every candidate plus a new one before each decision, the stats
snapshot included (a hub that has run a while, under load). Baseline in the same run: building
the request alone (validation), which every path pays anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary  # noqa: E402

from hub.agent.profiles import PROFILES  # noqa: E402
from hub.capability import LatencyMs, ModelSpec, Tier  # noqa: E402
from hub.router.learner import PromptLearner  # noqa: E402
from hub.router.model import DeviceView, FleetSnapshot, TaskRequest  # noqa: E402
from hub.router.predict import PredictorConfig  # noqa: E402
from hub.router.route import CloudPrice, RouterConfig, route  # noqa: E402
from hub.router.stats import LearningConfig, Outcome, StatsStore  # noqa: E402

PROFILE_NAMES = ("watch", "phone", "laptop", "gpu-box")


def make_fleet(n: int) -> FleetSnapshot:
    devices = []
    for i in range(n - 1):
        p = PROFILES[PROFILE_NAMES[i % 4]]
        devices.append(DeviceView(id=f"d{i}", tier=p.tier, models=p.models, power_source=p.power.source.value,
                                  battery_pct=None if p.power.battery_pct is None else 20 + (i * 7) % 80,
                                  battery_floor_pct=p.power.battery_floor_pct, charging=False,
                                  active_w=p.power.active_w, idle_w=p.power.idle_w, active_tasks=i % 3,
                                  energy_mode="prefer_local", marginal_g_per_kwh=150 + i % 100,
                                  marginal_price_per_kwh=0.25))
    cloud = ModelSpec(name="claude-haiku", runtime="cloud", tasks=["summarize", "qa", "code", "intent"],
                      latency_ms=LatencyMs(p50=800, p95=2000), quality=0.95, max_concurrency=64)
    devices.append(DeviceView(id="cloud", tier=Tier.large, models=(cloud,), power_source="mains", battery_pct=None,
                              battery_floor_pct=0, charging=None, active_w=None, idle_w=None))
    return FleetSnapshot(time.time(), tuple(devices))


REQUESTS = [
    {"task": "intent", "text": "schedule a meeting with Ana tomorrow at ten"},
    {"task": "summarize", "text": "Notes from the planning meeting. " * 20},
    {"task": "qa", "text": "```python\ndef f(x):\n    return x * 2\n```\nwhy is this slow? step by step"},
]


def learned(fleet: FleetSnapshot) -> StatsStore:
    """What a hub that has been running a while knows: 20 outcomes for every candidate."""
    store = StatsStore(LearningConfig())
    for task, entries in fleet.by_task.items():
        for e in entries:
            for i in range(20):
                store.record(Outcome("r", e.device.id, e.model.name, task, e.tier.value, i != 7, 100.0 + i,
                                     fleet.now - 60, quality=0.9 if i % 2 else None))
    return store


def trained_learner(fleet: FleetSnapshot) -> PromptLearner:
    """A predictor past its cold start for every model of every task it learns."""
    learner = PromptLearner(PredictorConfig())
    texts = [r["text"] for r in REQUESTS] + ["what is the capital of France?", "prove the theorem step by step"]
    for task, entries in fleet.by_task.items():
        if task not in learner.cfg.tasks:
            continue
        for name in {e.model.name for e in entries}:
            for i in range(learner.cfg.min_samples):
                text = texts[i % len(texts)]
                learner.learn(task, name, learner.predictor.features(f"{text} {i}"), float(i % 3 != 0))
    return learner


def bench(n: int, rounds: int, cfg: RouterConfig) -> dict[str, object]:
    fleet = make_fleet(n)
    reqs = [TaskRequest.model_validate(r) for r in REQUESTS]
    # A running hub: an outcome arrives between decisions, and each decision takes the stats
    # snapshot that follows it (the live path calls snapshot() per request), so that is timed too.
    store = learned(fleet)
    keys = [(e.device.id, e.model.name, task, e.tier.value) for task, es in fleet.by_task.items() for e in es]
    with_stats = []
    for i in range(rounds):
        device, model, task, tier = keys[(i * 7919) % len(keys)]
        store.record(Outcome("r", device, model, task, tier, True, 100.0 + i % 13, fleet.now - 1))
        t0 = time.perf_counter()
        route(reqs[i % 3], fleet, cfg, store.snapshot())
        with_stats.append(time.perf_counter() - t0)
    decide, validate, explained = [], [], []
    for i in range(rounds):
        body = REQUESTS[i % 3]
        t0 = time.perf_counter()
        req = TaskRequest.model_validate(body)
        t1 = time.perf_counter()
        route(reqs[i % 3], fleet, cfg)
        t2 = time.perf_counter()
        # What a dry run (/api/route, `sovereign route`) pays on top: every candidate's reasons.
        for c in route(reqs[i % 3], fleet, cfg).chain:
            c.reasons
        t3 = time.perf_counter()
        validate.append(t1 - t0)
        decide.append(t2 - t1)
        explained.append(t3 - t2)
    # The per-prompt predictor on (every model of the text tasks trained): its features once per
    # request (the fleet's embedder's place), then the estimates and the decision, timed apart.
    learner = trained_learner(fleet)
    featurize, predicted = [], []
    for i in range(rounds):
        req = reqs[i % 3]
        t0 = time.perf_counter()
        feats = learner.predictor.features(req.text or "") if learner.applies(req.task, req.text) else None
        t1 = time.perf_counter()
        est = learner.predictor.estimate(req.task, feats) if feats is not None else None
        route(req, fleet, cfg, None, est)
        t2 = time.perf_counter()
        featurize.append(t1 - t0)
        predicted.append(t2 - t1)
    build = []
    for _ in range(20):
        t0 = time.perf_counter()
        make_fleet(n)
        build.append(time.perf_counter() - t0)
    _ = req
    return {"devices": n, "rounds": rounds, "route_s": summary(decide), "route_and_reasons_s": summary(explained),
            "route_with_learned_stats_s": summary(with_stats),
            "route_with_predictor_s": summary(predicted), "predictor_features_s": summary(featurize),
            "validate_request_s": summary(validate),
            "fleet_snapshot_build_s": summary(build)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"$ python benchmarks/route.py {' '.join(sys.argv[1:])}", file=sys.stderr)
    cfg = RouterConfig(cloud_prices={"*": CloudPrice(input_per_mtok=1.0, output_per_mtok=5.0)})
    figures = {str(n): bench(n, args.rounds if n <= 100 else max(200, args.rounds // 10), cfg) for n in (10, 100, 1000)}
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        print()
        return
    for n, f in figures.items():
        r, x, ls, v, b = (f[k] for k in ("route_s", "route_and_reasons_s",  # type: ignore[index]
                                         "route_with_learned_stats_s", "validate_request_s", "fleet_snapshot_build_s"))
        print(f"{n:>5} devices: route p50 {r['p50'] * 1e6:6.0f} µs  p95 {r['p95'] * 1e6:6.0f} µs   "
              f"learned (+ snapshot) p50 {ls['p50'] * 1e6:.0f} µs  p95 {ls['p95'] * 1e6:.0f} µs   "
              f"with every candidate's reasons p50 {x['p50'] * 1e6:.0f} µs")
        pr, fe = f["route_with_predictor_s"], f["predictor_features_s"]  # type: ignore[index]
        print(f"{'':>14}with the per-prompt predictor: estimates + route p50 {pr['p50'] * 1e6:.0f} µs  "
              f"p95 {pr['p95'] * 1e6:.0f} µs; the request's features, once, p50 {fe['p50'] * 1e6:.0f} µs")
        print(f"{'':>14}(request validation alone p50 {v['p50'] * 1e6:.0f} µs; fleet snapshot + index build "
              f"p50 {b['p50'] * 1e6:.0f} µs, once per fleet or energy change)")
    print("targets: p50 <= 100 µs at 100 devices, <= 1 ms at 1,000 devices; with the predictor <= 150 µs at 100")


if __name__ == "__main__":
    main()
