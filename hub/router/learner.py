"""Learning per prompt, live: which model answers which requests well.

The dispatcher asks :meth:`PromptLearner.estimate` once per request: the text's hashed features
(hub/router/predict.py), then each trained model's chance of answering it well, which the router
scores instead of the model's constant (``route(..., predicted=...)``). The labels are what the
hub already sees:

- an answer refused for a confidence below the request's floor: 0 for that model;
- an answer's own confidence, when the model gives one: that confidence, as a soft label;
- a user's thumbs up or down (``POST /api/feedback/{id}``, the dashboard): 1 or 0, weighing
  ``feedback_weight`` outcomes, since a person read the answer.

An answer with neither teaches nothing: its success says the model ran, not that it was right.
Requests are remembered for feedback by their features only (never their text), a bounded number
for a bounded time. The predictor's state is kept in SQLite and survives restarts; a state that
does not validate is set aside (kept, not overwritten) and learning starts again.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..sqlite_db import open_db
from .predict import Features, PredictorConfig, PromptPredictor

log = logging.getLogger(__name__)

Rating = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class PromptEstimate:
    features: Features
    #: model → chance of a good answer; only models with enough outcomes (empty: cold start)
    quality: dict[str, float]


@dataclass(slots=True)
class _Answered:
    """An answer that can still be rated. Its features are kept as two flat arrays, ~1 KB: as
    a tuple of pairs they took ~16 KB, and thousands are remembered."""

    task: str
    model: str
    buckets: array
    values: array
    at: float
    rating: Rating | None = None

    @property
    def features(self) -> Features:
        return tuple(zip(self.buckets, self.values))


class FeedbackError(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class PromptLearner:
    def __init__(self, cfg: PredictorConfig, db_path: Path | None = None) -> None:
        self.cfg = cfg
        self.predictor = PromptPredictor(cfg)
        self.counts: collections.Counter[str] = collections.Counter()
        self._answered: collections.OrderedDict[str, _Answered] = collections.OrderedDict()
        self._dirty = False
        self._saved_at = time.monotonic()
        self._lock = threading.Lock()
        self._db = None
        if db_path is not None:
            self._db = open_db(db_path, "CREATE TABLE IF NOT EXISTS predictor (id INTEGER PRIMARY KEY CHECK (id = 1),"
                                        " state TEXT NOT NULL)",
                               "CREATE TABLE IF NOT EXISTS predictor_rejected (at REAL, reason TEXT, state TEXT)")
            self._load(db_path)

    def _load(self, db_path: Path) -> None:
        assert self._db is not None
        row = self._db.execute("SELECT state FROM predictor WHERE id = 1").fetchone()
        if row is None:
            return
        try:
            self.predictor = PromptPredictor.from_state(json.loads(row[0]), self.cfg)
        except ValueError as exc:  # json's decode error is one too
            log.error("%s: the per-prompt predictor's saved state is unusable (%s): set aside in table "
                      "predictor_rejected, learning again from nothing", db_path, exc)
            self.counts["state_rejected"] += 1
            with self._db:
                self._db.execute("INSERT INTO predictor_rejected VALUES (strftime('%s','now'), ?, ?)", (str(exc), row[0]))
                self._db.execute("DELETE FROM predictor WHERE id = 1")

    def applies(self, task: str, text: str | None) -> bool:
        return text is not None and task in self.cfg.tasks

    def estimate(self, task: str, text: str | None) -> PromptEstimate | None:
        """Features and per-model chances for a request (None: not a task the predictor learns)."""
        if not self.applies(task, text):
            return None
        assert text is not None
        features = self.predictor.features(text)
        return PromptEstimate(features, self.predictor.estimate(task, features))  # {} when disabled

    def learn(self, task: str, model: str, features: Features, good: float, weight: float = 1.0) -> None:
        self.predictor.learn(task, model, features, good, weight)
        self._dirty = True
        self.counts["learned"] += 1

    def answered(self, request_id: str, task: str, model: str, estimate: PromptEstimate, at: float) -> None:
        """Remember who answered a request, for its feedback (features only, never the text)."""
        f = estimate.features
        self._answered[request_id] = _Answered(task, model, array("l", [b for b, _ in f]),
                                               array("f", [v for _, v in f]), at)
        self._answered.move_to_end(request_id)
        while len(self._answered) > self.cfg.remember_requests:
            self._answered.popitem(last=False)

    def feedback(self, request_id: str, rating: Rating, now: float) -> dict[str, object]:
        """A person's verdict on an answer: an outcome for the model that gave it."""
        a = self._answered.get(request_id)
        if a is None or now - a.at > self.cfg.feedback_within_s:
            raise FeedbackError("unknown_request", f"no answer to rate with id {request_id!r}: only the last "
                                f"{self.cfg.remember_requests} answers by a model, of the last "
                                f"{self.cfg.feedback_within_s / 3600:g} h, of tasks {', '.join(self.cfg.tasks)}, "
                                "can be rated", 404)
        if a.rating is not None:
            raise FeedbackError("already_rated", f"request {request_id!r} was already rated {a.rating!r}", 409)
        a.rating = rating
        self.learn(a.task, a.model, a.features, 1.0 if rating == "up" else 0.0, self.cfg.feedback_weight)
        self.counts[f"feedback_{rating}"] += 1
        return {"id": request_id, "rating": rating, "task": a.task, "model": a.model,
                "outcomes": self.predictor.samples(a.task, a.model), "min_samples": self.cfg.min_samples}

    def status(self) -> dict[str, object]:
        """What the predictor has learned: outcomes per task and model, and the feedback counted."""
        models = {task: {m: self.predictor.samples(task, m) for m in self.predictor.models(task)}
                  for task in self.cfg.tasks}
        return {"enabled": self.cfg.enabled, "tasks": list(self.cfg.tasks), "min_samples": self.cfg.min_samples,
                "outcomes": {t: v for t, v in models.items() if v},
                "feedback": {"up": self.counts["feedback_up"], "down": self.counts["feedback_down"]},
                "learned": self.counts["learned"]}

    def _due(self, force: bool) -> dict[str, object] | None:
        """The state to write, when there is news and (unless forced) save_every_s has passed."""
        if self._db is None or not self._dirty:
            return None
        now = time.monotonic()
        if not force and now - self._saved_at < self.cfg.save_every_s:
            return None
        self._dirty, self._saved_at = False, now
        return self.predictor.to_state()  # a copy: learning may go on while it is written

    def _write(self, state: dict[str, object]) -> None:
        text = json.dumps(state, separators=(",", ":"))
        with self._lock:
            if self._db is not None:
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO predictor VALUES (1, ?)", (text,))

    def flush(self, force: bool = True) -> None:
        state = self._due(force)
        if state is not None:
            self._write(state)

    async def flush_async(self) -> None:
        """From the hub's housekeeping: at most every save_every_s, written in a worker thread."""
        state = self._due(False)
        if state is not None:
            await asyncio.to_thread(self._write, state)

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            with self._lock:
                self._db.close()
            self._db = None
