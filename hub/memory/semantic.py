"""The semantic cache: a question that means the same as one answered before gets that answer.

The exact cache (hub/router/cache.py) only matches the same normalised text. Here a request's
text is embedded on the hub, and an answer kept for the same task, options and context whose
question is at least ``threshold`` close (cosine) is served, by a producer the caller accepts,
within the exact cache's lifetime for the task, and only when the words the two questions share
come in the same order (:func:`same_order`). A false hit answers a different question, so both
guards lean to missing: on PAWS's adversarial pairs ("moved to New York from Chapel Hill" /
"moved from New York to Chapel Hill", cosine 0.985) the embedding alone let 77 % of different
questions through at 0.95, and needed 0.998 for 1 % (catching 11 % of true paraphrases); the word
order check turns those swaps away. The threshold is tuned on labelled pairs for at most 1 %
false hits (benchmarks/memory.py, docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..router.cache import UNCACHED_RUNTIMES, Producer
from ..sqlite_db import open_db
from .config import SemanticCacheConfig


#: Words that change how a question is put, not what it asks. Prepositions, negations, numbers
#: and question words are not among them: "from A to B" and "to A from B" differ.
_FILLER = frozenset("a an the is are was were be been being am do does did and or but as that this these those it "
                    "its i me my you your we our they their he she his her them there here can could would should "
                    "will shall may might must please just also so".split())
_WORDS = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def question_text(text: str) -> str:
    """What the cache embeds of a question: its words, case-folded, without punctuation ("When is
    it due?" and "when is it due" are 0.96 apart as they are, and 1.0 so)."""
    return " ".join(_WORDS.findall(text.casefold()))


def content_words(text: str) -> list[str]:
    """The words that carry the question, in order: case-folded, contractions cut at the
    apostrophe ("when's" → "when"), filler left out."""
    words = (w.split("'")[0] for w in _WORDS.findall(text.casefold()))
    return [w for w in words if w not in _FILLER]


def same_order(a: str, b: str) -> bool:
    """The content words the two share come in the same order in both, and they share one at
    least: "how do I reset the router" / "how can I reset my router?" agree; "flights from Paris
    to Rome" / "flights from Rome to Paris" do not."""
    wa, wb = content_words(a), content_words(b)
    shared = set(wa) & set(wb)
    if not shared:
        return False
    first_a = list(dict.fromkeys(w for w in wa if w in shared))
    first_b = list(dict.fromkeys(w for w in wb if w in shared))
    return first_a == first_b


@dataclass(frozen=True, slots=True)
class SemanticHit:
    producer: Producer
    result: Any
    similarity: float
    question: str  # the cached question it matched


def scope_key(task: str, options: dict[str, Any], context: str | None) -> str:
    """Answers are shared only between requests with the same task, options and context."""
    blob = json.dumps([task, options, context], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class _Scope:
    ids: list[int]
    rows: list[np.ndarray]  # appended since the matrix was last stacked
    matrix: np.ndarray | None = None

    def vectors(self) -> np.ndarray:
        if self.rows:  # stacked once per lookup after puts, not once per put
            stacked = np.stack(self.rows)
            self.matrix = stacked if self.matrix is None else np.concatenate([self.matrix, stacked])
            self.rows = []
        return self.matrix if self.matrix is not None else np.zeros((0, 0), dtype=np.float32)


class SemanticCache:
    def __init__(self, cfg: SemanticCacheConfig, ttl_s: dict[str, float], dim: int, model: str,
                 path: Path | None) -> None:
        self.cfg, self.ttl_s, self.dim, self.model = cfg, ttl_s, dim, model
        self._db = open_db(path, "CREATE TABLE IF NOT EXISTS semantic (id INTEGER PRIMARY KEY, scope TEXT, "
                                 "task TEXT, model TEXT, runtime TEXT, embedder TEXT, stored REAL, expires REAL, "
                                 "question TEXT, vector BLOB, result TEXT)",
                           "CREATE INDEX IF NOT EXISTS semantic_scope ON semantic (scope)")
        self._lock = threading.Lock()
        self._scopes: dict[str, _Scope] = {}
        self.hits = 0
        self.misses = 0
        # Vectors of another embedding model are not comparable: they are dropped, not mixed.
        with self._db:
            self._db.execute("DELETE FROM semantic WHERE embedder != ?", (model,))
        for sid, scope, blob in self._db.execute("SELECT id, scope, vector FROM semantic ORDER BY id"):
            self._append(scope, sid, np.frombuffer(blob, dtype=np.float32))

    def applies(self, task: str, text: str | None) -> bool:
        return (self.cfg.enabled and text is not None and task in self.cfg.tasks
                and 0 < len(text) <= self.cfg.max_chars and self.ttl_s.get(task, 0) > 0)

    def _append(self, scope: str, sid: int, v: np.ndarray) -> None:
        s = self._scopes.setdefault(scope, _Scope([], []))
        s.ids.append(sid)
        s.rows.append(v)

    def get(self, scope: str, question: str, vector: np.ndarray, producers: Sequence[Producer],
            now: float | None = None) -> SemanticHit | None:
        """The closest kept answer at or above the threshold, to a question whose shared words
        come in the same order, from one of ``producers``."""
        now = time.time() if now is None else now
        wanted = {p for p in producers if p[1] not in UNCACHED_RUNTIMES}
        with self._lock:
            s = self._scopes.get(scope)
            if s is None or not wanted:
                self.misses += 1
                return None
            sims = s.vectors() @ vector
            order = np.argsort(-sims)
            candidates = [(s.ids[i], float(sims[i])) for i in order[:16] if sims[i] >= self.cfg.threshold]
            for sid, sim in candidates:
                row = self._db.execute("SELECT model, runtime, expires, question, result FROM semantic WHERE id = ?",
                                       (sid,)).fetchone()
                if row is None or row[2] <= now or (row[0], row[1]) not in wanted or not same_order(question, row[3]):
                    continue
                self.hits += 1
                return SemanticHit((row[0], row[1]), json.loads(row[4]), sim, row[3])
            self.misses += 1
            return None

    def put(self, scope: str, task: str, question: str, vector: np.ndarray, producer: Producer, result: Any,
            now: float | None = None) -> bool:
        if producer[1] in UNCACHED_RUNTIMES or not self.applies(task, question):
            return False
        now = time.time() if now is None else now
        v = np.ascontiguousarray(vector, dtype=np.float32)
        with self._lock:
            with self._db:
                cur = self._db.execute("INSERT INTO semantic (scope, task, model, runtime, embedder, stored, expires,"
                                       " question, vector, result) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                       (scope, task, producer[0], producer[1], self.model, now,
                                        now + self.ttl_s[task], question, v.tobytes(), json.dumps(result)))
            self._append(scope, int(cur.lastrowid or 0), v)
            if sum(len(s.ids) for s in self._scopes.values()) > self.cfg.max_entries:
                self._evict(now)
        return True

    def _evict(self, now: float) -> None:
        """Expired entries, then the oldest, down to 90 % of the bound; the matrices are rebuilt."""
        with self._db:
            self._db.execute("DELETE FROM semantic WHERE expires <= ?", (now,))
            n = self._db.execute("SELECT count(*) FROM semantic").fetchone()[0]
            excess = n - int(self.cfg.max_entries * 0.9)
            if excess > 0:
                self._db.execute("DELETE FROM semantic WHERE id IN (SELECT id FROM semantic ORDER BY stored LIMIT ?)",
                                 (excess,))
        self._scopes.clear()
        for sid, scope, blob in self._db.execute("SELECT id, scope, vector FROM semantic ORDER BY id"):
            self._append(scope, sid, np.frombuffer(blob, dtype=np.float32))

    def count(self) -> int:
        with self._lock:
            return sum(len(s.ids) for s in self._scopes.values())

    def clear(self) -> int:
        with self._lock, self._db:
            self._scopes.clear()
            return self._db.execute("DELETE FROM semantic").rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
