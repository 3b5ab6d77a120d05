"""Running a routed task: the hub's dispatcher.

``Dispatcher.infer`` takes a validated :class:`InferRequest`, answers it from an approved
compiled pattern or the cache when it can, otherwise routes it (the pure router) and sends it to
the first candidate over MQTT RPC, escalating along the decision's chain on a timeout, an error
or a confidence below the request's quality floor. Consensus requests fan out to the plan's
members in parallel and aggregate. The hub holds each (device, model)'s announced
``max_concurrency`` as slots (:class:`Slots`): a request takes a free one along the chain or
waits in a bounded queue while that fits its budget, and is refused ``overloaded`` otherwise;
a device's ``busy`` refusal is back-pressure and an invalid request the caller's error, neither
the device's failure. Every attempt becomes an outcome for the router's stats and
a ledger entry; every success is offered to the cache and to the compiled-pattern detector.
Deferrable requests (with a deadline) wait for the window the energy forecast picks; they are
written down while they wait (hub/deferred.py) and resumed after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict, Field

from .config import DispatchConfig
from .deferred import DeferredStore, ReplyRoute
from .router.ledger import LedgerEntry
from .router.model import Candidate, RouteDecision, TaskRequest
from .router.plan import plan_consensus, plan_deferral
from .router.route import cloud_counterfactual, route
from .router.stats import Outcome
from .rpc import BACKPRESSURE_ERRORS, CALLER_ERRORS, MAX_TIMEOUT_MS, RpcErrorBody
from .live import TaskCompleted
from .rpc_client import OnChunk

if TYPE_CHECKING:
    from .runtime import Hub

log = logging.getLogger(__name__)


class InferRequest(TaskRequest):
    """What a client sends to run a task (``POST /api/infer``, ``<root>/cmd/infer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_required: ClassVar[bool] = True  # a task to run names what it runs on
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
    error: dict[str, Any] | None = None  # code, message; retry_after_s when overloaded
    reasons: list[str] = field(default_factory=list)
    deferred_s: float = 0.0
    votes: dict[str, int] | None = None
    hub: str = ""  # which hub answered (several may share a fleet)
    runtime: str = ""  # the answering model's runtime (the cache's key; not in the document)

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


class Slots:
    """One (device, model)'s announced max_concurrency, held at the hub: calls beyond it wait
    here in order instead of being sent to a device that would refuse them ``busy``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self.paused_until = 0.0  # monotonic: a rate_limited refusal's retry_after_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def paused(self) -> bool:
        return self.paused_until > time.monotonic()

    def try_acquire(self) -> bool:
        if self.active >= self.capacity or self._waiters or self.paused:
            return False
        self.active += 1
        return True

    def wait_ms(self, p50_ms: float) -> float:
        """Expected wait for a slot when joining the queue now (its calls just started: pessimistic)."""
        if self.active < self.capacity and not self._waiters:
            return 0.0
        return (self.waiting // self.capacity + 1) * p50_ms

    async def acquire(self, timeout_s: float) -> bool:
        """Wait in line for a slot; False when none came within ``timeout_s``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            elif fut in self._waiters:
                self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def release(self) -> None:
        if not self._wake_next():
            self.active -= 1

    def resize(self, capacity: int) -> None:
        """The device re-announced another max_concurrency."""
        self.capacity = capacity
        while self.active < capacity and self._wake_next():
            self.active += 1

    def _wake_next(self) -> bool:
        """Hand a slot to the first live waiter (the slot passes on; ``active`` is unchanged)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False


class Dispatcher:
    def __init__(self, hub: "Hub", cfg: DispatchConfig, store: DeferredStore) -> None:
        self.hub = hub
        self.cfg = cfg
        self.store = store
        self.deferred: dict[str, float] = {}  # request id -> run at
        self._written: set[str] = set()  # ids this process deferred: their outcomes go to the store
        self.counts: collections.Counter[str] = collections.Counter()
        self.slots: dict[tuple[str, str], Slots] = {}  # (device, model)

    def check(self, req: InferRequest) -> None:
        size = len(req.text.encode()) if req.text is not None else (len(req.data) * 3 // 4 if req.data else 0)
        if size > self.cfg.max_input_bytes:
            raise RequestError("too_large", f"input of {size} bytes exceeds the limit of {self.cfg.max_input_bytes}"
                                            " (dispatch.max_input_bytes)", 413)
        if req.text is not None:
            # Refused here rather than by every device in turn: no model of the task takes it.
            limits = [e.model.max_text_chars for e in self.hub.fleet().by_task.get(req.task, ())]
            if limits and all(n is not None and len(req.text) > n for n in limits):
                raise RequestError("too_large", f"text of {len(req.text)} characters exceeds what every {req.task} "
                                                f"model announced it takes (at most {max(n or 0 for n in limits)})",
                                   413)
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
        if emit is None:
            return await self._answer(req, None, reply)
        sent = False

        async def tracked(chunk: str) -> None:
            nonlocal sent
            sent = True
            await emit(chunk)

        out = await self._answer(req, tracked, reply)
        if out.ok and not sent and out.output is not None:
            # Answered without streaming (a compiled pattern, the cache, a consensus, a model
            # that does not stream): the whole answer as one chunk, so that a streaming client
            # shows it like any other.
            await emit(out.output if isinstance(out.output, str) else json.dumps(out.output))
        return out

    async def _answer(self, req: InferRequest, emit: OnChunk | None, reply: ReplyRoute | None) -> InferOutcome:
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
        # Only answers of a model the router accepts for this request now, announced with the
        # same runtime by an online device: the chain's (model, runtime) pairs, best first.
        hit = hub.cache.get(req, [(c.model, c.runtime) for c in decision.chain])
        if hit is not None:
            (model, runtime), cached = hit
            self._ledger(req, "cache", model, "cache", True, 0.0, 0.0, 0.0, 0.0)
            # A hot question answered again counts toward a compiled pattern, cached or not.
            hub.rules.observe(req, cached.get("output"))
            return InferOutcome(req.id, req.task, True, cached.get("output"), {"device": "cache",
                                "model": model, "layer": "cache"}, cached.get("confidence"),
                                cached=True, reasons=reasons + [f"answered from the cache ({model}, {runtime})"],
                                deferred_s=deferred_s)
        if req.mode == "consensus":
            out = await self._consensus(req, decision, reasons)
        else:
            out = await self._chain(req, decision, emit, reasons)
        out.deferred_s = deferred_s
        # A simulated answer (no model ran) is neither kept nor compiled into a rule.
        if out.ok and out.served_by is not None and not out.simulated:
            hub.cache.put(req, (out.served_by["model"], out.runtime),
                          {"output": out.output, "confidence": out.confidence})
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

    def _slots(self, cand: Candidate) -> Slots:
        slots = self.slots.get((cand.device_id, cand.model))
        if slots is None:
            slots = self.slots[(cand.device_id, cand.model)] = Slots(cand.concurrency)
        elif slots.capacity != cand.concurrency:
            slots.resize(cand.concurrency)
        return slots

    async def _take(self, cands: list[Candidate], until: float) -> tuple[Candidate, Slots] | None:
        """A free slot on the first candidate in the chain's order that has one; otherwise a
        place in the queue expected to finish first, if that fits before ``until`` (the request's
        budget, monotonic). None when no candidate can take it in time: overloaded."""
        while True:
            best: tuple[float, Candidate, Slots] | None = None
            for cand in cands:
                slots = self._slots(cand)
                if slots.try_acquire():
                    return cand, slots
                if slots.paused or slots.waiting >= slots.capacity * self.cfg.queue_per_slot:
                    continue
                finish = time.monotonic() + (slots.wait_ms(cand.p50_ms) + cand.p50_ms) / 1000
                if finish <= until and (best is None or finish < best[0]):
                    best = (finish, cand, slots)
            if best is None:
                return None
            _, cand, slots = best
            if await slots.acquire(until - time.monotonic() - cand.p50_ms / 1000):
                return cand, slots

    def _overloaded(self, req: InferRequest, cands: tuple[Candidate, ...] | list[Candidate]) -> dict[str, Any]:
        """The error of a request no candidate could take, with when a slot should be free."""
        now = time.monotonic()
        waits = [max(s.paused_until - now, s.wait_ms(c.p50_ms) / 1000) for c in cands for s in (self._slots(c),)]
        retry = float(max(1, math.ceil(min(waits, default=1.0))))
        self.counts["overloaded"] += 1
        return {"code": "overloaded", "retry_after_s": retry,
                "message": f"no device can take it within its {req.budget_ms:.0f} ms budget: every slot is taken "
                           f"and the queues are full or too long; retry in {retry:.0f} s"}

    async def _slotted(self, req: InferRequest, cand: Candidate, until: float
                       ) -> tuple[dict[str, Any] | None, Attempt, RpcErrorBody | None]:
        """One attempt on one candidate, within its slots (consensus members, the judge)."""
        taken = await self._take([cand], until)
        if taken is None:
            err = RpcErrorBody(code="overloaded", message="no free slot within the budget")
            return None, Attempt(cand.device_id, cand.model, cand.tier.value, False, 0.0,
                                 f"{err.code}: {err.message}"), err
        try:
            return await self._attempt(req, cand, None)
        finally:
            taken[1].release()

    async def _chain(self, req: InferRequest, decision: RouteDecision, emit: OnChunk | None,
                     reasons: list[str]) -> InferOutcome:
        out = InferOutcome(req.id, req.task, False, reasons=reasons)
        streamed = False

        async def forward(chunk: str) -> None:
            nonlocal streamed
            streamed = True
            assert emit is not None
            await emit(chunk)

        until = time.monotonic() + req.budget_ms / 1000
        left = list(decision.chain)
        tries = 0
        overloaded = False
        while left and tries < self.cfg.max_attempts:
            taken = await self._take(left, until)
            if taken is None:
                overloaded = True
                break
            cand, slots = taken
            left.remove(cand)
            try:
                answer, attempt, err = await self._attempt(req, cand, forward if emit else None)
            finally:
                slots.release()
            out.attempts.append(attempt)
            code = err.code if err is not None else ""
            overloaded = code in BACKPRESSURE_ERRORS
            if overloaded:
                # Full (another hub's calls, an upstream's rate limit): not a failure, go on.
                if err is not None and err.retry_after_s:
                    slots.paused_until = time.monotonic() + err.retry_after_s
                out.reasons.append(f"{cand.device_id}/{cand.model} refused: {attempt.error}: trying the next")
                continue
            if code in CALLER_ERRORS:
                assert err is not None
                out.error = {"code": code, "message": f"{cand.device_id} refused the request: {err.message}"}
                out.reasons.append(f"{cand.device_id}/{cand.model}: invalid request ({code}): not escalated")
                return out
            tries += 1
            if answer is not None:
                conf = answer.get("confidence")
                if conf is not None and conf < req.quality_floor:
                    attempt.ok, attempt.error = False, f"confidence {conf:.2f} below the floor {req.quality_floor:.2f}"
                    out.reasons.append(f"{cand.device_id}/{cand.model}: {attempt.error}: escalating")
                    continue
                out.ok, out.output, out.confidence = True, answer.get("output"), conf
                out.served_by = {"device": cand.device_id, "model": cand.model, "layer": cand.tier.value}
                out.runtime = cand.runtime
                out.simulated = bool(answer.get("simulated"))
                self._account(out, cand, answer)
                if len(out.attempts) > 1:
                    out.reasons.append(f"escalated after {len(out.attempts) - 1} failed attempt(s)")
                return out
            out.reasons.append(f"{cand.device_id}/{cand.model} failed: {attempt.error}")
            if streamed:
                break  # the client has part of an answer: a second one would be spliced onto it
        if overloaded:
            out.error = self._overloaded(req, decision.chain)
        else:
            out.error = {"code": "failed", "message": "; ".join(a.error for a in out.attempts) or "no attempt"}
        return out

    async def _attempt(self, req: InferRequest, cand: Candidate, emit: OnChunk | None
                       ) -> tuple[dict[str, Any] | None, Attempt, RpcErrorBody | None]:
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
        err = None if ok else resp.error or RpcErrorBody(code="internal", message="no result")
        error = f"{err.code}: {err.message}" if err is not None else ""
        answer = resp.result if ok else None
        if err is not None and (err.code in BACKPRESSURE_ERRORS or err.code in CALLER_ERRORS):
            # Refused before any work: a full device or an invalid request is not its failure.
            return None, Attempt(cand.device_id, cand.model, cand.tier.value, False, ms, error), err
        conf = answer.get("confidence") if answer else None
        hub.stats.record(Outcome(req.id, cand.device_id, cand.model, req.task, cand.tier.value, ok, ms, time.time(),
                                 error, conf))
        joules = _joules(cand, answer) if answer else 0.0
        self._ledger(req, cand.device_id, cand.model, cand.tier.value, ok, ms, joules, _gco2(cand, joules),
                     cand.cost if ok else 0.0)
        return answer, Attempt(cand.device_id, cand.model, cand.tier.value, ok, ms, error), err

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
        verdict, attempt, _ = await self._slotted(ask, judge, time.monotonic() + req.budget_ms / 1000)
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
        until = time.monotonic() + req.budget_ms / 1000
        results = await asyncio.gather(*(self._slotted(req, c, until) for c in plan.members))
        out = InferOutcome(req.id, req.task, False, reasons=reasons, attempts=[a for _, a, _ in results])
        answers = [(c, ans) for c, (ans, _, _) in zip(plan.members, results) if ans is not None]
        if not answers:
            codes = {e.code for _, _, e in results if e is not None}
            invalid = sorted(codes & CALLER_ERRORS.keys())
            if invalid:
                out.error = {"code": invalid[0], "message": "; ".join(a.error for a in out.attempts)}
            elif codes and codes <= BACKPRESSURE_ERRORS | {"overloaded"}:
                out.error = self._overloaded(req, plan.members)
            else:
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
        out.runtime, out.simulated = cand.runtime, bool(ans.get("simulated"))
        for c, a in answers:
            self._account(out, c, a)
        return out


def _joules(cand: Candidate, answer: dict[str, Any]) -> float:
    """What the device reported for the call, or the router's prediction when it did not say."""
    return float(answer.get("joules") or cand.joules)


def _gco2(cand: Candidate, joules: float) -> float:
    """The prediction's carbon per joule, applied to the joules actually spent."""
    return cand.gco2 * (joules / cand.joules) if cand.joules else cand.gco2
