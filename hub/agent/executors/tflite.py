"""The ``tflite`` runtime: small classifiers run with LiteRT (TensorFlow Lite's interpreter).

A model is two files in the models directory: ``<name>.tflite`` and a ``<name>.json`` sidecar
that says which tasks it answers, what its output labels are and how text becomes its input
vector. The bundled ``intent-tiny`` turns a home voice command ("schedule a meeting with Ana
tomorrow at ten") into an action label on the device itself, with no cloud call.

The text featurizer lives here, not in the build script, so that training
(``models/intent/build.py`` imports it) and inference cannot drift apart; it needs only numpy
and the standard library, never TensorFlow.

A sidecar whose ``features.kind`` is ``"vector"`` declares a model that takes numbers the caller
computed, such as the bundled ``eeg-state-tiny`` (7 EEG band-power features → relaxed / focused /
drowsy / artifact; ``models/eeg/README.md``). Its input is ``text`` holding a JSON array of
``size`` finite numbers, or ``data`` holding ``size`` little-endian float32; its answer carries
every class probability in ``stats`` as ``p_<label>``.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Emit, ExecError, InferCall, InferResult

#: How text is featurized; a model's sidecar writes these settings with its own ``buckets``
#: (the bundled intent-tiny: 4,096, models/intent/README.md), and the executor uses the
#: sidecar's. Hashed n-grams need no vocabulary file, and crc32 (unlike ``hash()``) is the same
#: in every process and on every platform.
FEATURES: dict[str, Any] = {
    "kind": "hashing",
    "hash": "crc32",  # zlib.crc32 of "<n>:<space-joined n-gram>" in UTF-8, modulo buckets
    "buckets": 512,
    "ngrams": [1, 2],
    "normalise": "nfkc-casefold",
    "token_pattern": r"[\w']+",
    "value": "binary",  # 1.0 where any n-gram hashed, else 0.0; repeats do not count twice
}

#: Inputs longer than this are not voice commands; refusing them bounds the work per call.
MAX_TEXT_CHARS = 4096

_F32_MAX = float(np.finfo(np.float32).max)

#: Model names become file names: no separators, no leading dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Featurizer:
    buckets: int
    ngrams: tuple[int, ...]
    token_re: re.Pattern[str]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "Featurizer":
        """Build from a sidecar's ``features``; refuse settings this code does not implement, so a
        model trained another way fails loudly instead of answering with garbage."""
        fixed = {k: FEATURES[k] for k in ("kind", "hash", "normalise", "value")}
        for key, want in fixed.items():
            if settings.get(key) != want:
                raise ValueError(f"features.{key} = {settings.get(key)!r}; this executor implements {want!r}")
        buckets, ngrams = settings.get("buckets"), settings.get("ngrams")
        if not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"features.buckets = {buckets!r}")
        if not isinstance(ngrams, list) or not ngrams or not all(isinstance(n, int) and n >= 1 for n in ngrams):
            raise ValueError(f"features.ngrams = {ngrams!r}")
        return cls(buckets, tuple(ngrams), re.compile(str(settings.get("token_pattern", ""))))

    def tokens(self, text: str) -> list[str]:
        # NFKC folds full-width and compatibility letters, casefold is Unicode-correct lowercasing
        # ("Ana" and "ANA" hash alike); speech-to-text often writes the typographic apostrophe.
        text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
        return self.token_re.findall(text)

    def __call__(self, text: str) -> np.ndarray:
        toks = self.tokens(text)
        vec = np.zeros(self.buckets, dtype=np.float32)
        for n in self.ngrams:
            for i in range(len(toks) - n + 1):
                gram = f"{n}:" + " ".join(toks[i:i + n])
                vec[zlib.crc32(gram.encode("utf-8")) % self.buckets] = 1.0
        return vec

    @property
    def size(self) -> int:
        """Length of the input vector."""
        return self.buckets


@dataclass(frozen=True, slots=True)
class VectorFeatures:
    """Input that is already a vector: ``size`` named float32 values, in the sidecar's order."""

    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "VectorFeatures":
        if settings.get("kind") != "vector":
            raise ValueError(f"features.kind = {settings.get('kind')!r}; expected 'vector'")
        names, size = settings.get("names"), settings.get("size")
        if (not isinstance(names, list) or not names or len(set(map(str, names))) != len(names)
                or not all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"features.names = {names!r}; needs distinct non-empty strings")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(names):
            raise ValueError(f"features.size = {size!r}; features.names has {len(names)}")
        if settings.get("dtype", "float32") != "float32":
            raise ValueError(f"features.dtype = {settings.get('dtype')!r}; this executor implements 'float32'")
        return cls(tuple(names))

    def from_data(self, data: bytes) -> np.ndarray:
        """``size`` little-endian float32 → the input vector; ValueError says what is wrong."""
        if len(data) != 4 * self.size:
            raise ValueError(f"data is {len(data)} bytes; expected {4 * self.size} "
                             f"({self.size} little-endian float32)")
        return self._finite(np.frombuffer(data, dtype="<f4").astype(np.float32))

    def from_text(self, text: str) -> np.ndarray:
        """A JSON array of ``size`` numbers → the input vector; ValueError says what is wrong."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"text is not JSON ({exc.msg} at character {exc.pos}); "
                             f"expected an array of {self.size} numbers") from None
        except RecursionError:
            raise ValueError("text is nested too deeply to be an array of numbers") from None
        if not isinstance(values, list):
            raise ValueError(f"text is a JSON {type(values).__name__}; expected an array of {self.size} numbers")
        if len(values) != self.size:
            raise ValueError(f"text has {len(values)} values; expected {self.size} ({', '.join(self.names)})")
        out = np.empty(self.size, dtype=np.float32)
        for i, (name, v) in enumerate(zip(self.names, values)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"value {i} ({name}) is {json.dumps(v)[:40]}, not a number")
            try:
                f = float(v)
            except OverflowError:  # an int too large for a float
                f = math.inf
            # Beyond float32's range would become inf in the cast: say so rather than overflow.
            out[i] = f if not abs(f) > _F32_MAX else math.copysign(math.inf, f)
        return self._finite(out)

    def _finite(self, x: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            what = ", ".join(f"{self.names[i]} = {x[i]}" for i in bad)
            raise ValueError(f"values must be finite float32: {what}")
        return x


def featurizer_from_settings(settings: Mapping[str, Any]) -> Featurizer | VectorFeatures:
    """The input side of a sidecar's ``features``, by its ``kind``."""
    if isinstance(settings, Mapping) and settings.get("kind") == "vector":
        return VectorFeatures.from_settings(settings)
    return Featurizer.from_settings(settings)


def featurize(text: str, settings: Mapping[str, Any] = FEATURES) -> np.ndarray:
    """One text → the model's float32 input vector (``buckets`` long)."""
    return Featurizer.from_settings(settings)(text)


def bundled_models_dir() -> Path:
    """The models shipped inside the package (``hub/agent/models``)."""
    return Path(__file__).resolve().parent.parent / "models"


@dataclass(slots=True)
class _Loaded:
    interpreter: Any  # ai_edge_litert.interpreter.Interpreter
    input_index: int
    output_index: int
    labels: list[str]
    tasks: frozenset[str]
    featurizer: Featurizer | VectorFeatures


class TfliteExecutor:
    runtime = "tflite"

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._models: dict[str, _Loaded] = {}

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        model = self._model(call.model.name)
        if call.task not in model.tasks:
            raise ExecError("bad_request", f"model {call.model.name!r} answers {sorted(model.tasks)}, not {call.task!r}")
        feat = model.featurizer
        if isinstance(feat, VectorFeatures):
            t0 = time.perf_counter_ns()
            x = self._vector(call, feat)[np.newaxis, :]
        else:
            if call.text is None or not call.text.strip():
                raise ExecError("bad_request", f"{call.model.name} classifies text; the request has none")
            if len(call.text) > MAX_TEXT_CHARS:
                raise ExecError("too_large", f"text longer than {MAX_TEXT_CHARS} characters")
            t0 = time.perf_counter_ns()
            x = feat(call.text)[np.newaxis, :]
        # One interpreter per model is shared by every call, and an Interpreter must not run two
        # invocations at once. The call takes microseconds, so it runs inline with no await
        # between set_tensor, invoke and get_tensor: no other task of this loop can interleave.
        itp = model.interpreter
        itp.set_tensor(model.input_index, x)
        itp.invoke()
        probs = np.array(itp.get_tensor(model.output_index)[0], dtype=np.float64)  # copy: the buffer is reused
        compute_us = (time.perf_counter_ns() - t0) / 1000.0
        best = int(np.argmax(probs))
        stats = {"compute_us": compute_us}
        if isinstance(feat, VectorFeatures):
            stats.update({f"p_{label}": float(p) for label, p in zip(model.labels, probs)})
        return InferResult(output=model.labels[best], confidence=float(probs[best]), stats=stats)

    @staticmethod
    def _vector(call: InferCall, feat: VectorFeatures) -> np.ndarray:
        """The input of a ``vector`` model: float32 bytes in ``data`` or a JSON array in ``text``."""
        want = f"{feat.size} numbers ({', '.join(feat.names)})"
        try:
            if call.data is not None:
                return feat.from_data(call.data)
            if call.text is not None and call.text.strip():
                if len(call.text) > MAX_TEXT_CHARS:
                    raise ExecError("too_large", f"text longer than {MAX_TEXT_CHARS} characters")
                return feat.from_text(call.text)
        except ValueError as exc:
            raise ExecError("bad_request", f"{call.model.name}: {exc}") from None
        if call.ref is not None:
            raise ExecError("bad_request", f"{call.model.name} takes its {want} inline, in text or data, not by ref")
        raise ExecError("bad_request", f"{call.model.name} takes {want}: a JSON array in text or "
                                       f"{4 * feat.size} bytes of little-endian float32 in data; the request has neither")

    def _model(self, name: str) -> _Loaded:
        loaded = self._models.get(name)
        if loaded is None:
            loaded = self._models[name] = self._load(name)
        return loaded

    def _load(self, name: str) -> _Loaded:
        if not _NAME.match(name) or ".." in name:
            raise ExecError("model_missing", f"no tflite model {name!r}")
        path, sidecar = self.models_dir / f"{name}.tflite", self.models_dir / f"{name}.json"
        if not path.is_file() or not sidecar.is_file():
            raise ExecError("model_missing", f"no tflite model {name!r} in {self.models_dir} (needs {path.name} and {sidecar.name})")
        try:
            meta = json.loads(sidecar.read_text())
            labels = [str(x) for x in meta["labels"]]
            tasks = frozenset(str(t) for t in meta["tasks"])
            featurizer = featurizer_from_settings(meta["features"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExecError("unavailable", f"{sidecar.name}: unusable sidecar: {exc}") from None

        # Imported here so that agents without tflite models never load LiteRT.
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        try:
            # One thread: for a model this small, waking worker threads costs more than it saves.
            # Built-in kernels only: the default XNNPACK delegate brings nothing at this size
            # (1.5 µs per call without it) and announces itself on stderr.
            itp = Interpreter(model_path=str(path), num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            itp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ExecError("unavailable", f"{path.name}: LiteRT cannot load it: {exc}") from None
        inp, out = itp.get_input_details()[0], itp.get_output_details()[0]
        # Catch a sidecar that does not belong to this model before it answers wrong labels.
        if inp["dtype"] != np.float32 or tuple(inp["shape"]) != (1, featurizer.size):
            raise ExecError("unavailable", f"{path.name}: input {inp['dtype']} {tuple(inp['shape'])}, "
                                           f"sidecar says float32 (1, {featurizer.size})")
        if tuple(out["shape"]) != (1, len(labels)):
            raise ExecError("unavailable", f"{path.name}: output {tuple(out['shape'])}, sidecar has {len(labels)} labels")
        return _Loaded(itp, inp["index"], out["index"], labels, tasks, featurizer)

    async def aclose(self) -> None:
        self._models.clear()
