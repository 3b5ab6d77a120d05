"""Speech requests are priced by their audio's length; a request may name its model."""

from __future__ import annotations

import pytest

from hub.capability import LatencyMs, ModelSpec, Tier
from hub.router.model import REFERENCE_AUDIO_S, DeviceView, FleetSnapshot, TaskRequest
from hub.router.route import RouterConfig, route

TINY_EN = ModelSpec(name="whisper-tiny.en", runtime="whisper", tasks=["transcribe"],
                    latency_ms=LatencyMs(p50=300, p95=600), ms_per_audio_s=150, energy_j_per_call=0.5,
                    energy_j_per_audio_s=0.6, quality=0.7)
LARGE = ModelSpec(name="whisper-large-v3", runtime="simulated", tasks=["transcribe"],
                  latency_ms=LatencyMs(p50=700, p95=1500), energy_j_per_call=200, quality=0.92)


def device(id: str, tier: Tier, model: ModelSpec) -> DeviceView:
    return DeviceView(id=id, tier=tier, models=(model,), power_source="mains", battery_pct=None,
                      battery_floor_pct=0, charging=None, active_w=5, idle_w=1, energy_mode="prefer_local",
                      marginal_g_per_kwh=200, marginal_price_per_kwh=0.25)


FLEET = FleetSnapshot(1_800_000_000.0, (device("phone", Tier.tiny, TINY_EN), device("gpu", Tier.medium, LARGE)))


def candidate(decision, device_id: str):
    return next(c for c in decision.chain if c.device_id == device_id)


def test_per_second_figures_scale_latency_and_energy() -> None:
    d = route(TaskRequest(task="transcribe", audio_s=2.0, budget_ms=5000), FLEET, RouterConfig())
    phone = candidate(d, "phone")
    assert phone.p50_ms == pytest.approx(300 + 2 * 150)
    assert phone.p95_ms == pytest.approx(600 + 2 * 150)
    assert phone.joules == pytest.approx(0.5 + 2 * 0.6)
    assert phone.extra_ms == pytest.approx(300)
    assert any("2.0 s of audio: +300 ms" in r for r in phone.reasons)


def test_per_call_figures_cover_a_reference_clip() -> None:
    """A model that announced no per-second figures: its per-call ones stand for a 5 s clip."""
    short = route(TaskRequest(task="transcribe", audio_s=3.0), FLEET, RouterConfig())
    assert candidate(short, "gpu").p50_ms == pytest.approx(700)
    long = route(TaskRequest(task="transcribe", audio_s=REFERENCE_AUDIO_S * 3), FLEET, RouterConfig())
    gpu = candidate(long, "gpu")
    assert gpu.p50_ms == pytest.approx(700 * 3)
    assert gpu.joules == pytest.approx(200 * 3)


def test_long_audio_changes_the_choice() -> None:
    """A command goes to the phone; ten minutes of audio to whichever is faster per second."""
    short = route(TaskRequest(task="transcribe", audio_s=2.0, budget_ms=3000), FLEET, RouterConfig())
    assert short.chosen is not None and short.chosen.device_id == "phone"
    long = route(TaskRequest(task="transcribe", audio_s=600.0, budget_ms=88_000), FLEET, RouterConfig())
    # p95: phone 600 + 600 * 150 ms = 90.6 s; gpu 1500 + 595 * 140 ms = 84.8 s: only the gpu fits.
    assert long.chosen is not None and long.chosen.device_id == "gpu" and long.chosen.within_budget
    assert not candidate(long, "phone").within_budget


def test_a_request_may_name_its_model() -> None:
    d = route(TaskRequest(task="transcribe", audio_s=2.0, model="whisper-large-v3"), FLEET, RouterConfig())
    assert [c.model for c in d.chain] == ["whisper-large-v3"]
    none = route(TaskRequest(task="transcribe", audio_s=2.0, model="whisper-medium"), FLEET, RouterConfig())
    assert none.chosen is None
    assert "no device serves model 'whisper-medium' for this task" in none.reasons


def test_text_requests_are_not_affected() -> None:
    d = route(TaskRequest(task="transcribe"), FLEET, RouterConfig())
    assert candidate(d, "phone").p50_ms == pytest.approx(300)
    assert candidate(d, "phone").extra_ms == 0.0
