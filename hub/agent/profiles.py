"""Device profiles: let one machine stand in for a watch, a phone, a laptop or a GPU box.

A profile supplies the hardware and power figures and the models such a device typically
serves; everything else (MQTT, zeroconf, HTTP, RPC) is the real agent. Models of a profile use
the ``simulated`` runtime — they answer after the advertised latency and say that they are
simulated — except the intent and EEG-state classifiers, which are the real LiteRT models shipped in
``hub/agent/models`` (``models/intent``, ``models/eeg``). Figures are order-of-magnitude
estimates for the class of device, replaced by measurements once a model really runs:
- watch: a smartwatch battery holds about 1.2 Wh (308 mAh at 3.85 V, Apple Watch Series 9
  45 mm); a tiny intent model runs in a few ms on its NPU/CPU.
- gpu-box: NVIDIA RTX 4090, 24 GB, 450 W board power (NVIDIA's specification).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..capability import Accelerator, Hardware, LatencyMs, ModelSpec, Power, PowerSource, Tier


@dataclass(frozen=True)
class Profile:
    name: str
    tier: Tier
    hardware: Hardware
    power: Power
    models: tuple[ModelSpec, ...]


def _model(name: str, tasks: list[str], p50: float, p95: float, joules: float, quality: float,
           concurrency: int = 1, runtime: str = "simulated") -> ModelSpec:
    return ModelSpec(name=name, runtime=runtime, tasks=tasks, latency_ms=LatencyMs(p50=p50, p95=p95),
                     energy_j_per_call=joules, max_concurrency=concurrency, quality=quality)


PROFILES: dict[str, Profile] = {
    "watch": Profile(
        "watch", Tier.tiny,
        Hardware(cpu="wearable SoC (profile)", cores=2, ram_mb=1024),
        Power(source=PowerSource.battery, battery_pct=76, charging=False, idle_w=0.02, active_w=0.4,
              battery_floor_pct=30),
        (
            _model("intent-tiny", ["intent"], 4, 9, 0.002, 0.80, runtime="tflite"),
            _model("eeg-state-tiny", ["eeg"], 2, 5, 0.001, 0.75, runtime="tflite"),
        ),
    ),
    "phone": Profile(
        "phone", Tier.tiny,
        Hardware(cpu="phone SoC (profile)", cores=8, ram_mb=8192,
                 accelerator=Accelerator(kind="npu", name="phone NPU (profile)")),
        Power(source=PowerSource.battery, battery_pct=62, charging=False, idle_w=0.3, active_w=4.0),
        (
            _model("intent-tiny", ["intent"], 3, 7, 0.01, 0.82, runtime="tflite"),
            _model("minilm-embed", ["embed"], 12, 30, 0.05, 0.80),
            _model("whisper-tiny", ["transcribe"], 450, 900, 1.8, 0.70),
        ),
    ),
    "laptop": Profile(
        "laptop", Tier.small,
        Hardware(cpu="laptop CPU (profile)", cores=8, ram_mb=16384),
        Power(source=PowerSource.battery, battery_pct=88, charging=True, idle_w=6, active_w=30),
        (
            _model("smollm2-135m", ["summarize", "qa", "format", "draft", "intent", "classify"], 420, 900, 12, 0.55),
            _model("whisper-base", ["transcribe"], 600, 1200, 18, 0.80),
            _model("minilm-embed", ["embed"], 8, 20, 0.2, 0.80, concurrency=4),
        ),
    ),
    "gpu-box": Profile(
        "gpu-box", Tier.medium,
        Hardware(cpu="desktop CPU (profile)", cores=16, ram_mb=65536,
                 accelerator=Accelerator(kind="gpu", name="NVIDIA GeForce RTX 4090", memory_mb=24576)),
        Power(source=PowerSource.mains, idle_w=60, active_w=450),
        (
            _model("llama3.1:8b", ["summarize", "qa", "draft", "code", "reason", "format"], 900, 2500, 300, 0.80, 4),
            _model("qwen2.5-coder:14b", ["code"], 1600, 4000, 600, 0.85, 2),
            _model("whisper-large-v3", ["transcribe"], 700, 1500, 200, 0.92, 2),
        ),
    ),
}
