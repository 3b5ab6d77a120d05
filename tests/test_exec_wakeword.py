"""The wakeword executor and the streaming detector with the real microWakeWord okay_nabu model
(bundled with pymicro-wakeword), on speech synthesised by espeak-ng and flite."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hub.agent.executors.base import ExecError, InferCall
from hub.agent.executors.wakeword import WakeWordExecutor
from hub.voice.wakeword import BUNDLED, WakeWordDetector, WakeWordModelError, _package_dir
from hub.capability import ModelSpec
from hub.voice.audio import SAMPLE_RATE, decode_audio
from tests.voice_fixtures import speak

if _package_dir() is None:
    pytest.fail("the wakeword tests need pymicro-wakeword (pip install pymicro-wakeword)", pytrace=False)

OKAY_NABU = ModelSpec(name="okay_nabu", runtime="wakeword", tasks=["wakeword"])
PHRASE = "okay nabu, turn on the lights"
#: Voices that say "okay nabu" so that the model hears it (measured here: every espeak-ng en-us
#: rate from 130 to 175 and these flite voices detect; espeak-ng's en-us+f3 mostly does not).
VOICES = [("espeak-ng:en-us", 130), ("espeak-ng:en-us", 175), ("espeak-ng:en-us+m3", 160), ("flite:slt", None),
          ("flite:kal", None), ("flite:rms", None), ("flite:awb", None)]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("wake")
    out: dict[str, bytes] = {}
    for voice, rate in VOICES:
        key = f"{voice}@{rate}"
        out[key] = speak(PHRASE, voice, d / f"{voice.replace(':', '-')}-{rate}.wav", rate).read_bytes()
        # The wake word alone, same voice and rate: where the phrase's "okay nabu" ends.
        out[key + " alone"] = speak("okay nabu", voice, d / f"alone-{voice.replace(':', '-')}-{rate}.wav",
                                    rate).read_bytes()
    out["other"] = speak("turn on the kitchen lights and play some music", "espeak-ng:en-us",
                         d / "other.wav").read_bytes()
    return out


def call(data: bytes | None, model: ModelSpec = OKAY_NABU, **options: object) -> InferCall:
    return InferCall(id=f"t-{time.monotonic_ns()}", task="wakeword", model=model, data=data, options=dict(options))


@pytest.mark.parametrize(("voice", "rate"), VOICES)
async def test_the_wake_word_is_detected_where_it_is_said(speech: dict[str, bytes], voice: str,
                                                          rate: int | None) -> None:
    key = f"{voice}@{rate}"
    r = await WakeWordExecutor(None).run(call(speech[key]))
    out = r.output
    assert out["detected"] is True and out["wake_word"] == "okay_nabu", f"{key}: {out}"
    said_by = decode_audio(speech[key + " alone"]).duration_s
    # Within the phrase: after "okay", by the end of "nabu" plus the model's averaging (150 ms).
    assert 0.4 < out["at_s"] <= said_by + 0.15, f"{key}: detected at {out['at_s']} s, 'okay nabu' ends by {said_by:.2f} s"
    assert out["at_s"] < r.stats["audio_s"] - 0.5, "before the rest of the sentence"
    assert 0.85 < out["probability"] <= 1.0 and r.confidence == pytest.approx(out["probability"], abs=1e-4)


async def test_a_sentence_without_the_wake_word(speech: dict[str, bytes]) -> None:
    r = await WakeWordExecutor(None).run(call(speech["other"]))
    assert r.output == {"detected": False, "wake_word": "okay_nabu", "at_s": None,
                        "probability": r.output["probability"]}
    assert r.output["probability"] < 0.5 and r.stats["audio_s"] > 2


async def test_the_wake_word_ending_the_clip_is_still_heard(tmp_path: Path) -> None:
    """flite's "okay nabu" alone ends 60 ms after the word: the model's averaging window has not
    filled by then, so the executor listens to a little silence after the clip."""
    data = speak("okay nabu", "flite:kal", tmp_path / "alone.wav").read_bytes()
    detector = WakeWordDetector("okay_nabu")
    assert detector.process(decode_audio(data).samples) is None, "not within the clip itself"
    r = await WakeWordExecutor(None).run(call(data))
    assert r.output["detected"] and r.output["at_s"] == pytest.approx(r.stats["audio_s"], abs=0.001)


async def test_calls_do_not_share_state(speech: dict[str, bytes]) -> None:
    ex = WakeWordExecutor(None)
    key = "flite:slt@None"
    first = await ex.run(call(speech[key]))
    nothing = await ex.run(call(speech["other"]))
    again = await ex.run(call(speech[key]))
    assert first.output == again.output and not nothing.output["detected"]


async def test_unknown_and_broken_models(tmp_path: Path, speech: dict[str, bytes]) -> None:
    ex = WakeWordExecutor(tmp_path)
    with pytest.raises(ExecError) as info:
        await ex.run(call(speech["other"], ModelSpec(name="hey_google", runtime="wakeword", tasks=["wakeword"])))
    assert info.value.code == "model_missing"
    assert str(tmp_path / "hey_google.tflite") in info.value.message and "okay_nabu" in info.value.message
    # A model file with no manifest beside it.
    (tmp_path / "mine.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(ExecError, match="no microWakeWord manifest mine.json") as info:
        await ex.run(call(speech["other"], ModelSpec(name="mine", runtime="wakeword", tasks=["wakeword"])))
    assert info.value.code == "model_missing"
    # Not a TensorFlow Lite model: refused, where pymicro-wakeword alone would crash the process.
    manifest = (_package_dir() / "models" / "okay_nabu.json").read_text().replace("okay_nabu.tflite", "mine.tflite")
    (tmp_path / "mine.json").write_text(manifest)
    with pytest.raises(ExecError, match="not a valid TensorFlow Lite model") as info:
        await ex.run(call(speech["other"], ModelSpec(name="mine", runtime="wakeword", tasks=["wakeword"])))
    assert info.value.code == "unavailable"
    with pytest.raises(ExecError) as info:
        await ex.run(call(b"RIFF\x00\x00"))
    assert info.value.code == "bad_request" and "not a WAV file" in info.value.message


async def test_a_users_copy_of_a_model(tmp_path: Path, speech: dict[str, bytes]) -> None:
    """``<models_dir>/<name>.tflite`` with its manifest, here the bundled okay_nabu under a new name."""
    models = _package_dir() / "models"
    shutil.copy(models / "okay_nabu.tflite", tmp_path / "kitchen_nabu.tflite")
    (tmp_path / "kitchen_nabu.json").write_text(
        (models / "okay_nabu.json").read_text().replace("okay_nabu.tflite", "kitchen_nabu.tflite"))
    spec = ModelSpec(name="kitchen_nabu", runtime="wakeword", tasks=["wakeword"])
    r = await WakeWordExecutor(tmp_path).run(call(speech["flite:rms@None"], spec))
    assert r.output["detected"] and r.output["wake_word"] == "kitchen_nabu"


def test_every_bundled_model_loads() -> None:
    silence = np.zeros(SAMPLE_RATE, np.int16)
    for name in BUNDLED:
        detector = WakeWordDetector(name)
        assert detector.process(silence) is None and detector.max_probability < 0.5, name
        detector.close()
    with pytest.raises(WakeWordModelError, match="no wake word model 'okay_google'"):
        WakeWordDetector("okay_google")


@pytest.mark.parametrize("piece_ms", [10, 37, 1000])
def test_streaming_gives_the_same_answer_in_any_pieces(speech: dict[str, bytes], piece_ms: int) -> None:
    samples = decode_audio(speech["espeak-ng:en-us@130"]).samples
    whole = WakeWordDetector("okay_nabu")
    at = whole.process(samples)
    assert at is not None
    detector = WakeWordDetector("okay_nabu")
    n = SAMPLE_RATE * piece_ms // 1000
    times = [t for i in range(0, len(samples), n) if (t := detector.process(samples[i:i + n])) is not None]
    assert times == [at] and detector.detections == [at]
    assert detector.max_probability == whole.max_probability
    # reset: a fresh start, the clock at zero, the same answer again.
    detector.reset()
    assert detector.process(samples) == at and detector.detections == [at]
    with pytest.raises(ValueError, match="int16"):
        detector.process(samples.astype(np.float32))


def test_a_stream_with_the_wake_word_twice(speech: dict[str, bytes]) -> None:
    """One detection per utterance: the probability dips and rises within one "okay nabu", the
    detector does not fire twice for it, but it does for the next one."""
    samples = decode_audio(speech["espeak-ng:en-us@130"]).samples
    gap = np.zeros(SAMPLE_RATE, np.int16)
    detector = WakeWordDetector("okay_nabu")
    for piece in (samples, gap, samples, gap):
        detector.process(piece)
    first = WakeWordDetector("okay_nabu").process(samples)
    assert first is not None and len(detector.detections) == 2
    assert detector.detections[0] == first
    assert detector.detections[1] == pytest.approx(first + (len(samples) + len(gap)) / SAMPLE_RATE, abs=0.05)
