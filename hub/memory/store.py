"""The index's storage: chunks, their sources' state and their vectors in one SQLite file, with
FTS5 for keyword scores and a :class:`VectorIndex` for nearest neighbours.

The default vector index is :class:`ExactIndex`, an exact scan of a float32 matrix held in memory
and rebuilt from SQLite at start. Measured on this project's 2-core machines at 100,000 chunks of
384 dimensions (benchmarks/memory.py, docs/benchmarks.md): 8 ms per query, recall 1.0 by
construction. sqlite-vec, the first candidate, cannot be loaded by Python builds without
``enable_load_extension`` (this machine's 3.11 among them); through apsw it scanned the same
vectors in 42 ms. An HNSW graph (usearch) answered in under 1 ms but took 30-76 s to build and
found 23 % of the true top 10 on clustered vectors. A home's notes are thousands of chunks, not
millions: the exact scan is the one that is always right.

A home that outgrows one machine keeps chunks and state here and puts vectors in a server
database (Qdrant, pgvector, Milvus) behind the same three-method :class:`VectorIndex`; see
docs/memory.md.

Every document (a note, a source file, a commit) is replaced in one transaction: its old chunks
go, its new chunks and vectors and its file state arrive together. A crash before the commit
leaves the old document and the old state, so the next scan re-embeds it: no duplicates, nothing
half-written.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..sqlite_db import open_db
from .chunk import Chunk
from .sources import FileState

SCHEMA_VERSION = "1"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, kind TEXT NOT NULL, root TEXT NOT NULL,"
    " last_commit TEXT, scanned REAL, error TEXT, settings TEXT)",
    "CREATE TABLE IF NOT EXISTS files (source TEXT NOT NULL, path TEXT NOT NULL, mtime_ns INTEGER NOT NULL,"
    " size INTEGER NOT NULL, sha TEXT NOT NULL, indexed REAL NOT NULL, warnings TEXT,"
    " PRIMARY KEY (source, path))",
    "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, source TEXT NOT NULL, path TEXT NOT NULL,"
    " kind TEXT NOT NULL, heading TEXT NOT NULL, line_start INTEGER NOT NULL, line_end INTEGER NOT NULL,"
    " text TEXT NOT NULL, meta TEXT NOT NULL, vector BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (source, path)",
    # External content: the text is stored once, in `chunks`; the triggers keep FTS in step.
    # No stemmer: the query's words are looked up as they are in chunks_vocab (how many chunks hold
    # each), so that words in most chunks ("the", "how") are left out of the ranking. "_" is part
    # of a word, so that an identifier (start_broker) is found whole.
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(heading, text, content='chunks',"
    " content_rowid='id', tokenize=\"unicode61 remove_diacritics 2 tokenchars '_'\")",
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vocab USING fts5vocab(chunks_fts, 'row')",
    "CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN"
    " INSERT INTO chunks_fts (rowid, heading, text) VALUES (new.id, new.heading, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN"
    " INSERT INTO chunks_fts (chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text);"
    " END",
)


class IndexMismatch(Exception):
    """The index on disk was built by another embedding model: its vectors and the query's would
    not be comparable, so the hub refuses to mix them."""


class VectorIndex(Protocol):
    """Where the vectors live for nearest-neighbour search. Rows are L2-normalised float32; the
    score is the cosine (dot product). Implementations must be safe to call from one thread at a
    time (the store serialises calls)."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int]) -> None: ...

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]: ...

    def __len__(self) -> int: ...


class ExactIndex:
    """Every vector in one float32 matrix; a query is one matrix-vector product and a partial
    sort. The matrix is kept transposed (one row per dimension): numpy's product over it took
    5.1 ms at 100,000 × 384 against 7.6 ms row by row. Removal moves the last vector into the
    hole, so the matrix stays dense."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._m = np.zeros((dim, 1024), dtype=np.float32)
        self._ids = np.zeros(1024, dtype=np.int64)
        self._pos: dict[int, int] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        need = self._n + len(ids)
        if need > len(self._ids):
            cap = max(need, 2 * len(self._ids))
            m = np.zeros((self.dim, cap), dtype=np.float32)
            m[:, :self._n] = self._m[:, :self._n]
            idx = np.zeros(cap, dtype=np.int64)
            idx[:self._n] = self._ids[:self._n]
            self._m, self._ids = m, idx
        for i, v in zip(ids.tolist(), vectors):
            if i in self._pos:  # a re-add replaces
                self._m[:, self._pos[i]] = v
                continue
            self._m[:, self._n] = v
            self._ids[self._n] = i
            self._pos[i] = self._n
            self._n += 1

    def remove(self, ids: Iterable[int]) -> None:
        for i in ids:
            at = self._pos.pop(int(i), None)
            if at is None:
                continue
            last = self._n - 1
            if at != last:
                moved = int(self._ids[last])
                self._m[:, at] = self._m[:, last]
                self._ids[at] = moved
                self._pos[moved] = at
            self._n = last

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        n = self._n
        if n == 0 or k <= 0:
            return []
        scores = query.astype(np.float32, copy=False) @ self._m[:, :n]
        k = min(k, n)
        top = np.argpartition(scores, n - k)[n - k:] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self._ids[j]), float(scores[j])) for j in top]


@dataclass(frozen=True, slots=True)
class StoredChunk:
    id: int
    source: str
    path: str
    kind: str
    heading: str
    line_start: int
    line_end: int
    text: str
    meta: dict[str, str]


@dataclass(frozen=True, slots=True)
class SourceRow:
    name: str
    kind: str
    root: str
    last_commit: str | None
    scanned: float | None
    error: str | None


_WORD = re.compile(r"\w+", re.UNICODE)
#: Query words held by more than this share of the chunks are left out of the keyword ranking:
#: they add little to BM25 and make FTS5 rank most of the index (at 100,000 chunks, ranking every
#: chunk holding "the" or "how" took 150 ms; benchmarks/memory.py).
COMMON_SHARE = 0.02
MAX_TERMS = 8


def query_words(text: str, max_words: int = 64) -> list[str]:
    """The distinct words of ``text`` as the FTS5 tokenizer indexes them (case-folded, accents
    removed)."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    return list(dict.fromkeys(_WORD.findall(plain)))[:max_words]


def fts_query(terms: Sequence[str]) -> str | None:
    """Words as an FTS5 query that cannot be a syntax error: each quoted, OR-ed (BM25 ranks the
    chunks holding more and rarer ones first). None when there is no word."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms) if terms else None


class MemoryStore:
    """One SQLite file (``None``: in memory, for tests and the simulator). ``model``,
    ``fingerprint`` and ``dim`` say which embedding model the vectors come from: a file made by
    another one raises :class:`IndexMismatch`."""

    def __init__(self, path: Path | None, model: str, fingerprint: str, dim: int,
                 index: VectorIndex | None = None) -> None:
        self.path = path
        self._db = open_db(path, *_SCHEMA)
        self._lock = threading.Lock()  # the connection
        #: The vector index has a lock of its own, so that a keyword search (SQLite) and a vector
        #: search (numpy) of one query run at once on two cores; writers take both.
        self._index_lock = threading.Lock()
        self._df: dict[str, int] = {}  # word → chunks holding it (a cache: see _document_frequencies)
        self._df_size = 0
        self.model, self.fingerprint, self.dim = model, fingerprint, dim
        self._check_model()
        self.index: VectorIndex = index if index is not None else ExactIndex(dim)
        self._load_vectors()

    def _check_model(self) -> None:
        want = {"model": self.model, "fingerprint": self.fingerprint, "dim": str(self.dim), "schema": SCHEMA_VERSION}
        have = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not have:
            with self._db:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", want.items())
            return
        if have.get("schema") != SCHEMA_VERSION:
            raise IndexMismatch(f"{self.path}: index schema {have.get('schema')!r}, this hub writes "
                                f"{SCHEMA_VERSION!r}; remove the file to rebuild it")
        if (have.get("model"), have.get("fingerprint"), have.get("dim")) != (want["model"], want["fingerprint"],
                                                                             want["dim"]):
            raise IndexMismatch(
                f"{self.path}: the index was built with embedding model {have.get('model')} (fingerprint "
                f"{have.get('fingerprint')}, {have.get('dim')} dimensions) and this hub embeds with {self.model} "
                f"({self.fingerprint}, {self.dim}); vectors of two models cannot be compared. Stop the hub and "
                f"remove {self.path} to rebuild the index from the sources with the new model, or go back to the "
                f"old model (memory.model, memory.model_dir)")

    def _load_vectors(self) -> None:
        batch: list[int] = []
        vecs: list[bytes] = []
        for cid, blob in self._db.execute("SELECT id, vector FROM chunks"):
            batch.append(cid)
            vecs.append(blob)
            if len(batch) >= 8192:
                self._add(batch, vecs)
                batch, vecs = [], []
        if batch:
            self._add(batch, vecs)

    def _add(self, ids: list[int], blobs: list[bytes]) -> None:
        m = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), self.dim)
        self.index.add(np.asarray(ids, dtype=np.int64), m)

    # -- writing --------------------------------------------------------------------------------

    def put_source(self, name: str, kind: str, root: str, settings: str = "") -> None:
        """Register a source; a new root or new settings make its next scan a full comparison
        (the last indexed commit is forgotten), since a diff would not see what they change."""
        with self._lock, self._db:
            row = self._db.execute("SELECT root, settings FROM sources WHERE name = ?", (name,)).fetchone()
            if row is not None and tuple(row) != (root, settings):
                self._db.execute("UPDATE sources SET last_commit = NULL WHERE name = ?", (name,))
            self._db.execute("INSERT INTO sources (name, kind, root, settings) VALUES (?, ?, ?, ?) ON CONFLICT (name)"
                             " DO UPDATE SET kind = excluded.kind, root = excluded.root, settings = excluded.settings",
                             (name, kind, root, settings))

    def scanned(self, name: str, at: float, last_commit: str | None = None, error: str | None = None) -> None:
        with self._lock, self._db:
            if last_commit is not None:
                self._db.execute("UPDATE sources SET last_commit = ? WHERE name = ?", (last_commit, name))
            self._db.execute("UPDATE sources SET scanned = ?, error = ? WHERE name = ?", (at, error, name))

    def replace(self, source: str, path: str, state: FileState, chunks: Sequence[Chunk], vectors: np.ndarray,
                at: float, warnings: Sequence[str] = ()) -> int:
        """Put a document's chunks in place of its old ones, atomically; returns how many."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{source}:{path}: {len(chunks)} chunks but {len(vectors)} vectors")
        if len(chunks) and vectors.shape[1] != self.dim:
            raise ValueError(f"{source}:{path}: vectors of {vectors.shape[1]} dimensions, the index has {self.dim}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            with self._db:
                old = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE source = ? AND path = ?",
                                                      (source, path))]
                self._db.execute("DELETE FROM chunks WHERE source = ? AND path = ?", (source, path))
                new: list[int] = []
                for c, v in zip(chunks, vectors):
                    cur = self._db.execute(
                        "INSERT INTO chunks (source, path, kind, heading, line_start, line_end, text, meta, vector)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (source, path, c.kind, c.heading, c.line_start, c.line_end, c.text, json.dumps(dict(c.meta)),
                         v.tobytes()))
                    new.append(int(cur.lastrowid or 0))
                self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (source, path, state.mtime_ns, state.size, state.sha, at,
                                  json.dumps(list(warnings)) if warnings else None))
            # Only after the commit: a failed transaction leaves the in-memory index as it was.
            with self._index_lock:
                self.index.remove(old)
                if new:
                    self.index.add(np.asarray(new, dtype=np.int64), vectors)
        return len(new)

    def touch(self, source: str, states: Mapping[str, FileState]) -> None:
        """Content unchanged, metadata changed (a `touch`, a copy): remember the new mtime."""
        with self._lock, self._db:
            self._db.executemany("UPDATE files SET mtime_ns = ?, size = ? WHERE source = ? AND path = ?",
                                 [(s.mtime_ns, s.size, source, p) for p, s in states.items()])

    def delete(self, source: str, paths: Iterable[str]) -> int:
        removed = 0
        with self._lock:
            with self._db:
                ids: list[int] = []
                for p in paths:
                    ids += [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE source = ? AND path = ?",
                                                           (source, p))]
                    self._db.execute("DELETE FROM chunks WHERE source = ? AND path = ?", (source, p))
                    removed += self._db.execute("DELETE FROM files WHERE source = ? AND path = ?", (source, p)).rowcount
            with self._index_lock:
                self.index.remove(ids)
        return removed

    def drop_source(self, name: str) -> None:
        """A source no longer configured: its chunks go."""
        with self._lock:
            with self._db:
                ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE source = ?", (name,))]
                self._db.execute("DELETE FROM chunks WHERE source = ?", (name,))
                self._db.execute("DELETE FROM files WHERE source = ?", (name,))
                self._db.execute("DELETE FROM sources WHERE name = ?", (name,))
            with self._index_lock:
                self.index.remove(ids)

    # -- reading --------------------------------------------------------------------------------

    def known(self, source: str) -> dict[str, FileState]:
        with self._lock:
            rows = self._db.execute("SELECT path, mtime_ns, size, sha FROM files WHERE source = ?",
                                    (source,)).fetchall()
        return {p: FileState(m, s, h) for p, m, s, h in rows}

    def sources(self) -> list[SourceRow]:
        with self._lock:
            return [SourceRow(*r) for r in self._db.execute(
                "SELECT name, kind, root, last_commit, scanned, error FROM sources ORDER BY name")]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per source: files and chunks."""
        with self._lock:
            files = dict(self._db.execute("SELECT source, count(*) FROM files GROUP BY source").fetchall())
            chunks = dict(self._db.execute("SELECT source, count(*) FROM chunks GROUP BY source").fetchall())
        return {s: {"files": files.get(s, 0), "chunks": chunks.get(s, 0)} for s in set(files) | set(chunks)}

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        with self._index_lock:
            return self.index.search(query, k)

    def keyword(self, text: str, k: int) -> list[tuple[int, float]]:
        """BM25 over headings and text (best first; FTS5's rank is lower-is-better, negated here),
        on the query's rarer words: the ones in at most COMMON_SHARE of the chunks (or, when every
        word is that common, the three rarest), at most MAX_TERMS of them."""
        words = query_words(text)
        if not words:
            return []
        with self._lock:
            df = self._document_frequencies(words)
            present = sorted((n, w) for w, n in df.items() if n > 0)
            limit = max(50, COMMON_SHARE * len(self.index))
            terms = [w for n, w in present if n <= limit][:MAX_TERMS] or [w for _, w in present[:3]]
            q = fts_query(terms)
            if q is None:
                return []
            try:
                rows = self._db.execute("SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank"
                                        " LIMIT ?", (q, k)).fetchall()
            except sqlite3.OperationalError:  # fts_query quotes every word; kept as a guard
                return []
        return [(int(r), -float(s)) for r, s in rows]

    def _document_frequencies(self, words: Sequence[str]) -> dict[str, int]:
        """How many chunks hold each word. fts5vocab scans its table to answer (7 ms at 100,000
        chunks), so answers are kept until the index has grown or shrunk by a tenth: they only
        decide which words are too common to rank by."""
        size = len(self.index)
        if abs(size - self._df_size) > 0.1 * max(self._df_size, 100):
            self._df.clear()
            self._df_size = size
        unknown = [w for w in words if w not in self._df]
        if unknown:
            marks = ",".join("?" * len(unknown))
            found = dict(self._db.execute(f"SELECT term, doc FROM chunks_vocab WHERE term IN ({marks})", unknown))
            for w in unknown:
                self._df[w] = int(found.get(w, 0))
            if len(self._df) > 100_000:
                self._df.clear()
        return {w: self._df[w] for w in words if w in self._df}

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT id, source, path, kind, heading, line_start, line_end, text, meta"
                                    f" FROM chunks WHERE id IN ({marks})", tuple(ids)).fetchall()
        return {r[0]: StoredChunk(*r[:8], json.loads(r[8])) for r in rows}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` (benchmarks compare the index against them), read in
        slices: some SQLite builds allow 32,766 variables per statement."""
        rows: dict[int, bytes] = {}
        with self._lock:
            for at in range(0, len(ids), 10_000):
                part = tuple(ids[at:at + 10_000])
                marks = ",".join("?" * len(part))
                rows.update(self._db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", part))
        return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

    def document_vectors(self, source: str, path: str) -> dict[str, np.ndarray]:
        """A document's stored vectors by chunk text: an edited note re-embeds only the chunks
        whose text changed."""
        with self._lock:
            rows = self._db.execute("SELECT text, vector FROM chunks WHERE source = ? AND path = ?", (source, path))
            return {t: np.frombuffer(v, dtype=np.float32) for t, v in rows}

    def all_ids(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM chunks ORDER BY id")]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            n = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            f = self._db.execute("SELECT count(*) FROM files").fetchone()[0]
        with self._index_lock:
            return {"chunks": n, "files": f, "indexed_vectors": len(self.index)}

    def close(self) -> None:
        with self._lock:
            self._db.close()
