"""The simulated home: devices that answer the dispatcher's calls, batteries stepped in time,
and the site's energy, all on the virtual loop's clock.

Each device is announced to the router exactly as a real one is (a ``Capability`` and energy
reports in a ``DeviceRecord``, turned into the router's view by ``fleet_snapshot``), and answers
``infer`` calls as :class:`hub.dispatch.RpcCaller` (the MQTT RPC client's place): each call
takes a latency drawn from the model's p50/p95, may fail at its failure rate, and spends its
joules from the device's battery. The dispatcher's slots give each model its announced
concurrency, so bursts queue as they would live.

Energy is counted when it is drawn, step by step (``STEP_S``): every running device's idle
draw, plus each call's joules, priced at the site's marginal carbon and price at that moment
(the PV surplus while the sun shines, the grid otherwise). What a device draws from its own
battery is priced the same way with the round-trip losses added, as if put back at once: the
battery then only decides whether the device can run (it charges while plugged in, and a device
at its floor serves nothing until it has charged). A battery device that is flat off its
charger draws nothing.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..capability import (PROTOCOL_VERSION, Capability, EnergyReport, LatencyMs, Load, ModelSpec, Power, PowerSource,
                          WakeMethod)
from ..energy.model import EnergySnapshot, ForecastPoint, InputValue, ModeThresholds
from ..energy.series import Series
from ..energy.snapshot import compute_snapshot
from ..registry import DeviceRecord
from ..router.fleet import FleetView, device_energy_views, fleet_snapshot
from ..router.route import OUTPUT_TOKENS
from ..rpc import OnChunk, RpcErrorBody, RpcResponse
from .files import FleetFile, SimDevice, SimModel
from .loop import LoopClock

#: How often batteries, plugs, idle draw and the energy inputs move forward.
STEP_S = 300.0
#: A device whose battery fell to its floor comes back once it has this much more.
RESUME_ABOVE_FLOOR_PCT = 5.0
FORECAST_S = 48 * 3600


#: The simulated devices' Wake-on-LAN address (a locally administered MAC; nothing is sent).
SIM_MAC = "02:00:00:00:00:00"


def capability(d: SimDevice) -> Capability:
    """What the device announces, as an agent would."""
    wake = None if d.wake == "none" else WakeMethod(kind="wol", mac=SIM_MAC) if d.wake == "wol" \
        else WakeMethod(kind="ha_switch", command_topic=f"sim/{d.id}/set")
    return Capability(
        v=PROTOCOL_VERSION, id=d.id, name=d.id, tier=d.tier, software="sovereign simulate",
        power=Power(source=PowerSource(d.power_source), battery_pct=d.battery_pct, idle_w=d.idle_w,
                    active_w=d.active_w, battery_floor_pct=d.battery_floor_pct, sleep_w=d.sleep_w,
                    wake_latency_ms=d.wake_ms, wake_j=d.wake_j, wake=wake,
                    allow_sleep_after_s=d.allow_sleep_after_s if d.wake != "none" else None),
        models=[ModelSpec(name=m.name, runtime=m.runtime, tasks=m.tasks, latency_ms=LatencyMs(p50=m.p50_ms, p95=m.p95_ms),
                          energy_j_per_call=m.joules, energy_j_per_token=m.j_per_token, quality=m.quality,
                          task_quality=m.task_quality, max_concurrency=m.max_concurrency) for m in d.models])


def plugged(d: SimDevice, at: float) -> bool:
    """Whether the device is on its charger at ``at`` (its plugged_hours, UTC, may wrap midnight)."""
    when = datetime.fromtimestamp(at, timezone.utc)
    hour = when.hour + when.minute / 60
    return any((start <= hour < end) if start <= end else (hour >= start or hour < end)
               for start, end in d.plugged_hours)


@dataclass
class WallEnergy:
    """Energy drawn, with its carbon and price at the time it was drawn."""

    joules: float = 0.0
    gco2: float = 0.0
    cost: float = 0.0

    def add(self, joules: float, g_per_kwh: float, price_per_kwh: float) -> None:
        self.joules += joules
        self.gco2 += joules / 3.6e6 * g_per_kwh
        self.cost += joules / 3.6e6 * price_per_kwh


@dataclass
class DeviceState:
    spec: SimDevice
    record: DeviceRecord
    models: dict[str, SimModel]
    battery_pct: float | None
    start_pct: float | None
    running: int = 0
    floor_violations: int = 0
    #: Its own stream of draws (latencies, failures, wakes): what one device draws does not move
    #: another's, so that policies sending different work to different devices are compared on
    #: the same luck (common random numbers).
    rng: random.Random = field(default_factory=random.Random)
    asleep: bool = False
    waking: bool = False
    wakes: int = 0
    asleep_s: float = 0.0

    @property
    def capacity_j(self) -> float:
        return (self.spec.battery_wh or 0.0) * 3600


@dataclass
class SimHome:
    """The devices, their batteries and the site's energy inputs over one run."""

    fleet: FleetFile
    carbon: Series
    solar: Series | None
    clock: LoopClock
    rng: random.Random
    thresholds: ModeThresholds = field(default_factory=ModeThresholds)
    devices: dict[str, DeviceState] = field(init=False)
    wall: WallEnergy = field(default_factory=WallEnergy)
    idle: WallEnergy = field(default_factory=WallEnergy)  # the part of `wall` drawn idle (or asleep)
    #: The least idle draw any schedule could have: every device that can sleep asleep whenever
    #: it is not computing (the oracle's, hub/sim/oracle.py).
    idle_floor: WallEnergy = field(default_factory=WallEnergy)
    #: Told when a device comes back from sleep (the power manager's ``observed``).
    on_awake: Callable[[str, bool], None] = lambda _id, _online: None
    #: Whether a sleeping device is offered to the router (its last wake did not fail).
    wakeable: Callable[[str], bool] = lambda _id: True
    #: request id → the device that asked (a battery may go below its floor for its own tasks)
    requesters: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.devices = {}
        for d in self.fleet.devices:
            pct = (d.battery_pct if d.battery_pct is not None else 100.0) if d.battery_wh else None
            rec = DeviceRecord(capability(d), 0.0, 0.0, sources={"sim": True}, online=True)
            self.devices[d.id] = DeviceState(d, rec, {m.name: m for m in d.models}, pct, pct,
                                             rng=random.Random(self.rng.getrandbits(64)))
        self._solar_max = max(self.solar.values) if self.solar else 0.0
        self._inputs: dict[str, InputValue] = {}
        self._forecasts: dict[str, list[ForecastPoint]] = {}
        self._energy: EnergySnapshot | None = None
        self._stepped_at = 0.0  # loop time of the last step
        self.fleet_view = FleetView(lambda: fleet_snapshot([s.record for s in self.devices.values()], self.energy(),
                                                           wakeable=self.wakeable), self.clock.monotonic)

    # -- what the dispatcher reads --------------------------------------------------------------

    def energy(self) -> EnergySnapshot:
        now = self.clock.time()
        if self._energy is None or self._energy.now != now:
            self._energy = compute_snapshot(now, self._inputs, self._forecasts,
                                            device_energy_views(s.record for s in self.devices.values()),
                                            self.thresholds)
        return self._energy

    def known(self, device_id: str) -> bool:
        return device_id in self.devices

    def pv_w(self, at: float) -> float:
        if not self.solar or not self._solar_max:
            return 0.0
        return self.solar.at(at) / self._solar_max * self.fleet.site.solar_peak_w

    # -- time -----------------------------------------------------------------------------------

    def set_inputs(self, now: float) -> None:
        """The energy inputs at ``now``, and forecasts of the next 48 h (perfect foresight of the
        series: the simulator's forecasts are the data themselves)."""
        site = self.fleet.site

        def value(metric: str, v: float) -> InputValue:
            return InputValue(metric, v, "sim", now, 2 * STEP_S)

        self._inputs = {"carbon_g_per_kwh": value("carbon_g_per_kwh", self.carbon.at(now)),
                        "pv_w": value("pv_w", self.pv_w(now)), "load_w": value("load_w", site.load_w),
                        "price_per_kwh": value("price_per_kwh", site.price_per_kwh),
                        "export_price_per_kwh": value("export_price_per_kwh", site.export_price_per_kwh)}
        self._forecasts = {"carbon_g_per_kwh": [ForecastPoint(a, b, v) for a, b, v in
                                                self.carbon.window(now, now + FORECAST_S)]}
        if self.solar:
            self._forecasts["pv_w"] = [ForecastPoint(a, b, self.pv_w(a)) for a, b, _ in
                                       self.solar.window(now, now + FORECAST_S)]
        self._energy = None

    def step(self, dt: float) -> None:
        """Move every device ``dt`` seconds on: idle draw, charging, plugs; report energy."""
        now = self.clock.time()
        self._stepped_at = self.clock.monotonic()
        for s in self.devices.values():
            d = s.spec
            on_charger = plugged(d, now)
            idle_j = (d.sleep_w if s.asleep else d.idle_w) * dt
            if s.asleep:
                s.asleep_s += dt
            if s.battery_pct is not None:
                if not on_charger:
                    idle_j = min(idle_j, s.battery_pct / 100 * s.capacity_j)  # flat: off
                self._battery(s, (d.charge_w * dt if on_charger else 0.0) - idle_j)
            self._draw(s, idle_j, on_charger, self.idle)
            floor_j = d.sleep_w * dt if d.wake != "none" else idle_j
            self.idle_floor.add(floor_j / (self.thresholds.battery_efficiency
                                           if s.battery_pct is not None and not on_charger else 1.0),
                                *self._site_marginal())
            self._report(s, now, on_charger)
        self.set_inputs(now)
        self.fleet_view.changed()

    def _site_marginal(self) -> tuple[float, float]:
        snap = self.energy()
        return snap.site_marginal_g_per_kwh or 0.0, snap.site_marginal_price_per_kwh or 0.0

    def _draw(self, s: DeviceState, joules: float, on_charger: bool, also: WallEnergy | None = None) -> None:
        g, price = self._site_marginal()
        if s.battery_pct is not None and not on_charger:
            joules /= self.thresholds.battery_efficiency
        self.wall.add(joules, g, price)
        if also is not None:
            also.add(joules, g, price)

    def _battery(self, s: DeviceState, joules: float) -> None:
        s.battery_pct = min(100.0, max(0.0, s.battery_pct + joules / s.capacity_j * 100))  # type: ignore[operator]

    def _report(self, s: DeviceState, now: float, on_charger: bool) -> None:
        """An energy report, as the agent sends; a device at its battery floor and off the
        charger goes offline (it serves nothing, its own tasks included) until it has charged."""
        d = s.spec
        rec = s.record
        rec.energy = EnergyReport(ts=now, source=PowerSource(d.power_source), battery_pct=s.battery_pct,
                                  charging=on_charger if s.battery_pct is not None else None,
                                  load=Load(active=s.running))
        rec.energy_at = now
        if s.battery_pct is not None and not s.asleep and not s.waking:
            if rec.online and not on_charger and s.battery_pct <= d.battery_floor_pct:
                rec.online = False
                self.fleet_view.refresh()
            elif not rec.online and s.battery_pct >= d.battery_floor_pct + RESUME_ABOVE_FLOOR_PCT:
                rec.online = True
                self.fleet_view.refresh()

    async def run_steps(self) -> None:
        """Forever, every STEP_S of virtual time (cancelled when the replay ends)."""
        while True:
            await asyncio.sleep(STEP_S)
            self.catch_up()

    def catch_up(self) -> None:
        """Step from the last step to now (the replay's end falls between two)."""
        now = asyncio.get_running_loop().time()
        if now > self._stepped_at:
            self.step(now - self._stepped_at)

    # -- the devices' side of the RPC ----------------------------------------------------------

    async def call(self, device_id: str, method: str, params: dict[str, Any], timeout_s: float,
                   request_id: str | None = None, on_chunk: OnChunk | None = None) -> RpcResponse:
        s = self.devices.get(device_id)
        if s is not None and method == "sleep":
            return self._sleep(s, request_id)
        model = s.models.get(str(params.get("model"))) if s is not None else None
        if s is None or model is None or method != "infer" or not s.record.online:
            return _error(request_id, "unavailable", f"{device_id} cannot run {params.get('model')!r} now")
        task = str(params["task"])
        sigma = max(0.05, math.log(model.p95_ms / model.p50_ms) / 1.645)
        latency_s = model.p50_ms * math.exp(s.rng.gauss(0, sigma)) / 1000
        fails = s.rng.random() < model.failure_rate
        s.running += 1
        try:
            await asyncio.sleep(min(latency_s, timeout_s))
        finally:
            s.running -= 1
        joules = (model.j_per_token * OUTPUT_TOKENS.get(task, 150) if model.j_per_token else model.joules)
        if latency_s > timeout_s:
            joules *= timeout_s / latency_s
        if model.runtime != "cloud":  # a cloud call's energy is the provider's: the ledger has it
            self._spend(s, joules, request_id)
        if latency_s > timeout_s:
            return _error(request_id, "timeout", f"no answer within {timeout_s * 1000:.0f} ms")
        if fails:
            return _error(request_id, "internal", f"{model.name} failed (simulated failure)")
        answer = f"{model.name}: {task} {params.get('text') or params.get('ref') or ''}"[:200]
        return RpcResponse(id=request_id, ok=True, result={"output": answer, "joules": joules})

    # -- power states: the agent's `sleep` and the wake signal ----------------------------------

    def _sleep(self, s: DeviceState, request_id: str | None) -> RpcResponse:
        if s.spec.wake == "none":
            return _error(request_id, "unavailable", "no sleep command configured")
        if s.running or not s.record.online:
            return _error(request_id, "busy", f"{s.running} calls running")
        s.asleep, s.record.online, s.record.sleeping = True, False, True
        self.fleet_view.refresh()
        self.on_awake(s.spec.id, False)
        return RpcResponse(id=request_id, ok=True, result={"sleeping": True})

    async def send(self, device_id: str, wake: WakeMethod) -> str:
        """The wake signal (hub/power/manager.py's Signals): back after its wake latency, having
        drawn its wake energy."""
        s = self.devices[device_id]
        if not s.asleep or s.waking:
            return "already awake or waking"
        d = s.spec
        s.wakes += 1
        if d.wake_failure_rate and s.rng.random() < d.wake_failure_rate:
            return f"simulated {d.wake} wake, never answered"
        s.waking = True
        self._draw(s, d.wake_j if d.wake_j is not None else d.active_w * d.wake_ms / 1000, plugged(d, self.clock.time()))

        def back() -> None:
            s.asleep = s.waking = False
            s.record.online, s.record.sleeping = True, False
            self.fleet_view.refresh()
            self.on_awake(device_id, True)
        asyncio.get_running_loop().call_later(d.wake_ms / 1000, back)
        return f"simulated {d.wake} wake"

    def _spend(self, s: DeviceState, joules: float, request_id: str | None) -> None:
        d = s.spec
        on_charger = plugged(d, self.clock.time())
        self._draw(s, joules, on_charger)
        if s.battery_pct is None:
            return
        was = s.battery_pct
        self._battery(s, -joules)
        if was >= d.battery_floor_pct > s.battery_pct and not on_charger \
                and self.requesters.get(request_id or "") != d.id:
            s.floor_violations += 1  # drained below its floor for another device's task


def _error(request_id: str | None, code: str, message: str) -> RpcResponse:
    return RpcResponse(id=request_id, ok=False, error=RpcErrorBody(code=code, message=message))
