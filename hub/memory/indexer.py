"""Keeping the index in step with the home's notes and repositories.

Every ``scan_interval_s`` (or when asked) each source is scanned in a worker thread; what changed
is chunked, and the chunks go to the fleet in batches: each batch is one ``embed`` task pinned to
the index's model, with a deadline ``deadline_s`` away, so the router may hold it for a sunny or
clean-grid window like any deferrable work, and the ledger shows what indexing cost. A document
is written when all its chunks have vectors, in one transaction (hub/memory/store.py); a
repository's last indexed commit moves only once every change up to it is written. So a hub
stopped mid-batch re-embeds the documents it had not finished, and nothing is doubled or lost.

A source that has gone (an unmounted disk, a deleted repository) keeps what was indexed and is
retried at the next scan. Vectors a device returns are checked against the hub's own model on one
text per batch: a device serving another model under the same name is refused, not mixed in.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..router.request import InferOutcome, InferRequest, RequestError
from .chunk import Chunk
from .config import MemoryConfig
from .sources import Document, GitError, GitSource, ScanResult, SourceGone, VaultSource
from .store import MemoryStore

log = logging.getLogger(__name__)

#: A device's vector for a text must be this close to the hub's own for the same text.
SAME_MODEL_COSINE = 0.98
#: A batch may take this long once it runs (a phone embedding 32 long chunks takes seconds).
BATCH_BUDGET_MS = 120_000
_SKIPPED_SHOWN = 20

RunTask = Callable[[InferRequest], Awaitable[InferOutcome]]
CheckVector = Callable[[str, Sequence[float]], float]


#: A batch that fails on its device (a timeout on a loaded laptop) is sent again this many times
#: before the source waits for its next scan.
BATCH_RETRIES = 2


class BatchFailed(Exception):
    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class SourceStatus:
    name: str
    kind: str
    root: str
    state: str = "idle"  # idle | scanning | embedding | gone | error
    error: str | None = None
    last_scan: float | None = None
    last_commit: str | None = None
    pending_chunks: int = 0
    batches_done: int = 0
    batches_failed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_total: int = 0
    warnings: int = 0
    attachments: int = 0
    last_batch: dict[str, Any] | None = None

    def to_dict(self, counts: dict[str, int]) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "root": self.root, "state": self.state, "error": self.error,
                "last_scan": self.last_scan, "last_commit": self.last_commit, "files": counts.get("files", 0),
                "chunks": counts.get("chunks", 0), "pending_chunks": self.pending_chunks,
                "batches": {"done": self.batches_done, "failed": self.batches_failed},
                "skipped": {"total": self.skipped_total, "first": [{"path": p, "reason": r}
                                                                   for p, r in self.skipped[:_SKIPPED_SHOWN]]},
                "warnings": self.warnings, "attachments": self.attachments, "last_batch": self.last_batch}


@dataclass
class _Pending:
    """A document whose chunks are being embedded."""

    doc: Document
    vectors: np.ndarray
    missing: int


class Indexer:
    def __init__(self, cfg: MemoryConfig, store: MemoryStore, run_task: RunTask, check_vector: CheckVector,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.store, self.run_task, self.check_vector, self.clock = cfg, store, run_task, check_vector, clock
        self.sources: dict[str, VaultSource | GitSource] = {}
        self.status_of: dict[str, SourceStatus] = {}
        for v in cfg.vaults:
            self.sources[v.name] = VaultSource(v.name, v.path, v.exclude, cfg.max_file_bytes)
            self.status_of[v.name] = SourceStatus(v.name, "vault", str(v.path))
        #: What a source's chunks depend on besides its files: when it changes (new include
        #: patterns, a larger size cap), the source is compared in full instead of by diff.
        self.settings: dict[str, str] = {v.name: json.dumps([v.exclude, cfg.max_file_bytes]) for v in cfg.vaults}
        for r in cfg.repos:
            self.sources[r.name] = GitSource(r.name, r.path, r.include, r.exclude, cfg.max_file_bytes, r.max_commits)
            self.status_of[r.name] = SourceStatus(r.name, "repo", str(r.path))
            self.settings[r.name] = json.dumps([r.include, r.exclude, cfg.max_file_bytes, r.max_commits])
        self._wanted: set[str] = set(self.sources)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        self.idle = asyncio.Event()

    def start(self) -> None:
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="memory indexer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def trigger(self, source: str | None = None) -> list[str]:
        if source is not None and source not in self.sources:
            raise RequestError("unknown_source", f"no memory source {source!r} (configured: "
                                                 f"{', '.join(sorted(self.sources)) or 'none'})", 404)
        names = [source] if source else sorted(self.sources)
        self._wanted.update(names)
        self.idle.clear()
        self._wake.set()
        return names

    def status(self) -> list[dict[str, Any]]:
        counts = self.store.counts()
        return [s.to_dict(counts.get(name, {})) for name, s in self.status_of.items()]

    async def _run(self) -> None:
        await asyncio.to_thread(self._forget_unconfigured)
        while True:
            try:
                async with asyncio.timeout(self.cfg.scan_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                self._wanted.update(self.sources)
            self._wake.clear()
            names, self._wanted = sorted(self._wanted), set()
            for name in names:
                try:
                    await self._index_source(name)
                except Exception as exc:  # a bug: this source waits for the next scan, the others go on
                    self.status_of[name].state, self.status_of[name].error = "error", f"{type(exc).__name__}: {exc}"
                    log.exception("memory: indexing %s failed", name)
            if not self._wanted:
                self.idle.set()

    def _forget_unconfigured(self) -> None:
        for row in self.store.sources():
            if row.name not in self.sources:
                log.info("memory: source %s is no longer configured: its chunks are removed", row.name)
                self.store.drop_source(row.name)

    # -- one source -------------------------------------------------------------------------------

    async def _index_source(self, name: str) -> None:
        src, st = self.sources[name], self.status_of[name]
        st.state, st.error = "scanning", None
        try:
            await asyncio.to_thread(self.store.put_source, name, st.kind, st.root, self.settings[name])
            result, last = await asyncio.to_thread(self._scan, name, src)
        except (SourceGone, GitError) as exc:
            st.state, st.error = "gone" if isinstance(exc, SourceGone) else "error", str(exc)
            log.warning("memory: %s: %s (kept what was indexed; retrying at the next scan)", name, exc)
            await asyncio.to_thread(self.store.scanned, name, self.clock(), None, str(exc))
            return
        st.last_scan = self.clock()
        st.skipped, st.skipped_total = result.skipped[:_SKIPPED_SHOWN], len(result.skipped)
        st.attachments = result.attachments
        st.warnings = sum(len(d.warnings) for d in result.changed)
        if result.rewritten:
            log.warning("memory: %s: history was rewritten since %s; compared every file", name, last)
        await asyncio.to_thread(self._apply_metadata, name, result)
        try:
            await self._embed_documents(name, st, result.changed)
        except BatchFailed as exc:
            st.state, st.error = "error", str(exc)
            st.batches_failed += 1
            log.warning("memory: %s: %s (retrying at the next scan)", name, exc)
            await asyncio.to_thread(self.store.scanned, name, self.clock(), None, str(exc))
            return
        finally:
            st.pending_chunks = 0
        st.state = "idle"
        st.last_commit = result.head or st.last_commit
        await asyncio.to_thread(self.store.scanned, name, self.clock(), result.head, None)

    def _scan(self, name: str, src: VaultSource | GitSource) -> tuple[ScanResult, str | None]:
        known = self.store.known(name)
        if isinstance(src, GitSource):
            last = next((r.last_commit for r in self.store.sources() if r.name == name), None)
            result = src.scan(last, known)
        else:
            last = None
            result = src.scan(known)
        # A repository diff lists files whose content is the same as indexed (a revert, a
        # resumed scan): those need no embedding.
        same = {d.path: d.state for d in result.changed if d.path in known and known[d.path].sha == d.state.sha}
        if same:
            result.changed = [d for d in result.changed if d.path not in same]
            result.touched.update(same)
        return result, last

    def _apply_metadata(self, name: str, result: ScanResult) -> None:
        if result.deleted:
            self.store.delete(name, result.deleted)
        if result.touched:
            self.store.touch(name, result.touched)
        empty = [d for d in result.changed if not d.chunks]
        for d in empty:  # nothing to embed (a note that is only front matter): recorded as indexed
            self.store.replace(name, d.path, d.state, [], np.zeros((0, self.store.dim), np.float32), self.clock(),
                               d.warnings)

    async def _embed_documents(self, name: str, st: SourceStatus, docs: list[Document]) -> None:
        docs = [d for d in docs if d.chunks]
        # An edited note keeps the vectors of the chunks whose text did not change.
        kept = await asyncio.to_thread(lambda: {d.path: self.store.document_vectors(name, d.path) for d in docs})
        queue: collections.deque[tuple[_Pending, int, Chunk]] = collections.deque()
        ready: list[_Pending] = []
        for d in docs:
            p = _Pending(d, np.zeros((len(d.chunks), self.store.dim), np.float32), len(d.chunks))
            old = kept.get(d.path, {})
            for i, c in enumerate(d.chunks):
                v = old.get(c.text)
                if v is not None:
                    p.vectors[i] = v
                    p.missing -= 1
                else:
                    queue.append((p, i, c))
            if p.missing == 0:
                ready.append(p)
        for p in ready:
            await asyncio.to_thread(self.store.replace, name, p.doc.path, p.doc.state, p.doc.chunks, p.vectors,
                                    self.clock(), p.doc.warnings)
        st.pending_chunks = len(queue)
        if not queue:
            return
        st.state = "embedding"
        size = self.cfg.batch_size
        batches = [[queue.popleft() for _ in range(min(size, len(queue)))] for _ in range(math.ceil(len(queue) / size))]
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(batch: list[tuple[_Pending, int, Chunk]]) -> None:
            async with sem:
                for attempt in range(BATCH_RETRIES + 1):
                    try:
                        vectors = await self._embed_batch(name, st, [c.text for _, _, c in batch])
                        break
                    except BatchFailed as exc:
                        if not exc.retry or attempt == BATCH_RETRIES:
                            raise
                        log.info("memory: %s: %s; sending it again", name, exc)
            done: list[_Pending] = []
            for (p, i, _), v in zip(batch, vectors):
                p.vectors[i] = v
                p.missing -= 1
                if p.missing == 0:
                    done.append(p)
            st.pending_chunks -= len(batch)
            st.batches_done += 1
            for p in done:
                await asyncio.to_thread(self.store.replace, name, p.doc.path, p.doc.state, p.doc.chunks, p.vectors,
                                        self.clock(), p.doc.warnings)

        try:
            async with asyncio.TaskGroup() as tg:
                for b in batches:
                    tg.create_task(one(b))
        except* BatchFailed as group:  # the first failure says why; the others were cancelled
            raise group.exceptions[0] from None

    async def _embed_batch(self, name: str, st: SourceStatus, texts: list[str]) -> np.ndarray:
        self._seq += 1
        now = self.clock()
        req = InferRequest(
            id=f"memory-{name}-{int(now)}-{self._seq}", task="embed", model=self.cfg.model,
            data=base64.b64encode(json.dumps(texts).encode()).decode(), budget_ms=BATCH_BUDGET_MS,
            deadline=now + self.cfg.deadline_s if self.cfg.deadline_s else None)
        try:
            out = await self.run_task(req)
        except RequestError as exc:
            raise BatchFailed(f"batch {req.id} refused: {exc.message}") from None
        st.last_batch = {"id": req.id, "ok": out.ok, "chunks": len(texts), "served_by": out.served_by,
                         "deferred_s": round(out.deferred_s, 3), "latency_ms": round(out.latency_ms, 3),
                         "joules": round(out.joules, 6)}
        if not out.ok:
            err = out.error or {}
            code = err.get("code", "failed")
            raise BatchFailed(f"batch {req.id}: {code}: {err.get('message', '')}",
                              retry=code not in ("no_route", "bad_request", "too_large"))
        vectors = _vectors(out.output, len(texts), self.store.dim, req.id)
        short = min(range(len(texts)), key=lambda i: len(texts[i]))
        cos = await asyncio.to_thread(self.check_vector, texts[short], vectors[short].tolist())
        if cos < SAME_MODEL_COSINE:
            by = out.served_by or {}
            raise BatchFailed(f"batch {req.id}: vectors from {by.get('device')}/{by.get('model')} do not match the "
                              f"index's model (cosine {cos:.3f} with the hub's own for the same text): not stored")
        return vectors


def _vectors(output: Any, n: int, dim: int, where: str) -> np.ndarray:
    """The device's answer as an (n, dim) matrix of unit rows, or BatchFailed saying what is wrong."""
    if not isinstance(output, list) or len(output) != n:
        got = f"{len(output)} items" if isinstance(output, list) else type(output).__name__
        raise BatchFailed(f"batch {where}: expected {n} vectors, got {got}")
    try:
        m = np.asarray(output, dtype=np.float32)
    except (TypeError, ValueError):
        raise BatchFailed(f"batch {where}: the vectors are not lists of numbers") from None
    if m.shape != (n, dim) or not np.isfinite(m).all():
        raise BatchFailed(f"batch {where}: vectors of shape {m.shape}, expected ({n}, {dim}) finite numbers")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if (norms == 0).any():
        raise BatchFailed(f"batch {where}: a zero vector")
    return m / norms
