"""Power planning: the planner's decision time, and how late a planned wake's magic packet is.

    .venv/bin/python benchmarks/power.py [--rounds 2000] [--wakes 20] [--json]

1. ``plan_power()`` on fleets of 100 and 1,000 devices (the agent profiles' figures, a third of
   them able to sleep, half of those asleep), with an hour of demand and 2,000 deferred requests
   spread over the next 12 hours. Baseline in the same run: building the planner's inputs
   (what the manager does before each plan).
2. The live path of a deferred batch: a real ``PowerManager`` on the system clock with the real
   Wake-on-LAN sender, a registry holding one sleeping device that announces Wake-on-LAN to a
   UDP listener on loopback, and a deferred request routed to it. Measured: from the moment the
   plan says to wake (the window's start less its wake lead) to the magic packet's arrival at the
   listener. Each round the device "comes back" (its status goes online) and sleeps again.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, summary  # noqa: E402

from hub.agent.profiles import PROFILES  # noqa: E402
from hub.bus import EventBus  # noqa: E402
from hub.capability import PROTOCOL_VERSION, Capability, LatencyMs, ModelSpec, Power, PowerSource, Tier, WakeMethod  # noqa: E402
from hub.energy.model import ModeThresholds  # noqa: E402
from hub.energy.snapshot import compute_snapshot  # noqa: E402
from hub.power.manager import PowerManager  # noqa: E402
from hub.power.plan import DeferredWork, Demand, DevicePower, PowerConfig, plan_power  # noqa: E402
from hub.power.signals import WakeSignals, is_magic_packet  # noqa: E402
from hub.registry import DeviceRegistry  # noqa: E402
from hub.router.model import TaskRequest  # noqa: E402
from hub.router.fleet import fleet_snapshot  # noqa: E402
from hub.router.route import RouterConfig, route  # noqa: E402
from hub.rpc import RpcResponse  # noqa: E402

PROFILE_NAMES = ("watch", "phone", "laptop", "gpu-box")
MAC = "02:00:00:00:00:42"


def make_devices(n: int, now: float) -> list[DevicePower]:
    out = []
    for i in range(n):
        p = PROFILES[PROFILE_NAMES[i % 4]].power
        sleeps = i % 3 == 0
        out.append(DevicePower(f"d{i}", "sleeping" if sleeps and i % 2 else "awake",
                               "" if sleeps else "it announces no sleep command", p.idle_w or 1.0, 2.0, 15_000,
                               7000, 300, i % 5 == 0, now - 60 * (i % 20), 150 + i % 100, 0.25))
    return out


def planner(n: int, rounds: int) -> dict[str, object]:
    now = time.time()
    devices = make_devices(n, now)
    demand = {d.id: Demand(20 + i % 50, 0.5 * (i % 200)) for i, d in enumerate(devices)}
    deferred: dict[str, list[DeferredWork]] = {}
    for i in range(2000):
        work = DeferredWork(now + (i * 37) % (12 * 3600), f"d{(i * 7) % n}", 1.0 + i % 4)
        deferred.setdefault(work.device_id, []).append(work)
    for works in deferred.values():
        works.sort(key=lambda w: w.run_at)
    cfg, router = PowerConfig(), RouterConfig()
    plan_s, inputs_s = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        fresh = [replace(d, busy=d.busy) for d in devices]  # what the manager builds each round
        t1 = time.perf_counter()
        plan_power(fresh, demand, deferred, now + r, cfg, router)
        t2 = time.perf_counter()
        inputs_s.append(t1 - t0)
        plan_s.append(t2 - t1)
    return {"plan_s": summary(plan_s), "inputs_s": summary(inputs_s)}


class Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if is_magic_packet(data, MAC):
            self.arrivals.put_nowait(time.time())


class NoSleep:
    """The device is already asleep; nothing here asks it to sleep."""

    async def call(self, *_a: object, **_k: object) -> RpcResponse:
        return RpcResponse(id=None, ok=True, result={})


async def planned_wake(manager: PowerManager) -> float:
    """When the plan made after the deferral says the device is to be woken (its wake lead is
    the wake latency the manager last observed, or the announced one)."""
    while True:
        plan = manager.plan
        d = next((d for d in plan.decisions if d.device_id == "box"), None) if plan is not None else None
        if d is not None and d.action == "stay_asleep" and d.at > plan.now:  # type: ignore[union-attr]
            return d.at
        await asyncio.sleep(0.001)


async def wake_lag(rounds: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    transport, listener = await loop.create_datagram_endpoint(Listener, sock=sock)
    bus = EventBus()
    registry = DeviceRegistry(bus, None)
    wake_ms = 200.0
    cap = Capability(v=PROTOCOL_VERSION, id="box", name="box", tier=Tier.medium,
                     power=Power(source=PowerSource.mains, idle_w=48, active_w=400, sleep_w=3, wake_latency_ms=wake_ms,
                                 allow_sleep_after_s=300,
                                 wake=WakeMethod(kind="wol", mac=MAC, broadcast="127.0.0.1", ports=[port])),
                     models=[ModelSpec(name="m", runtime="ollama", tasks=["summarize"], quality=0.8,
                                       latency_ms=LatencyMs(p50=1000, p95=2000))])
    registry.announce(cap, "mqtt")
    registry.liveness("box", "mqtt", False, sleeping=True)
    energy = compute_snapshot(time.time(), {}, {}, [], ModeThresholds())
    router = RouterConfig()
    manager = PowerManager(PowerConfig(wol_repeats=1), router, records=registry.all, energy=lambda: energy,
                           rpc=NoSleep(), signals=WakeSignals(None, [], repeats=1))
    runner = asyncio.create_task(manager.run())
    lags = []
    try:
        for i in range(rounds):
            registry.liveness("box", "mqtt", False, sleeping=True)
            manager.observed("box", False)
            run_at = time.time() + 0.5 + wake_ms / 1000
            fleet = fleet_snapshot(registry.all(), energy)
            req = TaskRequest(id=f"r{i}", task="summarize", text="the week's notes", budget_ms=60_000,
                              deadline=run_at + 3600)
            manager.decided(req, route(req, fleet, router), run_at)
            planned = await asyncio.wait_for(planned_wake(manager), 30)
            arrived = await asyncio.wait_for(listener.arrivals.get(), 30)
            lags.append(arrived - planned)
            # The device comes back; the request runs and is released.
            registry.liveness("box", "mqtt", True)
            manager.observed("box", True)
            manager.released(req.id)
            while manager.devices["box"].waking_since is not None:  # the wake sees it back
                await asyncio.sleep(0.01)
    finally:
        runner.cancel()
        await manager.aclose()
        transport.close()
    return {"wake_lag_s": summary(lags), "rounds": rounds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--wakes", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures: dict[str, object] = {str(n): planner(n, args.rounds if n <= 100 else max(50, args.rounds // 10))
                                  for n in (100, 1000)}
    figures["live"] = asyncio.run(wake_lag(args.wakes))
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
