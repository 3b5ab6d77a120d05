"""The ``wakeword`` runtime: does a clip contain the wake word? (hub/voice/wakeword.py has the
models and the detector.) A fresh detector per call, so that nothing of one clip leaks into the
next (a detector costs about a millisecond to create)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from ...voice.audio import SAMPLE_RATE, Audio, AudioError, decode_audio
from ...voice.wakeword import CLIP_TAIL_S, WakeWordDetector, WakeWordModelError, locate_manifest
from .base import Emit, ExecError, InferCall, InferResult


class WakeWordExecutor:
    runtime = "wakeword"

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = Path(models_dir) if models_dir is not None else None

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        name = call.model.name
        if call.task != "wakeword":
            raise ExecError("bad_request", f"{name} spots a wake word; it does not do {call.task!r}")
        if call.data is None:
            raise ExecError("bad_request", f"{name} listens to audio sent inline in data (a WAV, or raw 16-bit PCM "
                                           f"with the pcm_rate option); the request has none")
        rate = call.options.get("pcm_rate")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool)):
            raise ExecError("bad_request", f"pcm_rate must be an integer (Hz), not {rate!r}")
        try:
            locate_manifest(name, self.models_dir)  # cheap: a missing model is said before decoding
        except WakeWordModelError as exc:
            raise ExecError(exc.code, exc.message) from None
        audio = await asyncio.to_thread(_decode, call.data, rate)
        return await asyncio.to_thread(self._detect, name, audio)

    def _detect(self, name: str, audio: Audio) -> InferResult:
        t0 = time.perf_counter()
        try:
            detector = WakeWordDetector(name, self.models_dir)
        except WakeWordModelError as exc:
            raise ExecError(exc.code, exc.message) from None
        try:
            at = detector.process(audio.samples)
            if at is None:
                tail = detector.process(np.zeros(int(CLIP_TAIL_S * SAMPLE_RATE), dtype=np.int16))
                # Heard in the tail: the wake word ended the clip; say when the clip ended.
                at = None if tail is None else min(tail, audio.duration_s)
            prob = detector.max_probability
        finally:
            detector.close()
        compute_ms = (time.perf_counter() - t0) * 1000.0
        output = {"detected": at is not None, "wake_word": name, "at_s": at, "probability": round(prob, 4)}
        return InferResult(output=output, confidence=min(1.0, max(0.0, prob)),
                           stats={"audio_s": audio.duration_s, "compute_ms": compute_ms})

    async def aclose(self) -> None:
        """Nothing is kept between calls."""


def _decode(data: bytes, pcm_rate: int | None) -> Audio:
    try:
        return decode_audio(data, where="data", pcm_rate=pcm_rate)
    except AudioError as exc:
        raise ExecError("too_large" if exc.code == "too_long" else "bad_request", exc.message) from None
