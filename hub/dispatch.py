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
Deferrable requests (with a deadline) wait for the window the energy forecast picks, and for a
free slot when a batch let go at once finds every one taken; they are written down while they
wait (hub/deferred.py) and resumed after a restart.

The dispatcher is handed everything it uses (hub/runtime.py builds the live hub's; hub/simulate.py
a simulated home's and a virtual clock): the simulator runs this same code.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from .clock import Clock, SystemClock
from .config import DispatchConfig
from .deferred import DeferredStore, ReplyRoute
from .energy.model import EnergySnapshot, ModeThresholds
from .router.cache import ResultCache, normalise
from .router.learner import PromptEstimate, PromptLearner
from .router.ledger import Ledger, LedgerEntry
from .router.model import AUDIO_TASKS, MAX_BUDGET_MS, Candidate, FleetSnapshot, RouteDecision, TaskRequest
from .router.plan import plan_consensus, plan_deferral
from .router.request import Attempt, InferOutcome, InferRequest, RequestError
from .router.route import RouterConfig, cloud_counterfactual, route
from .router.rules import RuleBook
from .router.stats import Outcome, StatsStore
from .rpc import BACKPRESSURE_ERRORS, CALLER_ERRORS, MAX_TIMEOUT_MS, OnChunk, RpcErrorBody, RpcResponse
from .voice.audio import AudioError, wav_duration_s

log = logging.getLogger(__name__)


class RpcCaller(Protocol):
    """Calls a method on a device and waits for its answer: MQTT RPC in the hub
    (hub/rpc_client.py), a simulated device in the simulator (hub/sim/devices.py)."""

    async def call(self, device_id: str, method: str, params: dict[str, Any], timeout_s: float,
                   request_id: str | None = None, on_chunk: OnChunk | None = None) -> RpcResponse: ...


class PowerHooks(Protocol):
    """The power manager as the dispatcher sees it (hub/power/manager.py): told what each
    decision prefers and when calls run, asked to wake a sleeping candidate."""

    def decided(self, req: TaskRequest, decision: RouteDecision, run_at: float | None) -> None: ...

    def released(self, request_id: str) -> None: ...

    def calls(self, device_id: str, delta: int) -> None: ...

    async def wake(self, device_id: str, reason: str = ...) -> str | None: ...


class MemoryHooks(Protocol):
    """What the dispatcher asks of the hub's memory (hub/memory/service.py): notes for a prompt,
    and the semantic cache."""

    async def augment(self, req: InferRequest) -> tuple[InferRequest, list[dict[str, Any]]]: ...

    async def semantic_get(self, req: InferRequest, question: str, context: str | None,
                           producers: list[tuple[str, str]], now: float) -> Any: ...

    async def semantic_put(self, req: InferRequest, question: str, context: str | None, producer: tuple[str, str],
                           result: Any, now: float) -> None: ...


class Slots:
    """One (device, model)'s announced max_concurrency, held at the hub: calls beyond it wait
    here in order instead of being sent to a device that would refuse them ``busy``."""

    def __init__(self, capacity: int, clock: Clock) -> None:
        self.capacity = capacity
        self.clock = clock
        self.active = 0
        self.paused_until = 0.0  # monotonic: a rate_limited refusal's retry_after_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def paused(self) -> bool:
        return self.paused_until > self.clock.monotonic()

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


def audio_seconds(req: TaskRequest, fleet: FleetSnapshot, pcm_rate: int | None = None) -> float:
    """A speech request's audio length from its header, and a refusal when a budget the client
    set cannot be met by any speech model: ten minutes of audio never fits a 300 ms budget."""
    assert req.data is not None
    try:
        seconds = wav_duration_s(base64.b64decode(req.data), where="data", pcm_rate=pcm_rate)
    except AudioError as exc:
        raise RequestError(exc.code, exc.message, 413 if exc.code == "too_long" else 400) from None
    if "budget_ms" in req.model_fields_set:
        fastest = min(((e.p50 + max(0.0, seconds - e.unit_free) * e.ms_per_unit, e)
                       for e in fleet.by_task.get(req.task, ()) if req.model in (None, e.model.name)),
                      default=None, key=lambda t: t[0])
        if fastest is not None and fastest[0] > req.budget_ms:
            ms, e = fastest
            raise RequestError("over_budget", f"{seconds:.1f} s of audio: the fastest {req.task} model "
                                              f"({e.model.name} on {e.device.id}) needs about {ms:.0f} ms, over "
                                              f"the {req.budget_ms:.0f} ms budget", 422)
    return seconds


class Dispatcher:
    """Runs requests on what it is handed (the composition root, hub/runtime.py, wires the live
    hub's services; hub/simulate.py wires simulated devices and a virtual clock): the same
    task path for both."""

    def __init__(self, cfg: DispatchConfig, router: RouterConfig, *, fleet: Callable[[], FleetSnapshot],
                 energy: Callable[[], EnergySnapshot], stats: StatsStore, cache: ResultCache, rules: RuleBook,
                 ledger: Ledger, rpc: RpcCaller, clock: Clock = SystemClock(), store: DeferredStore | None = None,
                 known_device: Callable[[str], bool] = lambda _id: True,
                 on_outcome: Callable[[InferOutcome], None] | None = None, hub_id: str = "",
                 thresholds: ModeThresholds | None = None, learner: PromptLearner | None = None,
                 power: PowerHooks | None = None, memory: MemoryHooks | None = None) -> None:
        self.cfg, self.router = cfg, router
        self.fleet, self.energy = fleet, energy
        self.stats, self.cache, self.rules, self.ledger = stats, cache, rules, ledger
        self.rpc, self.clock, self.store = rpc, clock, store
        self.known_device, self.on_outcome, self.hub_id = known_device, on_outcome, hub_id
        self.thresholds = thresholds or ModeThresholds()
        self.learner = learner
        self.power = power
        self.memory = memory
        self.deferred: dict[str, float] = {}  # request id -> run at
        self._written: set[str] = set()  # ids this process deferred: their outcomes go to the store
        self.counts: collections.Counter[str] = collections.Counter()
        self.slots: dict[tuple[str, str], Slots] = {}  # (device, model)
        self._refining: set[tuple[str, str]] = set()  # (task, normalised input) being refined
        self._background: set[asyncio.Task[None]] = set()

    def check(self, req: InferRequest) -> InferRequest:
        """Refuse what no device should see; return the request with what the edge derives from
        its input (a speech request's audio seconds, read from its WAV header)."""
        size = len(req.text.encode()) if req.text is not None else (len(req.data) * 3 // 4 if req.data else 0)
        audio = req.task in AUDIO_TASKS and req.data is not None
        cap, cap_name = ((self.cfg.max_audio_bytes, "max_audio_bytes") if audio
                         else (self.cfg.max_input_bytes, "max_input_bytes"))
        if size > cap:
            raise RequestError("too_large", f"input of {size} bytes exceeds the limit of {cap} (dispatch.{cap_name})",
                               413)
        if audio and req.audio_s is None:
            pcm_rate = req.options.get("pcm_rate")
            req = req.model_copy(update={"audio_s": audio_seconds(
                req, self.fleet(), pcm_rate if isinstance(pcm_rate, int) else None)})
        if req.text is not None:
            # Refused here rather than by every device in turn: no model of the task takes it.
            limits = [e.model.max_text_chars for e in self.fleet().by_task.get(req.task, ())]
            if limits and all(n is not None and len(req.text) > n for n in limits):
                raise RequestError("too_large", f"text of {len(req.text)} characters exceeds what every {req.task} "
                                                f"model announced it takes (at most {max(n or 0 for n in limits)})",
                                   413)
        if req.context is not None and self.memory is None:
            raise RequestError("memory_unavailable", "this hub has no notes index (memory is disabled)", 422)
        if req.requester is not None and not self.known_device(req.requester):
            raise RequestError("unknown_device", f"requester {req.requester!r} is not a known device")
        return req


    async def infer(self, req: InferRequest, emit: OnChunk | None = None,
                    reply: ReplyRoute | None = None) -> InferOutcome:
        """Run a request. ``reply`` is where an MQTT command's answer goes: kept with the request
        if it is deferred, so that a restarted hub can still answer it."""
        req = self.check(req)
        if not req.id:
            req = req.model_copy(update={"id": uuid.uuid4().hex[:16]})
        clock = self.clock
        started = clock.monotonic()
        timeout_s = self._timeout_s(req)
        self.counts["requests"] += 1
        try:
            async with asyncio.timeout(timeout_s):
                out = await self._infer(req, emit, started, reply)
        except TimeoutError:
            out = InferOutcome(req.id, req.task, False, error={"code": "timeout",
                               "message": f"no answer within the request's {timeout_s * 1000:.0f} ms"})
        out.latency_ms = (clock.monotonic() - started) * 1000 - out.deferred_s * 1000
        out.hub = self.hub_id
        if req.id in self._written:  # a cancellation (hub stop) leaves it waiting for the next start
            self._written.discard(req.id)
            if self.store is not None:
                await asyncio.to_thread(self.store.finish, req.id, out.to_dict())
        self.counts["ok" if out.ok else "failed"] += 1
        if self.on_outcome is not None:
            self.on_outcome(out)
        log.info("task %s %s: %s via %s in %.1f ms", req.id, req.task, "ok" if out.ok else out.error,
                 out.served_by, out.latency_ms)
        return out

    def _timeout_s(self, req: InferRequest) -> float:
        """The whole request's time limit: its own, else the default, and at least its latency
        budget; deferrable work may wait for its window, so its deadline bounds it instead."""
        timeout_s = req.timeout_ms / 1000 if req.timeout_ms else max(self.cfg.default_timeout_ms, req.budget_ms) / 1000
        if req.deadline is not None and req.timeout_ms is None:
            timeout_s = max(timeout_s, req.deadline - self.clock.time())
        return timeout_s

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
        """With ``"context": "notes"``, the prompt is sent with the notes retrieved for it (routed,
        priced and cached as the longer prompt it now is), and the outcome names them."""
        question, context = req.text, req.context
        if context is None or self.memory is None:
            return await self._routed(req, emit, reply, question, context)
        try:
            req, sources = await self.memory.augment(req)
        except RequestError as exc:  # no model, an index of another model: said, like any failure
            return InferOutcome(req.id, req.task, False, error={"code": exc.code, "message": exc.message},
                                reasons=["the notes could not be searched"])
        out = await self._routed(req, emit, reply, question, context)
        out.sources = sources
        if sources:
            out.reasons.insert(0, f"{len(sources)} notes retrieved for the prompt (+{len(req.text or '') - len(question or '')}"
                                  f" characters)")
        else:
            out.reasons.insert(0, "no note close enough to the question: sent without notes")
        return out

    async def _routed(self, req: InferRequest, emit: OnChunk | None, reply: ReplyRoute | None, question: str | None,
                      context: str | None) -> InferOutcome:
        now = self.clock.time
        rule = self.rules.match(req)
        if rule is not None:
            self._ledger(req, "hub", f"rule:{rule.id}", "rule", True, 0.0, 0.0, 0.0, 0.0)
            return InferOutcome(req.id, req.task, True, rule.answer, {"device": "hub", "model": f"rule:{rule.id}",
                                "layer": "code"}, 1.0, reasons=[f"approved compiled pattern {rule.id}"])
        learner = self.learner
        estimate = learner.estimate(req.task, req.text) if learner is not None else None
        predicted = estimate.quality if estimate is not None else None
        decision = route(req, self.fleet(), self.router, self.stats.snapshot(), predicted)
        deferred_s = 0.0
        power = self.power
        run_at = None
        if req.deadline is not None and len(self.deferred) < self.cfg.max_deferred:
            plan = plan_deferral(req, decision, self.energy(), self.thresholds)
            run_at = plan.run_at if plan.run_at > now() + 1 else None
        if run_at is not None:
            if power is not None:
                power.decided(req, decision, run_at)  # batch work a sleeping device may be woken for
            try:
                deferred_s = await self._wait_until(req, run_at, reply)
            finally:
                if power is not None:
                    power.released(req.id)
            decision = route(req, self.fleet(), self.router, self.stats.snapshot(), predicted)
        reasons = list(decision.reasons)
        if decision.chosen is None:
            return InferOutcome(req.id, req.task, False, error={"code": "no_route", "message": reasons[-1]},
                                reasons=reasons + [f"{e.device_id}/{e.model}: {e.reason}" for e in decision.excluded],
                                deferred_s=deferred_s)
        # Not for an uncacheable task (echo, drafts): listing the producers scans the fleet's models.
        cacheable = self.cache.cacheable(req)
        producers = self._producers(req, decision) if cacheable else []
        hit = self.cache.get(req, producers, now=now()) if cacheable else None
        if hit is None and cacheable and self.memory is not None and question is not None:
            similar = await self.memory.semantic_get(req, question, context, producers, now())
            if similar is not None:
                model, runtime = similar.producer
                self._ledger(req, "cache", model, "semantic", True, 0.0, 0.0, 0.0, 0.0)
                return InferOutcome(req.id, req.task, True, similar.result.get("output"), {
                    "device": "cache", "model": model, "layer": "cache"}, similar.result.get("confidence"),
                    cached="semantic", deferred_s=deferred_s, reasons=reasons + [
                        f"answered from the semantic cache: {similar.question!r} was asked before (cosine "
                        f"{similar.similarity:.3f}), answered by {model} ({runtime})"])
        if hit is not None:
            (model, runtime), cached = hit
            self._refine(req, decision, model, runtime)
            self._ledger(req, "cache", model, "cache", True, 0.0, 0.0, 0.0, 0.0)
            # A hot question answered again counts toward a compiled pattern, cached or not.
            self.rules.observe(req, cached.get("output"), now=now())
            if learner is not None and estimate is not None:
                learner.answered(req.id, req.task, model, estimate, now())
            return InferOutcome(req.id, req.task, True, cached.get("output"), {"device": "cache",
                                "model": model, "layer": "cache"}, cached.get("confidence"),
                                cached=True, reasons=reasons + [f"answered from the cache ({model}, {runtime})"],
                                deferred_s=deferred_s)
        if power is not None and run_at is None:
            power.decided(req, decision, None)  # demand for readiness: a device will run it now
        while True:
            if req.mode == "consensus":
                out = await self._consensus(req, decision, reasons)
            else:
                out = await self._chain(req, decision, emit, reasons, estimate)
            retry_s = (out.error or {}).get("retry_after_s")
            if retry_s is None or req.deadline is None or now() + retry_s >= req.deadline:
                break
            # Deferrable work that found every slot taken (a batch let go at its window's start)
            # waits its turn while its deadline allows, instead of failing `overloaded`.
            deferred_s += await self._wait_until(req, now() + retry_s, reply)
            decision = route(req, self.fleet(), self.router, self.stats.snapshot(), predicted)
            if decision.chosen is None:
                break
            reasons = list(decision.reasons) + [f"waited {deferred_s:.0f} s in all for a free slot"]
        out.deferred_s = deferred_s
        # A simulated answer (no model ran) is neither kept nor compiled into a rule.
        if out.ok and out.served_by is not None and not out.simulated:
            producer, kept = (out.served_by["model"], out.runtime), {"output": out.output, "confidence": out.confidence}
            self.cache.put(req, producer, kept, now=now())
            if self.memory is not None and question is not None and self.cache.cacheable(req):
                await self.memory.semantic_put(req, question, context, producer, kept, now())
            proposed = self.rules.observe(req, out.output, now=now())
            if proposed is not None:
                log.info("compiled pattern proposed: %s", proposed.id)
        if out.ok and out.served_by is not None and learner is not None and estimate is not None:
            learner.answered(req.id, req.task, out.served_by["model"], estimate, now())
        return out

    def _producers(self, req: InferRequest, decision: RouteDecision) -> list[tuple[str, str]]:
        """Whose kept answers may be served, the best first: the chain's models (the router
        accepts them for this request now), and any better model of the fleet that the policy
        only held back from running (a kept answer costs nothing to serve); each announced with
        that runtime by an online device, so a model gone from the fleet finds none of its old
        answers."""
        best = max((c.quality for c in decision.chain), default=1.0)
        better = [(e.quality, e.model.name, e.model.runtime) for e in self.fleet().by_task.get(req.task, ())
                  if e.quality > best and not (req.local_only and e.cloud)]
        ranked = sorted([(-q, i, (m, r)) for i, (q, m, r) in enumerate(better)]
                        + [(-c.quality, len(better) + i, (c.model, c.runtime)) for i, c in enumerate(decision.chain)])
        return list(dict.fromkeys(p for _, _, p in ranked))

    def _refine(self, req: InferRequest, decision: RouteDecision, model: str, runtime: str) -> None:
        """A question asked again, answered from the cache by a model below a better one of the
        fleet: ask for a better answer in the background (CacheConfig.refine). The router picks
        who gives it, with the request's floor raised above the kept answer's quality."""
        cfg = self.cache.cfg
        had = max((c.quality for c in decision.chain if (c.model, c.runtime) == (model, runtime)), default=1.0)
        better = [e for e in self.fleet().by_task.get(req.task, ())
                  if e.quality > had + 0.005 and not (req.local_only and e.cloud)]
        key = (req.task, normalise(req))
        if not cfg.refine or not better or key in self._refining or req.mode != "single":
            return
        ask = req.model_copy(update={
            "id": f"{req.id}-refine", "quality_floor": min(1.0, had + 0.01), "stream": False, "timeout_ms": None,
            "budget_ms": min(MAX_BUDGET_MS, max(req.budget_ms, *(e.p95 for e in better))),
            "deadline": self.clock.time() + cfg.refine_within_s})
        self._refining.add(key)
        task = asyncio.create_task(self._run_refine(ask, key), name=f"refine {req.task}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_refine(self, ask: InferRequest, key: tuple[str, str]) -> None:
        try:
            out = await self.infer(ask)
            log.info("refined a cached %s answer: %s", ask.task, out.served_by if out.ok else out.error)
        except RequestError as exc:  # the requester left the fleet meanwhile, say
            log.info("did not refine a cached %s answer: %s", ask.task, exc.message)
        finally:
            self._refining.discard(key)

    async def aclose(self) -> None:
        """Stop what runs in the background (refinements); deferred requests are the callers'."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _wait_until(self, req: InferRequest, run_at: float, reply: ReplyRoute | None) -> float:
        if self.store is not None:
            await asyncio.to_thread(self.store.add, req, run_at, reply)
            self._written.add(req.id)
        self.deferred[req.id] = run_at
        began = self.clock.time()
        try:
            await asyncio.sleep(max(0.0, run_at - began))
        finally:
            self.deferred.pop(req.id, None)
        return self.clock.time() - began

    def _slots(self, cand: Candidate) -> Slots:
        slots = self.slots.get((cand.device_id, cand.model))
        if slots is None:
            slots = self.slots[(cand.device_id, cand.model)] = Slots(cand.concurrency, self.clock)
        elif slots.capacity != cand.concurrency:
            slots.resize(cand.concurrency)
        return slots

    async def _take(self, cands: list[Candidate], until: float) -> tuple[Candidate, Slots] | None:
        """The best-ranked candidate that can finish before ``until`` (the request's budget,
        monotonic): at once on a free slot, or after a wait in its queue. A free slot further
        down the chain does not jump the ranking: waiting a second for the GPU box within the
        budget beats paying a cloud model now. None when no candidate can take it in time:
        overloaded."""
        while True:
            for cand in cands:
                slots = self._slots(cand)
                if slots.try_acquire():
                    return cand, slots
                if slots.paused or slots.waiting >= slots.capacity * self.cfg.queue_per_slot:
                    continue
                # The calls ahead at their median, this one at its p95: it must fit the budget.
                finish = self.clock.monotonic() + (slots.wait_ms(cand.p50_ms) + cand.p95_ms) / 1000
                if finish <= until:
                    break
            else:
                return None
            if await slots.acquire(until - self.clock.monotonic() - cand.p95_ms / 1000):
                return cand, slots

    def _overloaded(self, req: InferRequest, cands: tuple[Candidate, ...] | list[Candidate]) -> dict[str, Any]:
        """The error of a request no candidate could take, with when a slot should be free."""
        now = self.clock.monotonic()
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
                     reasons: list[str], estimate: PromptEstimate | None = None) -> InferOutcome:
        out = InferOutcome(req.id, req.task, False, reasons=reasons)
        streamed = False
        learner = self.learner

        async def forward(chunk: str) -> None:
            nonlocal streamed
            streamed = True
            assert emit is not None
            await emit(chunk)

        until = self.clock.monotonic() + req.budget_ms / 1000
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
                    slots.paused_until = self.clock.monotonic() + err.retry_after_s
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
                if learner is not None and estimate is not None and isinstance(conf, (int, float)) \
                        and 0.0 <= conf <= 1.0:
                    # The answer's own confidence is an outcome of this model on this prompt;
                    # below the floor it is a failure (label 0), the escalation's reason.
                    learner.learn(req.task, cand.model, estimate.features, 0.0 if conf < req.quality_floor else conf)
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
        timeout_s = max(self.cfg.min_attempt_ms, cand.p95_ms * self.cfg.attempt_timeout_factor) / 1000
        # Streamed, the attempt's limit bounds each silence (hub/rpc_client.py), and the device may
        # go on for as long as the whole request may: text that keeps coming is not cut.
        device_ms = min(MAX_TIMEOUT_MS, self._timeout_s(req) * 1000) if emit is not None else timeout_s * 1000
        params: dict[str, Any] = {"task": req.task, "model": cand.model, "options": req.options,
                                  "stream": emit is not None, "timeout_ms": device_ms}
        for key in ("text", "data", "ref"):
            if getattr(req, key) is not None:
                params[key] = getattr(req, key)
        t0 = self.clock.monotonic()
        power = self.power
        if cand.wake_ms and power is not None:
            # Asleep: woken first (shared with any other request waiting for it); one that does
            # not come back is not the model's failure, and the next candidate is tried.
            self.counts["waited_for_wake"] += 1
            why = await power.wake(cand.device_id, f"request {req.id} ({req.task})")
            if why is not None:
                err = RpcErrorBody(code="unavailable", message=f"asleep and not woken: {why}")
                return None, Attempt(cand.device_id, cand.model, cand.tier.value, False,
                                     (self.clock.monotonic() - t0) * 1000, f"{err.code}: {err.message}"), err
        if power is not None:
            power.calls(cand.device_id, 1)
        try:
            resp = await self.rpc.call(cand.device_id, "infer", params, timeout_s + 0.02, request_id=req.id,
                                       on_chunk=emit)
        finally:
            if power is not None:
                power.calls(cand.device_id, -1)
        ms = (self.clock.monotonic() - t0) * 1000
        ok = resp.ok and resp.result is not None
        err = None if ok else resp.error or RpcErrorBody(code="internal", message="no result")
        error = f"{err.code}: {err.message}" if err is not None else ""
        answer = resp.result if ok else None
        if err is not None and (err.code in BACKPRESSURE_ERRORS or err.code in CALLER_ERRORS):
            # Refused before any work: a full device or an invalid request is not its failure.
            return None, Attempt(cand.device_id, cand.model, cand.tier.value, False, ms, error), err
        conf = answer.get("confidence") if answer else None
        self.stats.record(Outcome(req.id, cand.device_id, cand.model, req.task, cand.tier.value, ok,
                                  max(0.0, ms - cand.extra_ms), self.clock.time(), error, conf))
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
        cloud_cost, cloud_g = cloud_counterfactual(req, self.router)
        self.ledger.add(LedgerEntry(req.id, self.clock.time(), req.task, device, model, layer, ok, ms, joules, gco2,
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
        verdict, attempt, _ = await self._slotted(ask, judge, self.clock.monotonic() + req.budget_ms / 1000)
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
        until = self.clock.monotonic() + req.budget_ms / 1000
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
