"""The ``tflite`` runtime: small classifiers run with LiteRT (TensorFlow Lite's interpreter).

A model is two files in the models directory: ``<name>.tflite`` and a ``<name>.json`` sidecar
that says which tasks it answers, what its output labels are and how text becomes its input
vector. The bundled ``intent-tiny`` turns a home voice command ("schedule a meeting with Ana
tomorrow at ten") into an action label on the device itself, with no cloud call.

The text featurizer lives here, not in the build script, so that training
(``models/intent/build.py`` imports it) and inference cannot drift apart; it needs only numpy
and the standard library, never TensorFlow.
"""

from __future__ import annotations

import json
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

#: How the bundled models featurize text; build.py writes exactly this into the sidecar.
#: Hashed n-grams need no vocabulary file, and crc32 (unlike ``hash()``) is the same in every
#: process and on every platform.
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
    featurizer: Featurizer


class TfliteExecutor:
    runtime = "tflite"

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._models: dict[str, _Loaded] = {}

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        model = self._model(call.model.name)
        if call.task not in model.tasks:
            raise ExecError("bad_request", f"model {call.model.name!r} answers {sorted(model.tasks)}, not {call.task!r}")
        if call.text is None or not call.text.strip():
            raise ExecError("bad_request", f"{call.model.name} classifies text; the request has none")
        if len(call.text) > MAX_TEXT_CHARS:
            raise ExecError("too_large", f"text longer than {MAX_TEXT_CHARS} characters")
        # One interpreter per model is shared by every call, and an Interpreter must not run two
        # invocations at once. The call takes microseconds, so it runs inline with no await
        # between set_tensor, invoke and get_tensor: no other task of this loop can interleave.
        t0 = time.perf_counter_ns()
        x = model.featurizer(call.text)[np.newaxis, :]
        itp = model.interpreter
        itp.set_tensor(model.input_index, x)
        itp.invoke()
        probs = np.array(itp.get_tensor(model.output_index)[0], dtype=np.float64)  # copy: the buffer is reused
        compute_us = (time.perf_counter_ns() - t0) / 1000.0
        best = int(np.argmax(probs))
        return InferResult(output=model.labels[best], confidence=float(probs[best]),
                           stats={"compute_us": compute_us})

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
            featurizer = Featurizer.from_settings(meta["features"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
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
        if inp["dtype"] != np.float32 or tuple(inp["shape"]) != (1, featurizer.buckets):
            raise ExecError("unavailable", f"{path.name}: input {inp['dtype']} {tuple(inp['shape'])}, "
                                           f"sidecar says float32 (1, {featurizer.buckets})")
        if tuple(out["shape"]) != (1, len(labels)):
            raise ExecError("unavailable", f"{path.name}: output {tuple(out['shape'])}, sidecar has {len(labels)} labels")
        return _Loaded(itp, inp["index"], out["index"], labels, tasks, featurizer)

    async def aclose(self) -> None:
        self._models.clear()
