"""The simulator: the hub's own dispatcher over simulated devices in virtual time, accounted the
same way for every policy, with an oracle bound; deterministic for a seed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.energy.series import Series
from hub.sim.devices import SimHome
from hub.sim.files import load_fleet, load_trace
from hub.sim.loop import LoopClock, run_virtual
from hub.simulate import DEFAULT_START, run_policy, simulate

from .conftest import ROOT

EXAMPLES = ROOT / "examples"
DATA = ROOT / "plugins" / "replay" / "data"
CARBON, SOLAR = DATA / "gb_ci_2020.csv", DATA / "gb_solar_2020.csv"
T0 = DEFAULT_START.timestamp()


@pytest.fixture(scope="module")
def day_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first day of the shipped week."""
    lines = [line for line in (EXAMPLES / "trace.jsonl").read_text().splitlines() if json.loads(line)["t"] < 86400]
    path = tmp_path_factory.mktemp("sim") / "day.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def day(day_trace: Path) -> dict:
    return simulate(EXAMPLES / "fleet.toml", day_trace, CARBON, SOLAR, seed=3)


def test_deterministic_for_a_seed(day: dict, day_trace: Path) -> None:
    again = simulate(EXAMPLES / "fleet.toml", day_trace, CARBON, SOLAR, seed=3)
    other = simulate(EXAMPLES / "fleet.toml", day_trace, CARBON, SOLAR, seed=4)
    assert day == again and day["policies"] != other["policies"]
    p = day["policies"]
    assert set(p) == {"always-cloud", "seed-rules", "local-first", "always-on", "sovereign"}
    assert all(v["tasks"] == day["tasks"] for v in p.values())
    assert p["always-cloud"]["task_cost"] > p["sovereign"]["task_cost"], "local layers save money"
    assert p["sovereign"]["deferred"] > 0 and p["sovereign"]["battery_floor_violations"] == 0


def test_policies_that_keep_devices_awake_pay_the_same_idle_draw_and_none_beats_the_oracle(day: dict) -> None:
    p, oracle = day["policies"], day["oracle"]
    idle = [v["idle_kwh"] for name, v in p.items() if name != "sovereign"]
    # A 48 W GPU box, a 6 W laptop (until its battery is flat), phones: ~1.3 kWh a day whoever routes.
    assert 1.0 < min(idle) and max(idle) - min(idle) < 0.02 * max(idle)
    # Power management puts the GPU box to sleep (3 W) when no work is worth its 48 W.
    sov = p["sovereign"]
    assert sov["idle_kwh"] < 0.8 * min(idle) and sov["asleep_h"]["gpu-box"] > 4 and sov["wakes"] >= 1
    assert p["always-on"]["wakes"] == 0 and p["always-on"]["asleep_h"] == {"gpu-box": 0.0}
    assert oracle["kwh"] - oracle["task_kwh"] < sov["idle_kwh"], "the bound's idle: asleep whenever idle"
    for name, v in p.items():
        assert v["kwh"] > v["idle_kwh"] and v["task_kwh"] > 0, name
        assert v["task_cost"] >= oracle["task_cost"] and v["task_gco2"] >= oracle["task_gco2"], name
        assert v["gap_to_oracle"]["task_cost_pct"] >= 0, name


def test_cli_json_and_table(day_trace: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hub", "simulate", "--fleet", str(EXAMPLES / "fleet.toml"),
                          "--trace", str(day_trace), "--policy", "sovereign", "--policy", "always-cloud", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["policies"]) == {"sovereign", "always-cloud"}
    assert set(data["oracle"]) >= {"cost", "gco2", "kwh"}
    for key in ("tasks", "cost", "kwh", "idle_kwh", "gco2", "p50_ms", "p95_ms", "slo_miss_pct",
                "quality_weighted_success", "quality_with_late", "late_answers", "unserved",
                "battery_floor_violations", "deferred", "mean_deferral_s", "gap_to_oracle"):
        assert key in data["policies"]["sovereign"], key


def test_bad_input_exits_2_with_file_and_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"t": 0, "task": "intent", "text": "lights off", "requester": "phone"}\n'
                     '{"t": 1, "task": "intent", "text": "lights on", "budget_ms": 0}\n')
    out = subprocess.run([sys.executable, "-m", "hub", "simulate", "--fleet", str(EXAMPLES / "fleet.toml"),
                          "--trace", str(trace)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and f"{trace}:2:" in out.stderr and "budget_ms" in out.stderr
    assert "Traceback" not in out.stderr


# -- small fleets: one behaviour each ------------------------------------------------------------

FLEET = """
[site]
solar_peak_w = 0
price_per_kwh = 0.30

[[devices]]
id = "box"
tier = "medium"
idle_w = 100
wake = "{wake}"
sleep_w = 2
wake_ms = 20000
wake_j = {wake_j}
allow_sleep_after_s = {allow}
wake_failure_rate = {wake_fail}
models = [{{ name = "m", runtime = "ollama", tasks = ["qa", "reason"], p50_ms = {p50}, p95_ms = {p95}, joules = 10, quality = 0.8, failure_rate = {fail} }}]

[[devices]]
id = "phone"
tier = "small"
power_source = "battery"
battery_wh = 10
battery_pct = {pct}
battery_floor_pct = 20
idle_w = 0
charge_w = 10
plugged_hours = [[23, 24]]
models = [{{ name = "t", runtime = "tflite", tasks = ["intent", "qa"], p50_ms = 5, p95_ms = 10, joules = 1, quality = 0.5 }}]
"""


def _run(tmp_path: Path, tasks: list[dict], policy: str = "sovereign", p50: float = 500, p95: float = 900,
         fail: float = 0.0, pct: float = 90, wake: str = "none", **power: float) -> dict:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(p50=p50, p95=p95, fail=fail, pct=pct, wake=wake,
                                  **{"wake_j": 2000, "allow": 300, "wake_fail": 0, **power}))
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    f = load_fleet(fleet)
    result, home = run_policy(policy, f, load_trace(trace, f), Series.load(CARBON, "Carbon Intensity"), None, T0, 1)
    return {**result.summary(), "home": home}


def test_a_failing_device_escalates_through_the_hubs_dispatcher(tmp_path: Path) -> None:
    """The box always fails: the dispatcher's chain moves on to the phone (escalation), as live."""
    out = _run(tmp_path, [{"t": 60, "task": "qa", "text": "why?", "budget_ms": 5000}], fail=1.0)
    assert out["unserved"] == 0 and out["escalations"] == 1
    assert out["quality_weighted_success"] == 50.0, "answered by the phone's 0.5 model"


def test_late_answers_earn_no_quality_and_unserved_tasks_no_latency(tmp_path: Path) -> None:
    late = _run(tmp_path, [{"t": 60, "task": "qa", "text": "why?", "budget_ms": 100, "quality_floor": 0.7}],
                p50=3000, p95=4000)
    assert late["late_answers"] == 1 and late["quality_weighted_success"] == 0 and late["quality_with_late"] == 80.0
    assert late["slo_miss_pct"] == 100.0
    # Only the box meets the floor, and it fails: counted unserved, not given 0 ms.
    none = _run(tmp_path, [{"t": 60, "task": "qa", "text": "why?", "budget_ms": 5000, "quality_floor": 0.7}],
                fail=1.0)
    assert none["unserved"] == 1 and none["p50_ms"] == 0.0 and none["slo_miss_pct"] == 100.0


def test_idle_draw_is_counted_for_the_whole_span(tmp_path: Path) -> None:
    out = _run(tmp_path, [{"t": 3600, "task": "intent", "text": "lights off"}])
    # 100 W from the start until the last task's end plus one step (3600 s + 300 s).
    assert out["idle_kwh"] == pytest.approx(100 * 3900 / 3.6e6, rel=0.01)
    assert out["gco2"] > 0 and out["cost"] == pytest.approx(out["kwh"] * 0.30, rel=0.01)


def test_batteries_step_in_time_and_a_device_at_its_floor_serves_nothing(tmp_path: Path) -> None:
    # The phone starts at its floor, off its charger (noon): even its own task goes elsewhere.
    out = _run(tmp_path, [{"t": 12 * 3600, "task": "qa", "text": "why?", "requester": "phone"}], pct=20)
    home = out["home"]
    assert out["unserved"] == 0 and out["quality_weighted_success"] == 80.0, "served by the box, not the phone"
    assert home.devices["phone"].record.online is False
    # Plugged in at 23:00, it charges through the night with no task to wake the clock.
    night = _run(tmp_path, [{"t": 30 * 3600, "task": "intent", "text": "lights off"}], pct=20)
    phone = night["home"].devices["phone"]
    assert phone.battery_pct == pytest.approx(100, abs=0.01) and phone.record.online


def test_a_burst_queues_on_the_models_slots(tmp_path: Path) -> None:
    """Nine questions at once on a box with one slot: they queue (p95 grows), none is lost; a
    tenth finds the queue full (8 per slot, dispatch.queue_per_slot) and is refused, as live."""
    tasks = [{"t": 60, "task": "qa", "text": f"why {i}?", "budget_ms": 20_000, "quality_floor": 0.7} for i in range(9)]
    out = _run(tmp_path, tasks, p50=1000, p95=1100)
    assert out["unserved"] == 0 and out["p95_ms"] > 8000, "the ninth waited for eight 1 s answers"
    tasks.append({"t": 60, "task": "qa", "text": "why 9?", "budget_ms": 20_000, "quality_floor": 0.7})
    assert _run(tmp_path, tasks, p50=1000, p95=1100)["unserved"] == 1


def test_virtual_loop_jumps_to_the_next_timer() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        clock = LoopClock(T0)
        await asyncio.sleep(7 * 86400)
        try:
            async with asyncio.timeout(5):
                await asyncio.sleep(60)
        except TimeoutError:
            pass
        return loop.time(), clock.time() - T0

    loop_time, wall = run_virtual(main())
    assert loop_time == pytest.approx(7 * 86400 + 5) and wall == pytest.approx(loop_time)


def test_home_reports_reach_the_router_as_the_registry_would(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(p50=500, p95=900, fail=0, pct=90, wake="none", wake_j=0, allow=0, wake_fail=0))
    f = load_fleet(fleet)

    async def main() -> tuple[set[str], float | None]:
        home = SimHome(f, Series.load(CARBON, "Carbon Intensity"), None, LoopClock(T0), __import__("random").Random(1))
        home.set_inputs(T0)
        home.step(0)
        view = home.fleet_view()
        phone = next(d for d in view.devices if d.id == "phone")
        return {d.id for d in view.devices}, phone.battery_pct

    ids, pct = run_virtual(main())
    assert ids == {"box", "phone"} and pct == 90


def test_deferrable_work_that_finds_the_slots_full_waits_for_them(tmp_path: Path) -> None:
    """Twenty at once with an hour to spare: the nine that fit queue, the rest wait for a free
    slot (retry_after_s) instead of failing `overloaded`, and all are served before the deadline."""
    tasks = [{"t": 60, "task": "qa", "text": f"why {i}?", "budget_ms": 20_000, "quality_floor": 0.7,
              "deadline_s": 3600} for i in range(20)]
    out = _run(tmp_path, tasks, p50=1000, p95=1100)
    assert out["unserved"] == 0 and out["deferred"] >= 11


def test_the_cache_lives_in_simulated_time(tmp_path: Path) -> None:
    """A question asked again ten minutes later comes from the cache; two hours later (qa answers
    live an hour) it is asked anew: the cache reads the dispatcher's clock, not the machine's."""
    ask = {"task": "qa", "text": "why is the sky blue?", "budget_ms": 5000, "quality_floor": 0.7}
    soon = _run(tmp_path, [{**ask, "t": 60}, {**ask, "t": 660}])
    late = _run(tmp_path, [{**ask, "t": 60}, {**ask, "t": 60 + 7200}])
    assert soon["cached"] == 1 and late["cached"] == 0


def test_a_hot_question_is_refined_by_a_better_model(tmp_path: Path) -> None:
    """The box is too slow for the budget, the phone answers (0.5); asked again, its kept answer
    is served and the box asked in the background; the third asking gets the box's (0.8)."""
    ask = {"task": "qa", "text": "why is the sky blue?", "budget_ms": 600}
    out = _run(tmp_path, [{**ask, "t": 60}, {**ask, "t": 120}, {**ask, "t": 180}])
    assert out["cached"] == 2 and out["quality_weighted_success"] == pytest.approx(100 * (0.5 + 0.5 + 0.8) / 3, abs=0.01)


# -- power states (issue 16) -----------------------------------------------------------------------

def test_an_idle_box_is_put_to_sleep_and_draws_its_sleep_power(tmp_path: Path) -> None:
    """Nothing for it for two hours: after its 300 s without work the planner asks it to sleep;
    from then on it draws 2 W, not 100 W. Kept awake (always-on), it draws 100 W throughout."""
    tasks = [{"t": 7200, "task": "intent", "text": "lights off"}]
    managed = _run(tmp_path, tasks, wake="wol")
    kept = _run(tmp_path, tasks, policy="always-on", wake="wol")
    box = managed["home"].devices["box"]
    assert box.asleep and box.record.sleeping and not box.record.online
    # Awake for 300 s (its allow_sleep_after) plus at most one planning round (30 s).
    assert 7500 - 330 <= box.asleep_s <= 7500 - 300
    assert kept["home"].devices["box"].asleep_s == 0
    assert managed["idle_kwh"] < 0.1 * kept["idle_kwh"]


def test_a_device_that_announces_no_wake_method_is_never_put_to_sleep(tmp_path: Path) -> None:
    out = _run(tmp_path, [{"t": 7200, "task": "intent", "text": "lights off"}], wake="none")
    assert out["home"].devices["box"].asleep_s == 0 and out["wakes"] == 0


def test_an_interactive_task_does_not_wait_for_a_wake_but_a_patient_one_does(tmp_path: Path) -> None:
    """The box sleeps (20 s to wake). A question with a 2 s budget goes to the phone at once; a
    reasoning task with a 60 s budget and a quality floor only the box meets wakes it and waits."""
    quick = _run(tmp_path, [{"t": 3600, "task": "qa", "text": "why?", "budget_ms": 2000}], wake="wol")
    assert quick["wakes"] == 0 and quick["waited_for_wake"] == 0 and quick["quality_weighted_success"] == 50.0
    patient = _run(tmp_path, [{"t": 3600, "task": "reason", "text": "prove it", "budget_ms": 60_000,
                               "quality_floor": 0.7}], wake="wol")
    assert patient["wakes"] == 1 and patient["waited_for_wake"] == 1 and patient["late_answers"] == 0
    assert patient["quality_weighted_success"] == 80.0 and 20_000 <= patient["p50_ms"] < 22_000


def test_a_deferred_batch_wakes_the_box_ahead_of_its_window(tmp_path: Path) -> None:
    """Twenty deferrable questions only the box meets: the box sleeps until the window, is woken
    its wake latency ahead, runs them without any waiting for the wake, and sleeps again."""
    # At 02:00, with four hours to spare: the grid is cleaner around 04:00 (GB, June 2020).
    tasks = [{"t": 7200 + i, "task": "qa", "text": f"summary {i}", "budget_ms": 20_000, "quality_floor": 0.7,
              "deadline_s": 4 * 3600} for i in range(20)]
    out = _run(tmp_path, tasks, wake="wol")
    box = out["home"].devices["box"]
    assert out["unserved"] == 0 and out["deferred"] == 20 and out["quality_weighted_success"] == 80.0
    assert out["wakes"] == 1 and out["waited_for_wake"] == 0, "woken ahead, not by the first request"
    assert box.asleep, "asleep again after the batch"


def test_a_device_that_never_comes_back_hands_the_task_to_the_next_candidate(tmp_path: Path) -> None:
    """A cheap wake makes the sleeping box the router's first choice (the phone's 0.5 is short of
    good enough); its wake is never answered: after its wake latency x 2 the phone answers, still
    within the minute, and the box is not offered again for a while (no second wait)."""
    ask = {"task": "qa", "text": "why?", "budget_ms": 60_000}
    out = _run(tmp_path, [{**ask, "t": 3600}, {**ask, "t": 3700}, {**ask, "t": 3800}], wake="wol", wake_j=1,
               allow=0, wake_fail=1)
    assert out["wakes"] == 1 and out["waited_for_wake"] == 1 and out["unserved"] == 0
    assert out["quality_weighted_success"] == 50.0 and out["late_answers"] == 0
    assert 40_000 <= out["p95_ms"] < 41_000 and out["p50_ms"] < 100, "one waited 2 x 20 s, the others did not"
