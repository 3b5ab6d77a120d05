"""Running a routed task: the hub's dispatcher.

``Dispatcher.infer`` takes a validated :class:`InferRequest`, answers it from an approved
compiled pattern or the cache when it can, otherwise routes it (the pure router) and sends it to
the first candidate over MQTT RPC, escalating along the decision's chain on a timeout, an error
or a confidence below the request's quality floor. Consensus requests fan out to the plan's
members in parallel and aggregate. Every attempt becomes an outcome for the router's stats and
a ledger entry; every success is offered to the cache and to the compiled-pattern detector.
Deferrable requests (with a deadline) wait for the window the energy forecast picks; they are
written down while they wait (hub/deferred.py) and resumed after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from .config import DispatchConfig
from .deferred import DeferredStore, ReplyRoute
from .router.ledger import LedgerEntry
from .router.model import Candidate, RouteDecision, TaskRequest
from .router.plan import plan_consensus, plan_deferral
from .router.route import cloud_counterfactual, route
from .router.stats import Outcome
from .rpc import MAX_TIMEOUT_MS
from .live import TaskCompleted
from .rpc_client import OnChunk

if TYPE_CHECKING:
    from .runtime import Hub

log = logging.getLogger(__name__)


class InferRequest(TaskRequest):
    """What a client sends to run a task (``POST /api/infer``, ``<root>/cmd/infer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stream: bool = Field(default=False, description="Stream text as it is generated")
    options: dict[str, Any] = Field(default_factory=dict, description="max_tokens, temperature, system")
    timeout_ms: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_MS, description="Hard limit for the whole request")


@dataclass
class Attempt:
    device_id: str
    model: str
    tier: str
    ok: bool
    latency_ms: float
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device_id, "model": self.model, "tier": self.tier, "ok": self.ok,
                "latency_ms": round(self.latency_ms, 3), **({"error": self.error} if self.error else {})}


@dataclass
class InferOutcome:
    id: str
    task: str
    ok: bool
    output: Any = None
    served_by: dict[str, str] | None = None  # device, model, layer
    confidence: float | None = None
    latency_ms: float = 0.0
    joules: float = 0.0
    gco2: float = 0.0
    cost: float = 0.0
    cached: bool = False
    simulated: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    error: dict[str, str] | None = None
    reasons: list[str] = field(default_factory=list)
    deferred_s: float = 0.0
    votes: dict[str, int] | None = None
    hub: str = ""  # which hub answered (several may share a fleet)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "hub": self.hub, "task": self.task, "ok": self.ok, "output": self.output,
                               "served_by": self.served_by, "confidence": self.confidence,
                               "latency_ms": round(self.latency_ms, 3), "joules": round(self.joules, 6),
                               "gco2": round(self.gco2, 9), "cost": round(self.cost, 9), "cached": self.cached,
                               "attempts": [a.to_dict() for a in self.attempts], "reasons": self.reasons}
        if self.simulated:
            doc["simulated"] = True
        if self.error:
            doc["error"] = self.error
        if self.deferred_s:
            doc["deferred_s"] = round(self.deferred_s, 3)
        if self.votes is not None:
            doc["votes"] = self.votes
        return doc


class RequestError(ValueError):
    """A request the hub refuses before routing (too large, unknown device...)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Dispatcher:
    def __init__(self, hub: "Hub", cfg: DispatchConfig, store: DeferredStore) -> None:
        self.hub = hub
        self.cfg = cfg
        self.store = store
        self.deferred: dict[str, float] = {}  # request id -> run at
        self._written: set[str] = set()  # ids this process deferred: their outcomes go to the store
        self.counts: collections.Counter[str] = collections.Counter()

    def check(self, req: InferRequest) -> None:
        size = len(req.text.encode()) if req.text is not None else (len(req.data) * 3 // 4 if req.data else 0)
        if size > self.cfg.max_input_bytes:
            raise RequestError("too_large", f"input of {size} bytes exceeds the limit of {self.cfg.max_input_bytes}"
                                            " (dispatch.max_input_bytes)", 413)
        if req.requester is not None and self.hub.registry.get(req.requester) is None:
            raise RequestError("unknown_device", f"requester {req.requester!r} is not a known device")

    async def infer(self, req: InferRequest, emit: OnChunk | None = None,
                    reply: ReplyRoute | None = None) -> InferOutcome:
        """Run a request. ``reply`` is where an MQTT command's answer goes: kept with the request
        if it is deferred, so that a restarted hub can still answer it."""
        self.check(req)
        if not req.id:
            req = req.model_copy(update={"id": uuid.uuid4().hex[:16]})
        started = time.perf_counter()
        timeout_s = (req.timeout_ms or self.cfg.default_timeout_ms) / 1000
        if req.deadline is not None and req.timeout_ms is None:
            # Deferrable work may wait for its window: the deadline bounds it, not the default.
            timeout_s = max(timeout_s, req.deadline - time.time())
        self.counts["requests"] += 1
        try:
            async with asyncio.timeout(timeout_s):
                out = await self._infer(req, emit, started, reply)
        except TimeoutError:
            out = InferOutcome(req.id, req.task, False, error={"code": "timeout",
                               "message": f"no answer within the request's {timeout_s * 1000:.0f} ms"})
        out.latency_ms = (time.perf_counter() - started) * 1000 - out.deferred_s * 1000
        out.hub = self.hub.config.hub_id
        if req.id in self._written:  # a cancellation (hub stop) leaves it waiting for the next start
            self._written.discard(req.id)
            await asyncio.to_thread(self.store.finish, req.id, out.to_dict())
        self.counts["ok" if out.ok else "failed"] += 1
        self._publish(out)
        log.info("task %s %s: %s via %s in %.1f ms", req.id, req.task, "ok" if out.ok else out.error,
                 out.served_by, out.latency_ms)
        return out

    def _publish(self, out: InferOutcome) -> None:
        """To the live feed, and the figures Grafana charts into the history."""
        hub = self.hub
        if hub.live.clients:
            hub.bus.publish(TaskCompleted(out.to_dict()))
        layer = (out.served_by or {}).get("layer", "failed")
        now = time.time()
        hub.record(f"route.{layer}.latency_ms", now, out.latency_ms)
        hub.record(f"route.{layer}.cost", now, out.cost)
        hub.record(f"route.{layer}.gco2", now, out.gco2)
        hub.record(f"route.{layer}.joules", now, out.joules)

    async def _infer(self, req: InferRequest, emit: OnChunk | None, started: float,
                     reply: ReplyRoute | None) -> InferOutcome:
        hub = self.hub
        rule = hub.rules.match(req)
        if rule is not None:
            self._ledger(req, "hub", f"rule:{rule.id}", "rule", True, 0.0, 0.0, 0.0, 0.0)
            return InferOutcome(req.id, req.task, True, rule.answer, {"device": "hub", "model": f"rule:{rule.id}",
                                "layer": "code"}, 1.0, reasons=[f"approved compiled pattern {rule.id}"])
        decision = route(req, hub.fleet(), hub.config.router, hub.stats.snapshot())
        deferred_s = 0.0
        if req.deadline is not None and len(self.deferred) < self.cfg.max_deferred:
            plan = plan_deferral(req, decision, hub.energy_snapshot())
            if plan.run_at > time.time() + 1:
                deferred_s = await self._wait_until(req, plan.run_at, reply)
                decision = route(req, hub.fleet(), hub.config.router, hub.stats.snapshot())
        reasons = list(decision.reasons)
        if decision.chosen is None:
            return InferOutcome(req.id, req.task, False, error={"code": "no_route", "message": reasons[-1]},
                                reasons=reasons + [f"{e.device_id}/{e.model}: {e.reason}" for e in decision.excluded],
                                deferred_s=deferred_s)
        cached = hub.cache.get(req, decision.chosen.tier.value)
        if cached is not None:
            self._ledger(req, "cache", cached.get("model", ""), "cache", True, 0.0, 0.0, 0.0, 0.0)
            # A hot question answered again counts toward a compiled pattern, cached or not.
            hub.rules.observe(req, cached.get("output"))
            return InferOutcome(req.id, req.task, True, cached.get("output"), {"device": "cache",
                                "model": cached.get("model", ""), "layer": "cache"}, cached.get("confidence"),
                                cached=True, reasons=reasons + ["answered from the cache"], deferred_s=deferred_s)
        if req.mode == "consensus":
            out = await self._consensus(req, decision, reasons)
        else:
            out = await self._chain(req, decision, emit, reasons)
        out.deferred_s = deferred_s
        if out.ok and out.served_by is not None:
            hub.cache.put(req, decision.chosen.tier.value, {"output": out.output, "model": out.served_by["model"],
                                                            "confidence": out.confidence})
            proposed = hub.rules.observe(req, out.output)
            if proposed is not None:
                log.info("compiled pattern proposed: %s", proposed.id)
        return out

    async def _wait_until(self, req: InferRequest, run_at: float, reply: ReplyRoute | None) -> float:
        await asyncio.to_thread(self.store.add, req, run_at, reply)
        self._written.add(req.id)
        self.deferred[req.id] = run_at
        began = time.time()
        try:
            await asyncio.sleep(max(0.0, run_at - began))
        finally:
            self.deferred.pop(req.id, None)
        return time.time() - began

    async def _chain(self, req: InferRequest, decision: RouteDecision, emit: OnChunk | None,
                     reasons: list[str]) -> InferOutcome:
        out = InferOutcome(req.id, req.task, False, reasons=reasons)
        streamed = False

        async def forward(chunk: str) -> None:
            nonlocal streamed
            streamed = True
            assert emit is not None
            await emit(chunk)

        for cand in decision.chain[:self.cfg.max_attempts]:
            answer, attempt = await self._attempt(req, cand, forward if emit else None)
            out.attempts.append(attempt)
            if answer is not None:
                conf = answer.get("confidence")
                if conf is not None and conf < req.quality_floor:
                    attempt.ok, attempt.error = False, f"confidence {conf:.2f} below the floor {req.quality_floor:.2f}"
                    out.reasons.append(f"{cand.device_id}/{cand.model}: {attempt.error}: escalating")
                    continue
                out.ok, out.output, out.confidence = True, answer.get("output"), conf
                out.served_by = {"device": cand.device_id, "model": cand.model, "layer": cand.tier.value}
                out.simulated = bool(answer.get("simulated"))
                self._account(out, cand, answer)
                if len(out.attempts) > 1:
                    out.reasons.append(f"escalated after {len(out.attempts) - 1} failed attempt(s)")
                return out
            out.reasons.append(f"{cand.device_id}/{cand.model} failed: {attempt.error}")
            if streamed:
                break  # the client has part of an answer: a second one would be spliced onto it
        out.error = {"code": "failed", "message": "; ".join(a.error for a in out.attempts) or "no attempt"}
        return out

    async def _attempt(self, req: InferRequest, cand: Candidate,
                       emit: OnChunk | None) -> tuple[dict[str, Any] | None, Attempt]:
        hub = self.hub
        timeout_s = max(self.cfg.min_attempt_ms, cand.p95_ms * self.cfg.attempt_timeout_factor) / 1000
        params: dict[str, Any] = {"task": req.task, "model": cand.model, "options": req.options,
                                  "stream": emit is not None, "timeout_ms": timeout_s * 1000}
        for key in ("text", "data", "ref"):
            if getattr(req, key) is not None:
                params[key] = getattr(req, key)
        t0 = time.perf_counter()
        resp = await hub.rpc.call(cand.device_id, "infer", params, timeout_s + 0.02, request_id=req.id, on_chunk=emit)
        ms = (time.perf_counter() - t0) * 1000
        ok = resp.ok and resp.result is not None
        error = "" if ok else f"{resp.error.code}: {resp.error.message}" if resp.error else "no result"
        conf = resp.result.get("confidence") if ok and resp.result else None
        hub.stats.record(Outcome(req.id, cand.device_id, cand.model, req.task, cand.tier.value, ok, ms, time.time(),
                                 error, conf))
        answer = resp.result if ok else None
        joules = _joules(cand, answer) if answer else 0.0
        self._ledger(req, cand.device_id, cand.model, cand.tier.value, ok, ms, joules, _gco2(cand, joules),
                     cand.cost if ok else 0.0)
        return answer, Attempt(cand.device_id, cand.model, cand.tier.value, ok, ms, error)

    def _account(self, out: InferOutcome, cand: Candidate, answer: dict[str, Any]) -> None:
        joules = _joules(cand, answer)
        out.joules += joules
        out.gco2 += _gco2(cand, joules)
        out.cost += cand.cost

    def _ledger(self, req: TaskRequest, device: str, model: str, layer: str, ok: bool, ms: float, joules: float,
                gco2: float, cost: float) -> None:
        cloud_cost, cloud_g = cloud_counterfactual(req, self.hub.config.router)
        self.hub.ledger.add(LedgerEntry(req.id, time.time(), req.task, device, model, layer, ok, ms, joules, gco2,
                                        cost, cloud_cost, cloud_g))

    async def _judge(self, req: InferRequest, decision: RouteDecision,
                     answers: list[tuple[Candidate, dict[str, Any]]], out: InferOutcome) -> int | None:
        """Ask the chain's large-tier model which answer is best; None when it cannot say."""
        judge = next((c for c in decision.chain if c.tier.value == "large"), None)
        if judge is None or len(answers) < 2:
            return None
        listing = "\n".join(f"{i + 1}) {str(a.get('output'))[:2000]}" for i, (_, a) in enumerate(answers))
        prompt = (f"Task ({req.task}): {(req.text or '')[:4000]}\n\nCandidate answers:\n{listing}\n\n"
                  f"Which answer is best? Reply with its number only.")
        ask = req.model_copy(update={"task": "classify", "text": prompt, "stream": False, "data": None, "ref": None,
                                     "options": {"max_tokens": 4}})
        verdict, attempt = await self._attempt(ask, judge, None)
        out.attempts.append(attempt)
        if verdict is not None:
            self._account(out, judge, verdict)
        digits = "".join(ch for ch in str(verdict.get("output", "")) if ch.isdigit())[:2] if verdict else ""
        if digits and 1 <= int(digits) <= len(answers):
            out.reasons.append(f"{judge.model} judged answer {digits} of {len(answers)} best")
            return int(digits) - 1
        out.reasons.append(f"the judge {judge.model} gave no usable verdict ({attempt.error or 'no number'})")
        return None

    async def _consensus(self, req: InferRequest, decision: RouteDecision, reasons: list[str]) -> InferOutcome:
        plan = plan_consensus(req, decision, self.cfg.consensus_k)
        reasons = reasons + [plan.reason]
        results = await asyncio.gather(*(self._attempt(req, c, None) for c in plan.members))
        out = InferOutcome(req.id, req.task, False, reasons=reasons, attempts=[a for _, a in results])
        answers = [(c, ans) for c, (ans, _) in zip(plan.members, results) if ans is not None]
        if not answers:
            out.error = {"code": "failed", "message": "no consensus member answered"}
            return out
        if plan.aggregate == "majority":
            votes = collections.Counter(str(a.get("output")) for _, a in answers)
            label, n = votes.most_common(1)[0]
            cand, ans = next((c, a) for c, a in answers if str(a.get("output")) == label)
            out.votes, out.confidence = dict(votes), n / len(answers)
        else:
            pick = await self._judge(req, decision, answers, out) if plan.aggregate == "judge" else None
            if pick is None:
                cand, ans = max(answers, key=lambda ca: (ca[1].get("confidence") or 0.0, ca[0].quality))
                out.reasons.append(f"the most confident answer wins ({cand.device_id}/{cand.model})")
            else:
                cand, ans = answers[pick]
            out.confidence = ans.get("confidence")
        out.ok, out.output = True, ans.get("output")
        out.served_by = {"device": cand.device_id, "model": cand.model, "layer": cand.tier.value}
        for c, a in answers:
            self._account(out, c, a)
        return out


def _joules(cand: Candidate, answer: dict[str, Any]) -> float:
    """What the device reported for the call, or the router's prediction when it did not say."""
    return float(answer.get("joules") or cand.joules)


def _gco2(cand: Candidate, joules: float) -> float:
    """The prediction's carbon per joule, applied to the joules actually spent."""
    return cand.gco2 * (joules / cand.joules) if cand.joules else cand.gco2
