"""Content-addressed result cache: (task, model class, normalised input) → result, with a TTL per
task type, never for tasks marked non-deterministic. SQLite, bounded (oldest evicted first).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import unicodedata
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


_SPACE = re.compile(r"\s+")


def normalise(req: TaskRequest) -> str:
    """Text is case-folded, NFKC-normalised and whitespace-collapsed: "Schedule  a meeting" and
    "schedule a meeting" are the same question. Bytes and references are taken as they are."""
    if req.text is not None:
        return "t:" + _SPACE.sub(" ", unicodedata.normalize("NFKC", req.text).casefold()).strip()
    if req.data is not None:
        return "d:" + req.data
    return "r:" + (req.ref or "")


def cache_key(req: TaskRequest, model_class: str) -> str:
    return hashlib.sha256(f"{req.task}\x00{model_class}\x00{normalise(req)}".encode()).hexdigest()


class ResultCache:
    def __init__(self, cfg: CacheConfig, path: Path | None) -> None:
        self.cfg = cfg
        self._db = open_db(path, "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, task TEXT, stored REAL,"
                                 " expires REAL, result TEXT)")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cacheable(self, req: TaskRequest) -> bool:
        # A request without input (say, "classify the sensor's current window") names nothing
        # that identifies its answer.
        has_input = req.text is not None or req.data is not None or req.ref is not None
        return (self.cfg.enabled and has_input and req.task not in self.cfg.non_deterministic
                and self.cfg.ttl_s.get(req.task, 0) > 0 and req.mode == "single")

    def get(self, req: TaskRequest, model_class: str, now: float | None = None) -> Any | None:
        if not self.cacheable(req):
            return None
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT expires, result FROM results WHERE key = ?",
                                   (cache_key(req, model_class),)).fetchone()
        if row is None or row[0] <= now:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[1])

    def put(self, req: TaskRequest, model_class: str, result: Any, now: float | None = None) -> bool:
        if not self.cacheable(req):
            return False
        now = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                             (cache_key(req, model_class), req.task, now, now + self.cfg.ttl_s[req.task],
                              json.dumps(result)))
            excess = self._db.execute("SELECT count(*) FROM results").fetchone()[0] - self.cfg.max_entries
            if excess > 0:
                self._db.execute("DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY stored LIMIT ?)",
                                 (excess,))
        return True

    def purge(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock, self._db:
            return self._db.execute("DELETE FROM results WHERE expires <= ?", (now,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
