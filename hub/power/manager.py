"""The power manager: carries out the planner's decisions (hub/power/plan.py) and wakes devices
for the dispatcher.

It is handed what it uses, like the dispatcher: the devices (registry records), the energy
snapshot, an RPC caller (the ``sleep`` request), the wake signals (Wake-on-LAN and smart plugs
live, hub/power/signals.py; the simulated home in the simulator) and a clock. The dispatcher
tells it which device each decision prefers (:meth:`decided`), which requests wait for a window,
and when calls start and end; it asks it to wake a sleeping candidate (:meth:`wake`).

A wake is given up on after the device's wake latency x ``wake_timeout_factor``: the dispatcher
then tries its next candidate, and the device is not offered to the router again for
``WAKE_RETRY_S`` (its wake method is broken, or it is unplugged).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from ..capability import WakeMethod
from ..clock import Clock, SystemClock
from ..energy.model import EnergySnapshot
from ..registry import DeviceRecord
from ..router.fleet import DEFAULT_WAKE_MS
from ..router.model import RouteDecision, TaskRequest
from ..router.route import RouterConfig
from .plan import Demand, DeferredWork, DevicePower, PowerConfig, PowerPlan, PowerState, plan_power, readiness
from .signals import WakeError

log = logging.getLogger(__name__)

#: After a failed wake the device is not offered to the router again for this long.
WAKE_RETRY_S = 600.0
#: Changes (a device back, a deferral, calls ended) are gathered for this long before planning.
REPLAN_S = 1.0
#: A wake is waited for at least this long, however fast the device came back before.
MIN_WAKE_WAIT_S = 1.0
#: How long the ``sleep`` request may take to be answered.
SLEEP_RPC_TIMEOUT_S = 10.0


class Signals(Protocol):
    async def send(self, device_id: str, wake: WakeMethod) -> str: ...


class SleepCaller(Protocol):
    async def call(self, device_id: str, method: str, params: dict[str, Any], timeout_s: float,
                   request_id: str | None = None, on_chunk: Any = None) -> Any: ...


@dataclass
class DeviceLog:
    """What the manager did and saw for one device (``GET /api/power``)."""

    idle_since: float
    busy: int = 0
    waking_since: float | None = None
    wake_failed_until: float = 0.0
    observed_wake_ms: float | None = None
    wakes: int = 0
    wake_failures: int = 0
    sleeps: int = 0
    sleep_refusals: int = 0
    #: What was done and seen, newest last, in words: (Unix time, text).
    events: collections.deque[tuple[float, str]] = field(default_factory=lambda: collections.deque(maxlen=20))
    next_sleep_ask: float = 0.0
    #: Readiness per minute: [minute start, decisions, advantage] (at 600 decisions a second an
    #: hour of single entries would be 2 million; an hour of minutes is 60).
    demand: collections.deque[list[float]] = field(default_factory=collections.deque)


class PowerManager:
    def __init__(self, cfg: PowerConfig, router: RouterConfig, *, records: Callable[[], Iterable[DeviceRecord]],
                 energy: Callable[[], EnergySnapshot], rpc: SleepCaller, signals: Signals,
                 clock: Clock = SystemClock(), trusted: Callable[[str], bool] = lambda _id: True,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.cfg, self.router = cfg, router
        self.records, self.energy, self.rpc, self.signals, self.clock = records, energy, rpc, signals, clock
        self.trusted, self.on_change = trusted, on_change
        self.devices: dict[str, DeviceLog] = {}
        self.deferred: dict[str, DeferredWork] = {}  # request id → its deferred work
        self.counts: collections.Counter[str] = collections.Counter()
        self.plan: PowerPlan | None = None
        self._wakes: dict[str, asyncio.Task[str | None]] = {}
        self._awake: dict[str, asyncio.Event] = {}
        self._poke = asyncio.Event()
        #: The poke is for work (a deferral, calls ended): plan at once, not after REPLAN_S.
        self._urgent = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what the dispatcher tells and asks -----------------------------------------------------

    def decided(self, req: TaskRequest, decision: RouteDecision, run_at: float | None) -> None:
        """A routed request: interactive ones are demand for readiness; deferred ones are batch
        work a sleeping device may be woken for (until :meth:`released`)."""
        r = readiness(decision)
        if run_at is not None:
            if r is not None:
                self.deferred[req.id] = DeferredWork(run_at, r.device_id, r.advantage)
                self._poke_now()
            return
        if r is None or not r.advantage:
            return
        demand = self._log(r.device_id).demand
        minute = self.clock.time() // 60 * 60
        if demand and demand[-1][0] == minute:
            demand[-1][1] += 1
            demand[-1][2] += r.advantage
        else:
            demand.append([minute, 1, r.advantage])

    def released(self, request_id: str) -> None:
        self.deferred.pop(request_id, None)

    def calls(self, device_id: str, delta: int) -> None:
        """A call started (+1) or ended (-1) on the device."""
        log_ = self._log(device_id)
        log_.busy = max(0, log_.busy + delta)
        log_.idle_since = self.clock.time()
        if not log_.busy:
            self._poke_now()  # idle from now: plan when it may sleep

    def wake_failed(self, device_id: str) -> bool:
        """Not to be offered to the router: its last wake failed recently."""
        log_ = self.devices.get(device_id)
        return log_ is not None and log_.wake_failed_until > self.clock.time()

    async def wake(self, device_id: str, reason: str = "a task needs it") -> str | None:
        """Wake the device and wait until it is back; None when it is, else why not. Callers
        waiting for the same device share one wake."""
        rec = self._record(device_id)
        if rec is None or not self.trusted(device_id):
            return f"{device_id} is not a known paired device"
        if rec.online:
            return None
        task = self._wakes.get(device_id)
        if task is None:
            task = asyncio.create_task(self._wake(rec, reason), name=f"wake {device_id}")
            self._wakes[device_id] = task
            task.add_done_callback(lambda _t: self._wakes.pop(device_id, None))
        return await asyncio.shield(task)

    def observed(self, device_id: str, online: bool) -> None:
        """The registry saw the device come online (or leave)."""
        if online:
            event = self._awake.get(device_id)
            if event is not None:
                event.set()
            log_ = self.devices.get(device_id)
            if log_ is not None:
                log_.next_sleep_ask = 0.0  # back: a sleep asked before it slept is no reason to wait
                if log_.waking_since is None:
                    log_.idle_since = self.clock.time()
        self._poke.set()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Plan and act, at each plan's ``next_at`` or sooner when something changed."""
        while True:
            try:
                plan = self.make_plan()
                await self._act(plan)
            except Exception:  # a bug in one round must not stop power management for good
                log.exception("power plan failed")
                plan = None
            next_at = plan.next_at if plan else self.clock.time() + self.cfg.plan_every_s
            if plan is not None:
                # A sleep put off (a refusal's retry_after_s) is asked again when it may be.
                for d in plan.decisions:
                    ask = self.devices[d.device_id].next_sleep_ask if d.action == "sleep" else 0.0
                    if ask > plan.now:
                        next_at = min(next_at, ask)
            delay = max(0.0, next_at - self.clock.time())
            self._poke.clear()
            self._urgent = False
            try:
                async with asyncio.timeout(delay):
                    await self._poke.wait()
            except TimeoutError:
                continue
            if not self._urgent:
                # A device changed: at most one plan per REPLAN_S, or an announce storm of a
                # thousand devices would plan a thousand times.
                await asyncio.sleep(REPLAN_S)

    def make_plan(self) -> PowerPlan:
        now = self.clock.time()
        # Only what the plan can change: a device awake that cannot sleep stays awake, and is
        # left out (a thousand such devices cost ~40 ms a plan, most of it the energy snapshot).
        managed = [(rec, state) for rec in self.records() if (state := self._state(rec)) != "offline"
                   and self.trusted(rec.id) and (state != "awake" or not self._cannot_sleep(rec, now))]
        devices = []
        if managed:
            snap = self.energy()
            devices = [self._device_power(rec, state, now, snap) for rec, state in managed]
        demand = {}
        horizon = now - self.cfg.demand_window_s
        for device_id, log_ in self.devices.items():
            while log_.demand and log_.demand[0][0] + 60 <= horizon:  # whole minutes out of the window
                log_.demand.popleft()
            if log_.demand:
                demand[device_id] = Demand(int(sum(m[1] for m in log_.demand)), sum(m[2] for m in log_.demand))
        by_device: dict[str, list[DeferredWork]] = {}
        for work in self.deferred.values():
            by_device.setdefault(work.device_id, []).append(work)
        for works in by_device.values():
            works.sort(key=lambda w: w.run_at)
        self.plan = plan_power(devices, demand, by_device, now, self.cfg, self.router)
        return self.plan

    async def _act(self, plan: PowerPlan) -> None:
        for d in plan.decisions:
            if d.action == "sleep":
                log_ = self._log(d.device_id)
                if log_.next_sleep_ask <= plan.now:
                    self._spawn(self._sleep(d.device_id, "; ".join(d.reasons)))
            elif d.action == "wake" and d.device_id not in self._wakes:
                self._spawn(self.wake(d.device_id, "; ".join(d.reasons)))

    async def command(self, device_id: str, action: str) -> dict[str, Any]:
        """``POST /api/power/{id}``: wake or sleep now, whatever the plan says."""
        if action == "wake":
            why = await self.wake(device_id, "asked by the user")
            return {"device": device_id, "ok": why is None, "result": why or "awake"}
        why = await self._sleep(device_id, "asked by the user")
        return {"device": device_id, "ok": why is None, "result": why or "asleep"}

    def status(self) -> dict[str, Any]:
        plan = self.make_plan()  # what the planner intends now (the loop acts on it at its next round)
        now = self.clock.time()
        by_id = {d.device_id: d for d in plan.decisions}
        devices = []
        for rec in self.records():
            if not self.trusted(rec.id):
                continue
            p, log_ = rec.capability.power, self.devices.get(rec.id)
            d = by_id.get(rec.id)
            state = self._state(rec)
            left = [] if d is not None or state == "offline" else [self._cannot_sleep(rec, now)]
            devices.append({
                "id": rec.id, "state": state,
                "action": d.action if d else "stay_awake" if left else None,
                "at": d.at if d else None, "reasons": list(d.reasons) if d else left,
                "idle_w": p.idle_w, "sleep_w": p.sleep_w, "wake": p.wake_method.kind,
                "wake_latency_ms": p.wake_latency_ms,
                "observed_wake_ms": log_.observed_wake_ms if log_ else None,
                "wakes": log_.wakes if log_ else 0, "wake_failures": log_.wake_failures if log_ else 0,
                "sleeps": log_.sleeps if log_ else 0, "sleep_refusals": log_.sleep_refusals if log_ else 0,
                "recent": [{"at": at, "what": what} for at, what in log_.events] if log_ else [],
                "wake_blocked_for_s": round(max(0.0, log_.wake_failed_until - now), 1) if log_ else 0.0})
        return {"enabled": self.cfg.enabled, "now": now, "next_plan_at": plan.next_at, "devices": devices,
                "deferred": len(self.deferred), "counts": dict(self.counts)}

    async def aclose(self) -> None:
        for task in list(self._tasks) + list(self._wakes.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._wakes.values(), return_exceptions=True)

    # -- internals ------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _poke_now(self) -> None:
        self._urgent = True
        self._poke.set()

    def _note(self, log_: DeviceLog, what: str) -> None:
        log_.events.append((self.clock.time(), what))

    def _log(self, device_id: str) -> DeviceLog:
        log_ = self.devices.get(device_id)
        if log_ is None:
            log_ = self.devices[device_id] = DeviceLog(idle_since=self.clock.time())
        return log_

    def _record(self, device_id: str) -> DeviceRecord | None:
        return next((r for r in self.records() if r.id == device_id), None)

    def _state(self, rec: DeviceRecord) -> str:
        log_ = self.devices.get(rec.id)
        if log_ is not None and log_.waking_since is not None:
            return "waking"
        return "sleeping" if rec.sleeping else "awake" if rec.online else "offline"

    def _wake_ms(self, rec: DeviceRecord) -> float:
        log_ = self.devices.get(rec.id)
        if log_ is not None and log_.observed_wake_ms is not None:
            return log_.observed_wake_ms
        announced = rec.capability.power.wake_latency_ms
        return announced if announced is not None else DEFAULT_WAKE_MS

    def _cannot_sleep(self, rec: DeviceRecord, now: float) -> str:
        """Why the hub may not put the device to sleep, in words; empty when it may."""
        p, log_ = rec.capability.power, self.devices.get(rec.id)
        if rec.id in self.cfg.keep_awake:
            return "in power.keep_awake"
        if p.allow_sleep_after_s is None:
            return "it announces no sleep command (sovereign agent --sleep-command)"
        if p.wake_method.kind == "none":
            return "it announces no way to wake it (Wake-on-LAN or a smart plug)"
        if log_ is not None and log_.wake_failed_until > now:
            return f"its last wake failed: not put to sleep again for {log_.wake_failed_until - now:.0f} s"
        return ""

    def _device_power(self, rec: DeviceRecord, state: str, now: float, snap: EnergySnapshot) -> DevicePower:
        p = rec.capability.power
        log_ = self._log(rec.id)
        why = self._cannot_sleep(rec, now)
        view = snap.devices.get(rec.id)
        g = view.marginal_g_per_kwh if view else snap.site_marginal_g_per_kwh
        price = view.marginal_price_per_kwh if view else snap.site_marginal_price_per_kwh
        wake_ms = self._wake_ms(rec)
        load = rec.energy.load.active if rec.energy is not None and rec.online else 0
        return DevicePower(rec.id, cast(PowerState, state), why, p.idle_w or 0.0, p.sleep_w or 0.0, wake_ms,
                           p.wake_j if p.wake_j is not None else (p.active_w or p.idle_w or 0.0) * wake_ms / 1000,
                           p.allow_sleep_after_s or 0.0, max(log_.busy, load), log_.idle_since, g or 0.0,
                           price or 0.0, log_.waking_since,
                           max(MIN_WAKE_WAIT_S, wake_ms * self.cfg.wake_timeout_factor / 1000))

    async def _sleep(self, device_id: str, reason: str) -> str | None:
        """Ask the device to sleep; None when it agreed, else why not (it refused: busy, say)."""
        log_ = self._log(device_id)
        log_.next_sleep_ask = self.clock.time() + self.cfg.plan_every_s
        try:
            resp = await self.rpc.call(device_id, "sleep", {"reason": reason[:256]}, SLEEP_RPC_TIMEOUT_S)
        except Exception as exc:  # the link is down: asked again at the next plan
            resp, why = None, f"sleep request failed: {exc!r}"
        else:
            why = None if resp.ok else f"refused to sleep: {resp.error.code}: {resp.error.message}"
        if why is not None:
            log_.sleep_refusals += 1
            self.counts["sleep_refusals"] += 1
            if resp is not None and resp.error is not None and resp.error.retry_after_s:
                log_.next_sleep_ask = self.clock.time() + resp.error.retry_after_s
            self._note(log_, why)
            log.info("%s %s", device_id, why)
            return why
        log_.sleeps += 1
        self.counts["sleeps"] += 1
        self._note(log_, f"asked to sleep: {reason}")
        log.info("%s asked to sleep: %s", device_id, reason)
        self.on_change()
        return None

    async def _wake(self, rec: DeviceRecord, reason: str) -> str | None:
        device_id = rec.id
        log_ = self._log(device_id)
        wake_ms = self._wake_ms(rec)
        limit_s = max(MIN_WAKE_WAIT_S, wake_ms * self.cfg.wake_timeout_factor / 1000)
        event = self._awake[device_id] = asyncio.Event()
        started = self.clock.monotonic()
        log_.waking_since = self.clock.time()
        self.on_change()
        try:
            try:
                sent = await self.signals.send(device_id, rec.capability.power.wake_method)
            except WakeError as exc:
                return self._wake_failure(log_, device_id, f"wake signal not sent: {exc}")
            log.info("waking %s (%s): %s", device_id, reason, sent)
            self._note(log_, f"wake sent ({reason}): {sent}")
            self.counts["wakes"] += 1
            log_.wakes += 1
            if self._record_online(device_id):
                event.set()
            try:
                async with asyncio.timeout(max(0.0, limit_s - (self.clock.monotonic() - started))):
                    await event.wait()
            except TimeoutError:
                return self._wake_failure(log_, device_id, f"did not come back within {limit_s:.1f} s "
                                                           f"(wake latency {wake_ms:.0f} ms x "
                                                           f"{self.cfg.wake_timeout_factor:g})")
            took = (self.clock.monotonic() - started) * 1000
            log_.observed_wake_ms = took
            self._note(log_, f"back in {took:.0f} ms")
            log_.idle_since = self.clock.time()
            return None
        finally:
            log_.waking_since = None
            self._awake.pop(device_id, None)
            self.on_change()
            self._poke_now()  # plan again now that it is back (or given up on)

    def _record_online(self, device_id: str) -> bool:
        rec = self._record(device_id)
        return rec is not None and rec.online

    def _wake_failure(self, log_: DeviceLog, device_id: str, why: str) -> str:
        log_.wake_failures += 1
        self.counts["wake_failures"] += 1
        log_.wake_failed_until = self.clock.time() + WAKE_RETRY_S
        self._note(log_, why)
        log.warning("%s: %s", device_id, why)
        return why

