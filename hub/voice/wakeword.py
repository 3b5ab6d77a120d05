"""Does audio contain the wake word? microWakeWord models on the CPU, streaming.

The ModelSpec name is the wake word model: ``okay_nabu``, ``hey_jarvis``, ``alexa`` or
``hey_mycroft`` as bundled with pymicro-wakeword (Apache-2.0), or a model of the user's own,
``<models_dir>/<name>.tflite`` with its microWakeWord manifest ``<name>.json`` beside it.

The audio is cut into 10 ms frames, turned into the 40 log-mel features microWakeWord was trained
on (pymicro-features, the same front end as on an ESP32) and fed to the streaming model, which
keeps state between frames. A detection is the moment the model's averaged probability passes
the cutoff its manifest gives. :class:`WakeWordDetector` is that loop, synchronous and
streaming: the agent's ``wakeword`` runtime runs it over one clip (hub/agent/executors/wakeword.py)
and the voice plugin's Wyoming server over a live stream.

pymicro-wakeword drives TensorFlow Lite's C library through ctypes and does not check what it
gets back: a file that is not a valid model crashes the process. A user's model is therefore
opened once through the same library with the results checked (:func:`_verify_tflite`) before
pymicro-wakeword sees it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .audio import SAMPLE_RATE

#: Models bundled with pymicro-wakeword.
BUNDLED = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
#: microWakeWord's step: 10 ms of 16 kHz audio.
FRAME_SAMPLES = 160
#: After a detection the probability can dip under the cutoff and rise again within the same
#: utterance (measured: 0.98 s then 1.19 s on one "okay nabu"); a second detection needs this
#: long since the first, as well as the probability falling back under the cutoff.
REFRACTORY_S = 1.0
#: Silence fed after a clip: the model averages its last few outputs (150 ms for okay_nabu), so
#: a wake word ending right at the end of a clip is only detected once that window has filled
#: (flite's "okay nabu" alone, 1.13 s: not detected without it, at 1.19 s with it).
CLIP_TAIL_S = 0.3

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class WakeWordModelError(Exception):
    """A wake word model that cannot be used: ``model_missing`` or ``unavailable``."""

    def __init__(self, code: Literal["model_missing", "unavailable"], message: str) -> None:
        super().__init__(message)
        self.code: Literal["model_missing", "unavailable"] = code
        self.message = message


def _package_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("pymicro_wakeword")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_manifest(name: str, models_dir: Path | None = None) -> Path:
    """The manifest of wake word model ``name``: the user's copy in ``models_dir`` first (so a
    retrained okay_nabu can replace the bundled one), then the bundled models."""
    if not _NAME.match(name) or ".." in name:
        raise WakeWordModelError("model_missing", f"no wake word model {name!r}: not a usable model name")
    looked: list[str] = []
    if models_dir is not None:
        model, manifest = Path(models_dir) / f"{name}.tflite", Path(models_dir) / f"{name}.json"
        if model.is_file():
            if not manifest.is_file():
                raise WakeWordModelError("model_missing", f"wake word model {model} has no microWakeWord manifest "
                                                          f"{manifest.name} beside it")
            return manifest
        looked.append(str(model))
    if name in BUNDLED:
        pkg = _package_dir()
        if pkg is not None and (pkg / "models" / f"{name}.json").is_file():
            return pkg / "models" / f"{name}.json"
        looked.append("pymicro-wakeword's bundled models (not installed: pip install pymicro-wakeword)")
    else:
        looked.append(f"the bundled models ({', '.join(BUNDLED)})")
    raise WakeWordModelError("model_missing", f"no wake word model {name!r}: looked for {'; '.join(looked)}")


@dataclass(frozen=True, slots=True)
class _Manifest:
    wake_word: str
    model: Path
    cutoff: float
    window: int


def _read_manifest(path: Path) -> _Manifest:
    """What the detector needs from a microWakeWord manifest; refuse one it would misread."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.get("type", "micro") != "micro":
            raise ValueError(f"type {config.get('type')!r}, not a microWakeWord model ('micro')")
        micro = config["micro"]
        model = path.parent / str(config["model"])
        cutoff, window = float(micro["probability_cutoff"]), int(micro["sliding_window_size"])
        wake_word = str(config["wake_word"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WakeWordModelError("unavailable", f"{path}: not a usable microWakeWord manifest: {exc}") from None
    if model.parent.resolve() != path.parent.resolve():
        raise WakeWordModelError("unavailable", f"{path}: its model must be a file beside it, not {config['model']!r}")
    if not model.is_file():
        raise WakeWordModelError("model_missing", f"{path} names {model.name}, which is not there")
    if not 0.0 < cutoff < 1.0 or not 1 <= window <= 100:
        raise WakeWordModelError("unavailable", f"{path}: probability_cutoff {cutoff} or sliding_window_size "
                                                f"{window} out of range")
    return _Manifest(wake_word, model, cutoff, window)


def _tflite_c_library() -> Path:
    pkg = _package_dir()
    found = sorted((pkg / "lib").glob("*tensorflowlite_c.*")) if pkg is not None else []
    if not found:
        raise WakeWordModelError("unavailable", "pymicro-wakeword's TensorFlow Lite C library is not installed "
                                                "(pip install pymicro-wakeword)")
    return found[0]


#: Model files already checked, by (path, size, mtime): checking costs a model load.
_verified: set[tuple[str, int, int]] = set()


def _verify_tflite(model: Path) -> None:
    """Open ``model`` with TensorFlow Lite's C library and check every pointer it returns, which
    pymicro-wakeword does not do: it would crash the process on a bad file instead."""
    st = model.stat()
    key = (str(model.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    from pymicro_wakeword.wakeword import TfLiteWakeWord

    lib: Any = TfLiteWakeWord(_tflite_c_library()).lib
    handle = lib.TfLiteModelCreateFromFile(str(model.resolve()).encode("utf-8"))
    if not handle:
        raise WakeWordModelError("unavailable", f"{model}: not a valid TensorFlow Lite model")
    try:
        interpreter = lib.TfLiteInterpreterCreate(handle, None)
        if not interpreter:
            raise WakeWordModelError("unavailable", f"{model}: TensorFlow Lite cannot run it (unsupported operations?)")
        try:
            if lib.TfLiteInterpreterAllocateTensors(interpreter) != 0:
                raise WakeWordModelError("unavailable", f"{model}: TensorFlow Lite cannot allocate its tensors")
            lib.TfLiteInterpreterGetInputTensorCount.argtypes = [ctypes.c_void_p]
            lib.TfLiteInterpreterGetInputTensorCount.restype = ctypes.c_int32
            if lib.TfLiteInterpreterGetInputTensorCount(interpreter) < 1:
                raise WakeWordModelError("unavailable", f"{model}: the model has no input")
        finally:
            lib.TfLiteInterpreterDelete(interpreter)
    finally:
        lib.TfLiteModelDelete(handle)
    _verified.add(key)


class WakeWordDetector:
    """A wake word model fed live 16 kHz int16 mono audio in pieces of any size.

    :meth:`process` returns the time (seconds since the start or the last :meth:`reset`) at
    which the wake word was detected in that piece, or None. Pieces are cut into 10 ms frames
    internally, so the answer does not depend on how the audio was split. After a detection the
    detector fires again only once the probability has fallen back below the cutoff and
    :data:`REFRACTORY_S` has passed: one utterance, one detection. Not thread-safe: one detector
    per stream.
    """

    def __init__(self, name: str, models_dir: Path | None = None) -> None:
        try:
            from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures
        except ImportError as exc:
            raise WakeWordModelError("unavailable", f"pymicro-wakeword is not installed ({exc}): "
                                                    f"pip install pymicro-wakeword") from None

        self.name = name
        manifest_path = locate_manifest(name, models_dir)
        manifest = _read_manifest(manifest_path)
        pkg = _package_dir()
        if pkg is None or manifest_path.parent != pkg / "models":  # the bundled ones are known good
            _verify_tflite(manifest.model)
        self.wake_word = manifest.wake_word
        self.cutoff = manifest.cutoff
        try:
            self._model = MicroWakeWord(name, wake_word=manifest.wake_word, tflite_model=manifest.model,
                                        probability_cutoff=manifest.cutoff, sliding_window_size=manifest.window,
                                        trained_languages=[], libtensorflowlite_c_path=_tflite_c_library())
        except (ValueError, RuntimeError, OSError) as exc:
            raise WakeWordModelError("unavailable", f"{manifest.model}: pymicro-wakeword cannot load it: {exc}") from None
        self._features = MicroWakeWordFeatures()
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames = 0
        self._armed = True
        #: The highest averaged probability seen since the last reset.
        self.max_probability = 0.0
        #: Every detection since the last reset, in seconds.
        self.detections: list[float] = []

    def process(self, samples: np.ndarray) -> float | None:
        """Feed 16 kHz int16 mono samples; the first detection in them (seconds), or None."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(f"expected 1-D int16 samples at {SAMPLE_RATE} Hz, got {samples.dtype} {samples.shape}")
        audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        usable = len(audio) - len(audio) % FRAME_SAMPLES
        first: float | None = None
        for start in range(0, usable, FRAME_SAMPLES):
            frame = audio[start:start + FRAME_SAMPLES].astype("<i2").tobytes()
            self._frames += 1
            for features in self._features.process_streaming(frame):
                prob = self._model.process_streaming_prob(features)
                if prob is None:
                    continue
                self.max_probability = max(self.max_probability, prob)
                now = self._frames * FRAME_SAMPLES / SAMPLE_RATE
                if prob > self.cutoff:
                    if self._armed:
                        self._armed = False
                        self.detections.append(now)
                        first = now if first is None else first
                elif not self.detections or now - self.detections[-1] >= REFRACTORY_S:
                    self._armed = True
        self._pending = audio[usable:].copy()
        return first

    def reset(self) -> None:
        """Forget everything heard: the model's internal state, partial frames, the clock."""
        self._model.reset()
        self._features.reset()
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames = 0
        self._armed = True
        self.max_probability = 0.0
        self.detections = []

    def close(self) -> None:
        self._model.close()
