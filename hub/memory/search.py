"""Hybrid search: nearest vectors and BM25 keyword matches, fused by reciprocal rank.

Vectors find "how do I make the hub use less power" in a note titled "Energy modes"; keywords
find the exact error message or function name that an embedding blurs. Reciprocal rank fusion
(Cormack et al., SIGIR 2009, k = 60) needs no score calibration between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .store import MemoryStore, StoredChunk

RRF_K = 60
#: Each side contributes its best this-many before fusion (at least).
POOL = 50
_KEYWORDS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="memory-keywords")


@dataclass(frozen=True, slots=True)
class SearchHit:
    chunk: StoredChunk
    score: float  # fused (reciprocal-rank) score, higher is better
    cosine: float | None  # None: found by keywords only, beyond the vector pool
    keyword_rank: int | None  # 1-based rank among keyword matches; None: no keyword match

    def to_dict(self, snippet_chars: int = 400) -> dict[str, Any]:
        c = self.chunk
        return {"source": c.source, "path": c.path, "kind": c.kind, "heading": c.heading,
                "line_start": c.line_start, "line_end": c.line_end, "score": round(self.score, 6),
                "cosine": None if self.cosine is None else round(self.cosine, 4), "keyword_rank": self.keyword_rank,
                "text": c.text if len(c.text) <= snippet_chars else c.text[:snippet_chars] + "…",
                **({"tags": c.meta["tags"].split(",")} if c.meta.get("tags") else {})}


def fuse(vector: list[tuple[int, float]], keyword: list[tuple[int, float]], k: int,
         keyword_weight: float = 1.0) -> list[tuple[int, float, float | None, int | None]]:
    """(id, fused score, cosine, keyword rank), best first; ties keep the vector order."""
    scores: dict[int, float] = {}
    cos = dict(vector)
    kw_rank: dict[int, int] = {}
    for rank, (cid, _) in enumerate(vector, 1):
        scores[cid] = scores.get(cid, 0.0) + 1.0 / (RRF_K + rank)
    for rank, (cid, _) in enumerate(keyword, 1):
        kw_rank[cid] = rank
        scores[cid] = scores.get(cid, 0.0) + keyword_weight / (RRF_K + rank)
    order = sorted(scores, key=lambda c: -scores[c])[:k]
    return [(c, scores[c], cos.get(c), kw_rank.get(c)) for c in order]


def _pool(k: int, source: str | None, kind: str | None) -> int:
    return max(POOL, 5 * k) * (4 if source or kind else 1)


def query(store: MemoryStore, text: str, embed: Callable[[str], np.ndarray], k: int = 10, source: str | None = None,
          kind: str | None = None, hybrid: bool = True) -> tuple[np.ndarray, list[SearchHit]]:
    """Embed ``text`` and search: the keyword side (SQLite) starts first and runs while the query
    is embedded (onnxruntime) and the vectors scanned (numpy), each releasing the GIL. The
    query's vector is returned with the hits."""
    pool = _pool(k, source, kind)
    keywords = _KEYWORDS.submit(store.keyword, text, pool) if hybrid else None
    vector = embed(text)
    return vector, _ranked(store, vector, keywords, k, source, kind, pool)


def search(store: MemoryStore, text: str, query_vector: np.ndarray, k: int = 10, source: str | None = None,
           kind: str | None = None, hybrid: bool = True) -> list[SearchHit]:
    """The top ``k`` chunks for ``text``, already embedded as ``query_vector``."""
    return query(store, text, lambda _t: query_vector, k, source, kind, hybrid)[1]


def _ranked(store: MemoryStore, query_vector: np.ndarray, keywords: Future[list[tuple[int, float]]] | None, k: int,
            source: str | None, kind: str | None, pool: int) -> list[SearchHit]:
    """Vector and keyword ranks fused; filters apply after fusion, over a pool that grows with
    them."""
    vec = store.nearest(query_vector, pool)
    kw = keywords.result() if keywords is not None else []
    fused = fuse(vec, kw, pool)
    hits: list[SearchHit] = []
    # Rows are read for as many ids as can be shown (more only when filters drop some).
    step = k if not (source or kind) else pool
    for at in range(0, len(fused), step):
        part = fused[at:at + step]
        rows = store.chunks([c for c, *_ in part])
        for cid, score, cosine, rank in part:
            c = rows.get(cid)
            if c is None or (source and c.source != source) or (kind and c.kind != kind):
                continue
            hits.append(SearchHit(c, score, cosine, rank))
            if len(hits) == k:
                break
        if len(hits) == k:
            break
    # A keyword match beyond the vector pool: its cosine too, for the reader (one read for all).
    missing = [i for i, h in enumerate(hits) if h.cosine is None]
    if missing:
        vectors = store.vectors([hits[i].chunk.id for i in missing])
        for i, v in zip(missing, vectors):
            h = hits[i]
            hits[i] = SearchHit(h.chunk, h.score, float(v @ query_vector), h.keyword_rank)
    return hits
