"""Compiled patterns — the inversion: hot, stable AI answers become deterministic rules.

Every successful answer to a cacheable classification-like task is observed with its normalised
input. When the same input was answered ``min_count`` times and always the same way, a rule is
*proposed*; once a person approves it (``sovereign rules approve ID``) it is served at the code
layer before any model is asked, at ~0 cost. Disabled rules stay on record and are not proposed
again. Rules persist in SQLite.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..sqlite_db import open_db
from .cache import normalise
from .model import TaskRequest

RuleState = Literal["proposed", "approved", "disabled"]


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    #: Answers needed before a rule is proposed, all of them the same.
    min_count: int = Field(default=5, ge=2)
    #: Tasks whose answers may be compiled (labels, not prose).
    tasks: list[str] = Field(default_factory=lambda: ["intent", "classify"])
    #: Inputs observed but not yet proposed, kept at most (the least recent are forgotten).
    max_tracked: int = Field(default=50_000, ge=100)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    task: str
    pattern: str  # the normalised input it matches
    answer: Any
    state: RuleState
    observed: int
    hits: int
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "pattern": self.pattern, "answer": self.answer,
                "state": self.state, "observed": self.observed, "hits": self.hits, "created": self.created}


class RuleBook:
    def __init__(self, cfg: RulesConfig, path: Path | None) -> None:
        self.cfg = cfg
        self._db = open_db(path, "CREATE TABLE IF NOT EXISTS rules (id TEXT PRIMARY KEY, task TEXT, pattern TEXT,"
                                 " answer TEXT, state TEXT, observed INTEGER, hits INTEGER, created REAL)")
        self._lock = threading.Lock()
        self._rules: dict[str, Rule] = {}
        with self._lock:
            for row in self._db.execute("SELECT id, task, pattern, answer, state, observed, hits, created FROM rules"):
                self._rules[row[0]] = Rule(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], row[7])
        self._tracked: dict[str, Counter[str]] = {}

    @staticmethod
    def rule_id(task: str, pattern: str) -> str:
        return hashlib.sha256(f"{task}\x00{pattern}".encode()).hexdigest()[:12]

    def _save(self, r: Rule) -> None:
        self._rules[r.id] = r
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO rules VALUES (?,?,?,?,?,?,?,?)",
                             (r.id, r.task, r.pattern, json.dumps(r.answer), r.state, r.observed, r.hits, r.created))

    def observe(self, req: TaskRequest, answer: Any, now: float | None = None) -> Rule | None:
        """A successful answer. Returns the rule when this observation proposed one."""
        if not self.cfg.enabled or req.task not in self.cfg.tasks or req.text is None:
            return None
        pattern = normalise(req)
        rid = self.rule_id(req.task, pattern)
        if rid in self._rules:
            return None
        answers = self._tracked.setdefault(rid, Counter())
        answers[json.dumps(answer, sort_keys=True)] += 1
        if len(self._tracked) > self.cfg.max_tracked:
            self._tracked.pop(next(iter(self._tracked)))
        total = sum(answers.values())
        if total < self.cfg.min_count or len(answers) != 1:
            return None
        del self._tracked[rid]
        rule = Rule(rid, req.task, pattern, answer, "proposed", total, 0, time.time() if now is None else now)
        self._save(rule)
        return rule

    def find(self, req: TaskRequest) -> Rule | None:
        """The approved rule answering this request, if any."""
        if not self._rules or req.text is None or req.task not in self.cfg.tasks:
            return None
        rule = self._rules.get(self.rule_id(req.task, normalise(req)))
        return rule if rule is not None and rule.state == "approved" else None

    def match(self, req: TaskRequest) -> Rule | None:
        """``find``, counting the hit (for requests that are served, not dry runs)."""
        rule = self.find(req)
        if rule is None:
            return None
        hit = Rule(**{**rule.to_dict(), "hits": rule.hits + 1})
        self._save(hit)
        return hit

    def set_state(self, rule_id: str, state: RuleState) -> Rule | None:
        rule = self._rules.get(rule_id)
        if rule is None:
            return None
        updated = Rule(**{**rule.to_dict(), "state": state})
        self._save(updated)
        return updated

    def all(self) -> list[Rule]:
        return sorted(self._rules.values(), key=lambda r: (r.state != "proposed", -r.observed, r.id))

    def close(self) -> None:
        with self._lock:
            self._db.close()
