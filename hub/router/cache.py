"""Content-addressed result cache: (task, the model that answered and its runtime, normalised
input) → result, with a TTL per task type, never for tasks marked non-deterministic and never for
answers of the ``simulated`` runtime (no model ran). SQLite, bounded (oldest evicted first).

An entry names its producer, so it is only ever served for a producer the caller still accepts:
the dispatcher looks up the (model, runtime) pairs of the decision's chain, which are announced
by online devices right now. A model re-announced with another runtime (a real model installed
where a simulated one stood) or gone from the fleet no longer finds its old answers; they expire
or are evicted, or ``clear`` removes them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..sqlite_db import open_db
from .model import TaskRequest

#: Default lifetimes (s). Intents and classes of a fixed text do not change; answers to
#: questions and summaries may (the world does), so they live an hour.
DEFAULT_TTL = {"intent": 86400, "classify": 86400, "embed": 30 * 86400, "eeg": 0, "transcribe": 7 * 86400,
               "format": 86400, "summarize": 3600, "qa": 3600, "code": 3600, "vision": 3600}


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    ttl_s: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TTL))
    #: Never cached: every answer is meant to differ (drafts), or must be thought anew.
    non_deterministic: list[str] = Field(default_factory=lambda: ["draft", "reason", "echo"])
    max_entries: int = Field(default=100_000, ge=100)
    #: A question asked again and answered from the cache by a model the router ranks below a
    #: better one it accepts (the tiny intent model, when the cloud's is better): ask the better
    #: one in the background, as deferrable work due within ``refine_within_s``, and answer the
    #: next asking with its answer. Hot questions end up answered well for the price of one call.
    refine: bool = True
    refine_within_s: float = Field(default=900, gt=0, le=86400)


_SPACE = re.compile(r"\s+")


def normalise(req: TaskRequest) -> str:
    """Text is case-folded, NFKC-normalised and whitespace-collapsed: "Schedule  a meeting" and
    "schedule a meeting" are the same question. Bytes and references are taken as they are."""
    if req.text is not None:
        return "t:" + _SPACE.sub(" ", unicodedata.normalize("NFKC", req.text).casefold()).strip()
    if req.data is not None:
        return "d:" + req.data
    return "r:" + (req.ref or "")


#: Runtimes whose answers are never kept: no model ran (the demo's stand-ins).
UNCACHED_RUNTIMES = frozenset({"simulated"})

#: The model that produced an answer: (name, runtime). Were the capability schema to give models
#: a version, it would join here, so that a new version finds none of the old answers.
Producer = tuple[str, str]


def cache_key(req: TaskRequest, producer: Producer) -> str:
    model, runtime = producer
    return hashlib.sha256(f"{req.task}\x00{model}\x00{runtime}\x00{normalise(req)}".encode()).hexdigest()


class ResultCache:
    def __init__(self, cfg: CacheConfig, path: Path | None) -> None:
        self.cfg = cfg
        # `results` (before answers named their producer) is dropped: its entries cannot say
        # which model gave them, and some were the simulated runtime's.
        self._db = open_db(path, "DROP TABLE IF EXISTS results",
                           "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, task TEXT, model TEXT,"
                           " runtime TEXT, stored REAL, expires REAL, result TEXT)",
                           "CREATE INDEX IF NOT EXISTS answers_stored ON answers (stored)")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cacheable(self, req: TaskRequest) -> bool:
        # A request without input (say, "classify the sensor's current window") names nothing
        # that identifies its answer.
        has_input = req.text is not None or req.data is not None or req.ref is not None
        return (self.cfg.enabled and has_input and req.task not in self.cfg.non_deterministic
                and self.cfg.ttl_s.get(req.task, 0) > 0 and req.mode == "single")

    def get(self, req: TaskRequest, producers: Sequence[Producer],
            now: float | None = None) -> tuple[Producer, Any] | None:
        """The answer of the first of ``producers`` (in the caller's order of preference) that
        has a live one, with that producer; None when none has."""
        if not self.cacheable(req):
            return None
        wanted = list(dict.fromkeys(p for p in producers if p[1] not in UNCACHED_RUNTIMES))
        if not wanted:
            return None
        now = time.time() if now is None else now
        keys = {cache_key(req, p): p for p in wanted}
        marks = ",".join("?" * len(keys))
        with self._lock:
            rows = dict(self._db.execute(f"SELECT key, result FROM answers WHERE key IN ({marks}) AND expires > ?",
                                         (*keys, now)).fetchall())
        for key, producer in keys.items():
            if key in rows:
                self.hits += 1
                return producer, json.loads(rows[key])
        self.misses += 1
        return None

    def put(self, req: TaskRequest, producer: Producer, result: Any, now: float | None = None) -> bool:
        if not self.cacheable(req) or producer[1] in UNCACHED_RUNTIMES:
            return False
        now = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (cache_key(req, producer), req.task, producer[0], producer[1], now,
                              now + self.cfg.ttl_s[req.task], json.dumps(result)))
            excess = self._db.execute("SELECT count(*) FROM answers").fetchone()[0] - self.cfg.max_entries
            if excess > 0:
                self._db.execute("DELETE FROM answers WHERE key IN (SELECT key FROM answers ORDER BY stored LIMIT ?)",
                                 (excess,))
        return True

    def count(self, task: str | None = None) -> int:
        with self._lock:
            if task is None:
                return self._db.execute("SELECT count(*) FROM answers").fetchone()[0]
            return self._db.execute("SELECT count(*) FROM answers WHERE task = ?", (task,)).fetchone()[0]

    def clear(self, task: str | None = None) -> int:
        """Remove every entry (of one task): how many were removed."""
        with self._lock, self._db:
            if task is None:
                return self._db.execute("DELETE FROM answers").rowcount
            return self._db.execute("DELETE FROM answers WHERE task = ?", (task,)).rowcount

    def purge(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock, self._db:
            return self._db.execute("DELETE FROM answers WHERE expires <= ?", (now,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
