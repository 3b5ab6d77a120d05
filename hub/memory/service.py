"""The hub's memory, as the rest of the hub sees it: search, retrieval for answers, the semantic
cache, and the indexer's status. Everything heavy (the embedding model, the index) opens on first
use, so a hub that never searches pays nothing for it.

The hub embeds queries itself (a search must not wait for a device to wake); the fleet embeds the
notes, as deferrable ``embed`` tasks (hub/memory/indexer.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..router.cache import Producer
from ..router.request import InferOutcome, InferRequest, RequestError
from .config import MemoryConfig
from .embedder import Embedder, EmbedderError, load
from .indexer import Indexer
from .search import query
from .semantic import SemanticCache, SemanticHit, question_text, scope_key
from .store import IndexMismatch, MemoryStore

log = logging.getLogger(__name__)

_LEAD = {"qa": "Question", "summarize": "Text to summarise", "draft": "What to draft"}
_QUERY_VECTORS = 256  # recent query vectors kept: retrieval and the semantic cache embed once

RunTask = Callable[[InferRequest], Awaitable[InferOutcome]]


class Memory:
    def __init__(self, cfg: MemoryConfig, data_dir: Path, *, cache_ttl_s: dict[str, float],
                 run_task: RunTask | None = None, clock: Callable[[], float] = time.time,
                 loader: Callable[[Path | None, int], Embedder] = load) -> None:
        self.cfg = cfg
        self.index_path = cfg.index_path or data_dir / "memory.sqlite3"
        self.semantic_path = data_dir / "semantic-cache.sqlite3"
        self.clock = clock
        self._loader = loader
        self._run_task = run_task
        self._ttl = cache_ttl_s
        self._embedder: Embedder | None = None
        self._store: MemoryStore | None = None
        self._semantic: SemanticCache | None = None
        self._open_lock = asyncio.Lock()
        self._vectors: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._vectors_lock = threading.Lock()
        self.indexer: Indexer | None = None
        self.error: str | None = None  # why memory could not open (shown in status, returned as 503)
        self._no_model: str | None = None  # why the model did not load: the semantic cache is off
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def has_sources(self) -> bool:
        return bool(self.cfg.vaults or self.cfg.repos)

    async def start(self) -> None:
        """Start indexing when there is something to index (opening the model and index first)."""
        if not self.cfg.enabled or not self.has_sources or self._run_task is None:
            return
        try:
            store = await self.store()
        except RequestError as exc:
            log.error("memory: not indexing: %s", exc.message)
            return
        self.indexer = Indexer(self.cfg, store, self._run_task, self._check_vectors, self.clock)
        self.indexer.start()

    async def aclose(self) -> None:
        if self.indexer is not None:
            await self.indexer.aclose()
        for part in (self._store, self._semantic):
            if part is not None:
                await asyncio.to_thread(part.close)
        self._store = self._semantic = None

    # -- opening ----------------------------------------------------------------------------------

    async def embedder(self) -> Embedder:
        if self._embedder is None:
            async with self._open_lock:
                if self._embedder is None:
                    try:
                        self._embedder = await asyncio.to_thread(self._loader, self.cfg.model_dir, self.cfg.threads)
                    except EmbedderError as exc:
                        self.error = self._no_model = str(exc)
                        raise RequestError("memory_unavailable", f"the embedding model does not load: {exc}",
                                           503) from None
        return self._embedder

    async def store(self) -> MemoryStore:
        if not self.cfg.enabled:
            raise RequestError("memory_disabled", "memory is disabled (memory.enabled = false in hub.toml)", 503)
        if self._store is None:
            emb = await self.embedder()
            async with self._open_lock:
                if self._store is None:
                    try:
                        self._store = await asyncio.to_thread(MemoryStore, self.index_path, self.cfg.model,
                                                              emb.fingerprint, emb.dim)
                    except IndexMismatch as exc:
                        self.error = str(exc)
                        raise RequestError("index_mismatch", str(exc), 409) from None
        return self._store

    async def _semantic_cache(self) -> SemanticCache:
        if self._semantic is None:
            emb = await self.embedder()
            async with self._open_lock:
                if self._semantic is None:
                    self._semantic = await asyncio.to_thread(
                        SemanticCache, self.cfg.semantic_cache, self._ttl, emb.dim,
                        f"{self.cfg.model}:{emb.fingerprint}", self.semantic_path)
        return self._semantic

    async def embed_query(self, text: str) -> np.ndarray:
        emb = await self.embedder()
        return await asyncio.to_thread(self._embed, emb, text)

    def _embed(self, emb: Embedder, text: str) -> np.ndarray:
        """A query's vector, from the recent ones when it was asked lately (worker threads)."""
        with self._vectors_lock:
            vec = self._vectors.get(text)
            if vec is not None:
                self._vectors.move_to_end(text)
                return vec
        vec = emb.embed([text])[0]
        with self._vectors_lock:
            self._vectors[text] = vec
            if len(self._vectors) > _QUERY_VECTORS:
                self._vectors.popitem(last=False)
        return vec

    def _check_vectors(self, text: str, vector: Sequence[float]) -> float:
        """How close a device's vector for ``text`` is to the hub's own (1.0: the same model).
        Called from the indexer's worker thread, so synchronous."""
        if self._embedder is None:
            return 1.0
        mine = self._embedder.embed([text])[0]
        theirs = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(theirs))
        return float(mine @ theirs / norm) if norm else 0.0

    # -- search -----------------------------------------------------------------------------------

    def check_query(self, q: str) -> str:
        q = q.strip()
        if not q:
            raise RequestError("bad_request", "the query is empty")
        if len(q) > self.cfg.max_query_chars:
            raise RequestError("query_too_long", f"a query of {len(q)} characters exceeds memory.max_query_chars "
                                                 f"({self.cfg.max_query_chars})", 413)
        return q

    async def search(self, q: str, k: int = 10, source: str | None = None, kind: str | None = None) -> dict[str, Any]:
        q = self.check_query(q)
        started = time.perf_counter()
        store = await self.store()
        emb = await self.embedder()
        _, hits = await asyncio.to_thread(query, store, q, lambda text: self._embed(emb, text), k, source, kind)
        self.counts["searches"] += 1
        return {"query": q, "model": self.cfg.model, "took_ms": round((time.perf_counter() - started) * 1000, 3),
                "results": [h.to_dict() for h in hits]}

    # -- retrieval for answers ---------------------------------------------------------------------

    async def augment(self, req: InferRequest) -> tuple[InferRequest, list[dict[str, Any]]]:
        """The request with its notes: the top chunks above ``context.min_cosine`` put before the
        text, numbered for citation, cut to ``context.max_chars``; and the sources as cited."""
        text = req.text or ""
        cfg = self.cfg.context
        store = await self.store()
        emb = await self.embedder()
        _, hits = await asyncio.to_thread(query, store, text[:self.cfg.max_query_chars],
                                          lambda t: self._embed(emb, t), cfg.top_k)
        blocks: list[str] = []
        sources: list[dict[str, Any]] = []
        room = cfg.max_chars
        for hit in hits:
            if hit.cosine is None or hit.cosine < cfg.min_cosine:
                continue
            c = hit.chunk
            n = len(sources) + 1
            where = f"{c.source}: {c.path}" + (f" — {c.heading}" if c.heading else "")
            if c.line_start:
                where += f" (lines {c.line_start}-{c.line_end})"
            block = f"[{n}] {where}\n{c.text}"
            if len(block) > room:
                if room < 200:
                    break
                block = block[:room] + "…"
            room -= len(block)
            blocks.append(block)
            sources.append({"n": n, **{k: v for k, v in hit.to_dict().items() if k != "text"}})
        self.counts["retrievals"] += 1
        if not blocks:
            return req.model_copy(update={"context": None}), []
        prompt = ("Notes from this home that may help. Use them where they are relevant and cite them by number, "
                  "like [1]; say so when they do not answer.\n\n" + "\n\n".join(blocks)
                  + f"\n\n{_LEAD[req.task]}:\n{text}")
        return req.model_copy(update={"text": prompt, "context": None}), sources

    # -- the semantic cache ------------------------------------------------------------------------

    def _semantic_enabled(self, task: str, text: str | None) -> bool:
        sc = self.cfg.semantic_cache
        return (self.cfg.enabled and sc.enabled and text is not None and task in sc.tasks and 0 < len(text) <= sc.max_chars
                and self._ttl.get(task, 0) > 0 and self._no_model is None)

    async def semantic_get(self, req: InferRequest, question: str, context: str | None,
                           producers: Sequence[Producer], now: float) -> SemanticHit | None:
        if not self._semantic_enabled(req.task, question):
            return None
        try:
            cache = await self._semantic_cache()
            vec = await self.embed_query(question_text(question))
        except RequestError:  # no model: the exact cache still works
            return None
        return await asyncio.to_thread(cache.get, scope_key(req.task, req.options, context), question, vec,
                                       producers, now)

    async def semantic_put(self, req: InferRequest, question: str, context: str | None, producer: Producer,
                           result: Any, now: float) -> None:
        if not self._semantic_enabled(req.task, question):
            return
        try:
            cache = await self._semantic_cache()
            vec = await self.embed_query(question_text(question))
        except RequestError:
            return
        await asyncio.to_thread(cache.put, scope_key(req.task, req.options, context), req.task, question, vec,
                                producer, result, now)

    # -- status -------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"enabled": self.cfg.enabled, "model": self.cfg.model, "error": self.error,
                               "index_path": str(self.index_path), "max_query_chars": self.cfg.max_query_chars,
                               "searches": self.counts["searches"],
                               "retrievals": self.counts["retrievals"]}
        if self._embedder is not None:
            doc["fingerprint"] = self._embedder.fingerprint
            doc["dim"] = self._embedder.dim
        if self._store is not None:
            doc.update(self._store.stats())
        if self._semantic is not None:
            doc["semantic_cache"] = {"entries": self._semantic.count(), "hits": self._semantic.hits,
                                     "misses": self._semantic.misses,
                                     "threshold": self.cfg.semantic_cache.threshold}
        doc["sources"] = self.indexer.status() if self.indexer is not None else [
            {"name": s.name, "kind": kind, "root": str(s.path), "state": "idle"}
            for kind, group in (("vault", self.cfg.vaults), ("repo", self.cfg.repos)) for s in group]
        return doc

    def reindex(self, source: str | None = None) -> list[str]:
        """Scan now (one source, or all); the names that will be scanned."""
        if self.indexer is None:
            raise RequestError("memory_idle", "nothing to index: add [[memory.vaults]] or [[memory.repos]] to "
                                              "hub.toml", 409)
        return self.indexer.trigger(source)
