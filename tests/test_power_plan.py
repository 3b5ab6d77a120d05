"""The pure power planner and the router's view of a sleeping device (issue 16): when a device
sleeps and wakes, and why; a wake's latency and energy in routing; the capability schema's
power states. No I/O: values in, decisions out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from hub.capability import Power, PowerSource, WakeMethod
from hub.power.plan import (NO_ALTERNATIVE, WAKE_AHEAD, DeferredWork, Demand, DevicePower, PowerConfig, plan_power,
                            readiness, score_per_joule)
from hub.router.model import TaskRequest
from hub.router.route import RouterConfig, route

from .test_router import CFG, cloud, fleet, view

NOW = 1_800_000_000.0
ROUTER = RouterConfig()
CONF = PowerConfig()
BOX = DevicePower(id="gpu-box", state="awake", cannot_sleep="", idle_w=48, sleep_w=3, wake_ms=15_000, wake_j=7000,
                  allow_sleep_after_s=300, busy=0, idle_since=NOW - 600, g_per_kwh=200, price_per_kwh=0.30)


def decide(d: DevicePower, demand: Demand | None = None, work: list[DeferredWork] | None = None,
           cfg: PowerConfig = CONF) -> tuple[str, float, tuple[str, ...]]:
    plan = plan_power([d], {d.id: demand} if demand else {}, {d.id: work or []}, NOW, cfg, ROUTER)
    (x,) = plan.decisions
    return x.action, x.at, x.reasons


def idle_per_hour(d: DevicePower) -> float:
    return (d.idle_w - d.sleep_w) * 3600 * score_per_joule(d, ROUTER)


def test_an_idle_box_nobody_needs_is_put_to_sleep_with_its_reasons() -> None:
    action, _, reasons = decide(BOX)
    assert action == "sleep"
    assert "worth 0/h (0 decisions" in reasons[0] and "45 W above sleep" in reasons[0]


def test_it_stays_awake_while_busy_or_before_its_idle_time() -> None:
    assert decide(replace(BOX, busy=2))[0] == "stay_awake"
    action, at, reasons = decide(replace(BOX, idle_since=NOW - 100))
    assert action == "stay_awake" and at == NOW + 200 and "sleeps only after 300 s" in reasons[0]


def test_readiness_worth_its_idle_draw_keeps_it_awake_and_less_does_not() -> None:
    hourly = idle_per_hour(BOX)
    assert decide(BOX, Demand(40, hourly * 1.01))[0] == "stay_awake"
    assert decide(BOX, Demand(40, hourly * 0.99))[0] == "sleep"
    # Asleep, demand must also repay the wake before it is woken for it.
    asleep = replace(BOX, state="sleeping")
    assert decide(asleep, Demand(40, hourly * 1.01))[0] == "stay_asleep"
    assert decide(asleep, Demand(40, hourly * 2))[0] == "wake"


def test_dirty_expensive_power_makes_sleep_come_sooner() -> None:
    demand = Demand(10, idle_per_hour(BOX) * 1.5)
    assert decide(BOX, demand)[0] == "stay_awake"
    assert decide(replace(BOX, g_per_kwh=400, price_per_kwh=0.60), demand)[0] == "sleep"


def test_a_sleeping_box_is_woken_ahead_of_a_worthwhile_batch() -> None:
    asleep = replace(BOX, state="sleeping")
    batch = [DeferredWork(NOW + 3600 + i, "gpu-box", 3.0) for i in range(30)]
    action, at, reasons = decide(asleep, work=batch)
    assert action == "stay_asleep" and at == pytest.approx(NOW + 3600 - 15 * WAKE_AHEAD)
    assert "30 deferred requests at 3600 s" in reasons[0] and "woken 18.8 s ahead" in reasons[0]
    # Once that moment has come, the decision is to wake.
    later = plan_power([asleep], {}, {"gpu-box": batch}, at, CONF, ROUTER)
    assert later.decisions[0].action == "wake"
    # The plan is made again no later than the wake, and every plan_every_s before it.
    assert plan_power([asleep], {}, {"gpu-box": batch}, NOW, CONF, ROUTER).next_at == NOW + CONF.plan_every_s
    assert plan_power([asleep], {}, {"gpu-box": batch}, NOW, PowerConfig(plan_every_s=3600),
                      ROUTER).next_at == at


def test_a_batch_worth_less_than_the_wake_stays_asleep() -> None:
    asleep = replace(BOX, state="sleeping")
    action, _, reasons = decide(asleep, work=[DeferredWork(NOW + 600, "gpu-box", 0.01)])
    assert action == "stay_asleep" and "less than waking it" in reasons[0]


def test_work_beyond_the_lookahead_or_after_the_batch_span_is_not_this_batch() -> None:
    asleep = replace(BOX, state="sleeping")
    far = [DeferredWork(NOW + CONF.lookahead_s + 60, "gpu-box", 100.0)]
    assert decide(asleep, work=far)[0] == "stay_asleep"
    split = [DeferredWork(NOW + 600, "gpu-box", 5.0)] * 20 + [DeferredWork(NOW + 600 + CONF.batch_span_s + 1,
                                                                             "gpu-box", 5.0)] * 20
    _, _, reasons = decide(asleep, work=split)
    assert reasons[0].startswith("20 deferred requests at 600 s are worth 100"), "the first window only"


def test_a_batch_due_soon_keeps_an_awake_box_awake() -> None:
    # Sleeping 100 s saves 4.5 kJ; the wake costs 7 kJ: not worth it.
    action, _, reasons = decide(BOX, work=[DeferredWork(NOW + 100, "gpu-box", 5.0)])
    assert action == "stay_awake" and "break-even 156 s" in reasons[0]


def test_what_cannot_sleep_is_left_awake_and_says_why() -> None:
    action, _, reasons = decide(replace(BOX, cannot_sleep="it announces no sleep command"))
    assert action == "stay_awake" and reasons == ("it announces no sleep command",)
    assert decide(BOX, cfg=PowerConfig(enabled=False))[0] == "stay_awake"
    waking = decide(replace(BOX, state="waking", waking_since=NOW - 5, wake_timeout_s=30))
    assert waking[0] == "waking" and waking[1] == NOW + 25


def test_planner_config_refuses_bad_switch_filters() -> None:
    with pytest.raises(ValidationError, match="not an MQTT topic filter"):
        PowerConfig(switch_topics=["a/#/b"])
    assert PowerConfig(switch_topics=["zigbee2mqtt/+/set"]).switch_topics == ["zigbee2mqtt/+/set"]


# -- the router's view of a sleeping device ---------------------------------------------------------

def test_an_interactive_task_does_not_wait_for_a_wake_and_a_patient_one_may() -> None:
    asleep = view("gpu-box", asleep=True, wake_ms=20_000, wake_j=500)
    home = fleet(view("laptop"), asleep, cloud())
    quick = route(TaskRequest(task="code", text="write a function", budget_ms=2000), home, CFG)
    assert quick.chosen is not None and quick.chosen.device_id != "gpu-box"
    box = next(c for c in quick.chain if c.device_id == "gpu-box")
    assert not box.within_budget and box.wake_ms == 20_000 and box.wake_score > 0
    assert any("asleep: waking it adds 20000 ms" in r for r in box.reasons)
    patient = route(TaskRequest(task="code", text="write a function", budget_ms=60_000, local_only=True), home, CFG)
    assert patient.chosen is not None and patient.chosen.device_id == "gpu-box" and patient.chosen.within_budget
    # The wake's energy is in the prediction.
    awake = route(TaskRequest(task="code", text="write a function", budget_ms=60_000, local_only=True),
                  fleet(view("laptop"), view("gpu-box"), cloud()), CFG)
    assert patient.chosen.joules == pytest.approx(awake.chosen.joules + 500)


def test_readiness_names_the_device_awake_would_win_and_by_how_much() -> None:
    asleep = view("gpu-box", asleep=True, wake_ms=20_000, wake_j=500)
    d = route(TaskRequest(task="code", text="write a function", budget_ms=60_000), fleet(view("laptop"), asleep,
                                                                                          cloud()), CFG)
    r = readiness(d)
    box = next(c for c in d.chain if c.device_id == "gpu-box")
    others = min(c.score for c in d.chain if c.device_id != "gpu-box")
    assert r is not None and r.device_id == "gpu-box"
    assert r.advantage == pytest.approx(others - (box.score - box.wake_score))
    alone = route(TaskRequest(task="code", text="x", budget_ms=60_000, local_only=True), fleet(asleep), CFG)
    assert readiness(alone) == readiness(alone) and readiness(alone).advantage == NO_ALTERNATIVE  # type: ignore[union-attr]
    cloud_only = route(TaskRequest(task="code", text="x"), fleet(cloud()), CFG)
    assert readiness(cloud_only) is None, "the cloud is always ready"


# -- the capability schema ------------------------------------------------------------------------

def test_wake_methods_are_validated_where_they_are_announced() -> None:
    with pytest.raises(ValidationError, match="needs the mac"):
        WakeMethod(kind="wol")
    with pytest.raises(ValidationError, match="not a LAN address"):
        WakeMethod(kind="wol", mac="02:00:00:00:00:01", broadcast="8.8.8.8")
    with pytest.raises(ValidationError, match="not an IPv4 address"):
        WakeMethod(kind="wol", mac="02:00:00:00:00:01", broadcast="lan")
    with pytest.raises(ValidationError, match="mac"):
        WakeMethod(kind="wol", mac="02:00:00:00:00")
    with pytest.raises(ValidationError, match="command_topic"):
        WakeMethod(kind="ha_switch")
    with pytest.raises(ValidationError, match="command_topic"):
        WakeMethod(kind="ha_switch", command_topic="plugs/#")
    p = Power(source=PowerSource.mains, idle_w=48, active_w=400, wake_latency_ms=10_000, allow_sleep_after_s=60,
              wake=WakeMethod(kind="wol", mac="02:00:00:00:00:01", broadcast="192.168.1.255"))
    assert p.can_sleep and p.wake_energy_j() == 4000
    assert not Power(source=PowerSource.mains, allow_sleep_after_s=60).can_sleep, "no way to wake it"
