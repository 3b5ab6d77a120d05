"""Learning per prompt, live: what the router does with the predictor's estimates, the outcomes
the dispatcher learns from (an answer's confidence, a confidence below the floor), a person's
thumbs up or down over HTTP with its refusals, and the learned state across a restart."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.capability import LatencyMs, ModelSpec, Tier
from hub.config import DispatchConfig
from hub.dispatch import Dispatcher
from hub.energy.series import Series
from hub.router.cache import CacheConfig, ResultCache
from hub.router.learner import FeedbackError, PromptLearner
from hub.router.ledger import Ledger
from hub.router.model import DeviceView, FleetSnapshot, TaskRequest
from hub.router.predict import PredictorConfig
from hub.router.request import InferRequest
from hub.router.route import RouterConfig, route
from hub.router.rules import RuleBook, RulesConfig
from hub.router.stats import LearningConfig, StatsStore
from hub.rpc import RpcResponse
from hub.sim.devices import SimHome
from hub.sim.files import FleetFile
from hub.sim.loop import LoopClock, run_virtual

from .test_dispatch import fleet
from .test_http_cli import _cli

HARD = "Step by step, prove that the integral of the derivative over the interval equals the difference of the values."
EASY = "What is the capital of France?"
#: Hard for the small model, though nothing in it is a cue of the complexity estimator.
OBSCURE = "Which treaty ended the War of the Spanish Succession, and who signed it?"


def device(id_: str, tier: Tier, model: str, quality: float, p50: float) -> DeviceView:
    spec = ModelSpec(name=model, runtime="llamacpp", tasks=["qa"], latency_ms=LatencyMs(p50=p50, p95=p50 * 2),
                     energy_j_per_call=1.0, quality=quality)
    return DeviceView(id=id_, tier=tier, models=(spec,), power_source="mains", battery_pct=None,
                      battery_floor_pct=20, charging=None, active_w=10, idle_w=1, active_tasks=0,
                      energy_mode="prefer_local", marginal_g_per_kwh=200, marginal_price_per_kwh=0.3)


def two_tiers() -> FleetSnapshot:
    return FleetSnapshot(0.0, (device("laptop", Tier.small, "small-lm", 0.60, 800),
                               device("gpu-box", Tier.medium, "big-lm", 0.80, 1500)))


def test_the_router_scores_each_model_on_its_chance_for_this_prompt() -> None:
    cfg = RouterConfig(weight_quality=20)
    req = TaskRequest(task="qa", text=HARD, budget_ms=10_000)
    cues = route(req, two_tiers(), cfg)
    assert "maths" in cues.reasons[0] and cues.chosen is not None and cues.chosen.model == "big-lm"
    assert any("below the task's minimum" in x.reason for x in cues.excluded), "the cues exclude the small tier"
    # The predictor has learned that the small model answers this kind of question well: no
    # tier is excluded by cues, and the cheaper model wins on its own chance.
    learned = route(req, two_tiers(), cfg, predicted={"small-lm": 0.95, "big-lm": 0.97})
    assert learned.chosen is not None and learned.chosen.model == "small-lm"
    assert learned.chosen.quality == 0.95 and not learned.excluded
    assert "per-prompt predictor" in " ".join(learned.reasons) and "small-lm 0.95" in " ".join(learned.reasons)
    assert "for this request (the model's 0.60 in general)" in " ".join(learned.chosen.reasons)
    # … and that it fails at it: the larger model, as the cues said, now from the prediction.
    doubt = route(req, two_tiers(), cfg, predicted={"small-lm": 0.10, "big-lm": 0.90})
    assert doubt.chosen is not None and doubt.chosen.model == "big-lm"
    # The rule-based policies are baselines: they keep their rules.
    rules = route(req, two_tiers(), RouterConfig(policy="local-first"), predicted={"small-lm": 0.95})
    assert any("below the task's minimum" in x.reason for x in rules.excluded)
    assert "per-prompt" not in " ".join(rules.reasons)
    # A model the predictor does not name keeps its announced quality.
    partial = route(req, two_tiers(), cfg, predicted={"small-lm": 0.10})
    assert [c.quality for c in partial.chain if c.model == "big-lm"] == [0.80]


def test_feedback_is_an_outcome_once_per_answer() -> None:
    cfg = PredictorConfig(min_samples=2, remember_requests=3, feedback_within_s=100)
    learner = PromptLearner(cfg)
    assert learner.estimate("intent", "lights off") is None, "not a task the predictor learns"
    assert learner.estimate("qa", None) is None
    est = learner.estimate("qa", HARD)
    assert est is not None and est.quality == {}, "cold start: no estimate, the router falls back"
    learner.answered("r1", "qa", "small-lm", est, at=10.0)
    doc = learner.feedback("r1", "down", now=20.0)
    assert doc == {"id": "r1", "rating": "down", "task": "qa", "model": "small-lm", "outcomes": 1, "min_samples": 2}
    with pytest.raises(FeedbackError) as again:
        learner.feedback("r1", "up", now=21.0)
    assert again.value.status == 409 and "already rated 'down'" in again.value.message
    with pytest.raises(FeedbackError) as unknown:
        learner.feedback("nope", "up", now=21.0)
    assert unknown.value.status == 404 and unknown.value.code == "unknown_request"
    learner.answered("old", "qa", "small-lm", est, at=0.0)
    with pytest.raises(FeedbackError):
        learner.feedback("old", "up", now=101.0)  # past feedback_within_s
    for i in range(4):
        learner.answered(f"n{i}", "qa", "small-lm", est, at=50.0)
    with pytest.raises(FeedbackError):
        learner.feedback("n0", "up", now=60.0)  # pushed out: only the last 3 are remembered
    learner.feedback("n3", "down", now=60.0)
    after = learner.estimate("qa", HARD)
    assert after is not None and after.quality["small-lm"] < 0.5, "two thumbs down: this model fails this"
    assert learner.status()["feedback"] == {"up": 0, "down": 2}


def test_the_learned_state_survives_a_restart_and_a_bad_one_is_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "predictor.sqlite3"
    learner = PromptLearner(PredictorConfig(min_samples=1), db)
    est = learner.estimate("qa", EASY)
    assert est is not None
    learner.learn("qa", "small-lm", est.features, 1.0)
    before = learner.estimate("qa", EASY)
    learner.close()
    again = PromptLearner(PredictorConfig(min_samples=1), db)
    assert again.estimate("qa", EASY) == before
    again.close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE predictor SET state = ?", (json.dumps({"version": 99}),))
    broken = PromptLearner(PredictorConfig(min_samples=1), db)
    assert broken.counts["state_rejected"] == 1
    assert broken.estimate("qa", EASY).quality == {}, "starts again from nothing"  # type: ignore[union-attr]
    broken.close()
    with sqlite3.connect(db) as c:
        [(reason, kept)] = c.execute("SELECT reason, state FROM predictor_rejected").fetchall()
    assert "version" in reason and json.loads(kept) == {"version": 99}, "set aside, not lost"


class ConfidentHome(SimHome):
    """The simulated home's devices, each answer with a confidence: high for easy questions."""

    async def call(self, device_id: str, method: str, params: dict[str, Any], timeout_s: float,
                   request_id: str | None = None, on_chunk: Any = None) -> RpcResponse:
        resp = await super().call(device_id, method, params, timeout_s, request_id, on_chunk)
        if resp.ok and resp.result is not None:
            easy = "capital" in str(params.get("text"))
            resp.result["confidence"] = 0.9 if easy or params["model"] == "big-lm" else 0.2
        return resp


def test_the_dispatcher_learns_from_confidence_and_escalations() -> None:
    fleet_file = FleetFile.model_validate({"devices": [
        {"id": "laptop", "tier": "small", "power_source": "mains", "idle_w": 1, "active_w": 10,
         "models": [{"name": "small-lm", "runtime": "llamacpp", "tasks": ["qa"], "p50_ms": 500, "p95_ms": 900,
                     "joules": 5, "quality": 0.7}]},
        {"id": "gpu-box", "tier": "medium", "power_source": "mains", "idle_w": 1, "active_w": 100,
         "models": [{"name": "big-lm", "runtime": "llamacpp", "tasks": ["qa"], "p50_ms": 900, "p95_ms": 1500,
                     "joules": 50, "quality": 0.8}]}]})
    series = Series([0.0, 1e10], [200.0, 200.0], 0)

    async def run() -> tuple[PromptLearner, list[Any]]:
        clock = LoopClock(1_000_000.0)
        home = ConfidentHome(fleet_file, series, None, clock, random.Random(1))
        learner = PromptLearner(PredictorConfig(min_samples=4))
        d = Dispatcher(DispatchConfig(), RouterConfig(), fleet=home.fleet_view, energy=home.energy,
                       stats=StatsStore(LearningConfig()), cache=ResultCache(CacheConfig(enabled=False), None),
                       rules=RuleBook(RulesConfig(enabled=False), None), ledger=Ledger(None), rpc=home, clock=clock,
                       known_device=home.known, learner=learner)
        home.set_inputs(clock.time())
        home.step(0.0)
        outs = []
        for i in range(6):
            # A floor of 0.5: the small model's 0.2 on a hard question is refused and escalated.
            outs.append(await d.infer(InferRequest(id=f"h{i}", task="qa", text=f"{OBSCURE} ({i})", quality_floor=0.5,
                                                   budget_ms=10_000)))
            outs.append(await d.infer(InferRequest(id=f"e{i}", task="qa", text=f"{EASY} ({i})", budget_ms=10_000)))
        return learner, outs

    learner, outs = run_virtual(run())
    first_hard = outs[0]
    assert first_hard.ok and first_hard.served_by["model"] == "big-lm"
    assert [a.model for a in first_hard.attempts] == ["small-lm", "big-lm"], "refused for its confidence, escalated"
    est = learner.estimate("qa", f"{OBSCURE} (9)")
    assert est is not None and est.quality["small-lm"] < 0.5 < est.quality["big-lm"]
    easy = learner.estimate("qa", f"{EASY} (9)")
    assert easy is not None and easy.quality["small-lm"] > max(0.5, est.quality["small-lm"] + 0.2)
    last_hard = outs[-2]
    assert [a.model for a in last_hard.attempts] == ["big-lm"], "learned: the hard question skips the small model"
    assert any("per-prompt predictor" in r for r in last_hard.reasons)


async def test_feedback_over_http_and_its_refusals(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"},
                        router={"predictor": {"min_samples": 2}}) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ("--seed", "1")))
        token = hub.new_admin_token
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as s:
            async def call(method: str, path: str, **kw: Any) -> tuple[int, Any]:
                async with s.request(method, hub.http_url + path, **kw) as r:
                    return r.status, await r.json(content_type=None)

            ids = []
            for i in range(2):
                status, out = await call("POST", "/api/infer", json={"task": "qa", "text": f"{EASY} {i}",
                                                                     "budget_ms": 8000}, headers=auth)
                assert status == 200 and out["ok"], out
                ids.append(out["id"])
            model = out["served_by"]["model"]
            # Refusals: no token, another origin, bad bodies, unknown and malformed ids.
            status, err = await call("POST", f"/api/feedback/{ids[0]}", json={"rating": "down"})
            assert status == 401 and err["error"]["code"] == "unauthorized"
            status, err = await call("POST", f"/api/feedback/{ids[0]}", json={"rating": "down"},
                                     headers={**auth, "Origin": "http://evil.example"})
            assert status == 403 and err["error"]["code"] == "cross_origin"
            for body in ({"rating": "meh"}, {"rating": "down", "extra": 1}, [], {"good": False}):
                status, err = await call("POST", f"/api/feedback/{ids[0]}", json=body, headers=auth)
                assert status == 400 and "expected" in err["error"]["message"], body
            status, err = await call("POST", f"/api/feedback/{ids[0]}", data="{not json",
                                     headers={**auth, "Content-Type": "application/json"})
            assert status == 400 and "not JSON" in err["error"]["message"]
            status, err = await call("POST", "/api/feedback/never-asked", json={"rating": "up"}, headers=auth)
            assert status == 404 and err["error"]["code"] == "unknown_request"
            status, err = await call("POST", "/api/feedback/" + "x" * 129, json={"rating": "up"}, headers=auth)
            assert status == 400 and err["error"]["code"] == "bad_id"
            assert hub.learner.status()["feedback"] == {"up": 0, "down": 0}, "no refused request taught anything"
            # Accepted: an outcome for the model that answered, once.
            for rid in ids:
                status, doc = await call("POST", f"/api/feedback/{rid}", json={"rating": "down"}, headers=auth)
                assert status == 200 and doc["model"] == model and doc["task"] == "qa", doc
            status, err = await call("POST", f"/api/feedback/{ids[0]}", json={"rating": "up"}, headers=auth)
            assert status == 409 and err["error"]["code"] == "already_rated"
            status, doc = await call("GET", "/api/feedback")
            assert status == 200 and doc["feedback"] == {"up": 0, "down": 2} and doc["outcomes"]["qa"][model] == 2
            # The same from the command line: a rating needs the token, the summary does not.
            out = await asyncio.to_thread(_cli, "feedback", ids[1], "up", "--url", hub.http_url)
            assert out.returncode == 1 and "SOVEREIGN_TOKEN" in out.stderr
            out = await asyncio.to_thread(_cli, "feedback", ids[1], "up", "--url", hub.http_url,
                                          env={**os.environ, "SOVEREIGN_TOKEN": token})
            assert out.returncode == 1 and "already rated 'down'" in out.stderr, out.stderr
            out = await asyncio.to_thread(_cli, "feedback", "--url", hub.http_url)
            assert out.returncode == 0 and f"qa         {model}" in out.stdout and "2 down" in out.stdout, out.stdout
            # Two outcomes are this hub's min_samples: the dry run now uses the prediction.
            status, dec = await call("POST", "/api/route", json={"task": "qa", "text": f"{EASY} 3"}, headers=auth)
            assert status == 200 and any("per-prompt predictor" in r and model in r for r in dec["reasons"]), dec
