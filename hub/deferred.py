"""Deferred requests outlive the hub process.

A request with a deadline may wait hours for its clean window. Its promise, "done by the
deadline", must not depend on the hub staying up, so it is written down when it starts waiting
(with the MQTT route its answer goes to), removed only when it has run, and resumed when the hub
starts again. The outcome of every deferred request is kept for a day, so an HTTP caller whose
connection ended with the old process can fetch it at ``GET /api/deferred/{id}``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import format_validation_error
from .router.request import InferRequest
from .sqlite_db import open_db

#: How long a finished deferred request's outcome is kept for its caller.
KEEP_FINISHED_S = 86400


@dataclass(frozen=True)
class ReplyRoute:
    """Where an MQTT command's answer goes: its response topic (or ``reply_to``) and correlation."""

    topic: str
    correlation: bytes | None = None


@dataclass(frozen=True)
class Waiting:
    request: InferRequest
    run_at: float
    reply: ReplyRoute | None


class DeferredStore:
    def __init__(self, path: Path | None) -> None:
        self._db = open_db(path, "CREATE TABLE IF NOT EXISTS deferred (id TEXT PRIMARY KEY, request TEXT NOT NULL,"
                                 " task TEXT, run_at REAL, deadline REAL, reply_topic TEXT, correlation BLOB,"
                                 " state TEXT NOT NULL, outcome TEXT, finished_at REAL)")
        self._lock = threading.Lock()

    def add(self, req: InferRequest, run_at: float, reply: ReplyRoute | None) -> None:
        # Only the request's own fields: a command's reply_to is kept as its reply route.
        doc = req.model_dump_json(include=set(InferRequest.model_fields))
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO deferred VALUES (?, ?, ?, ?, ?, ?, ?, 'waiting', NULL, NULL)",
                             (req.id, doc, req.task, run_at, req.deadline,
                              reply.topic if reply else None, reply.correlation if reply else None))

    def finish(self, request_id: str, outcome: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute("UPDATE deferred SET state = 'done', outcome = ?, finished_at = ? WHERE id = ?",
                             (json.dumps(outcome), now, request_id))
            self._db.execute("DELETE FROM deferred WHERE state = 'done' AND finished_at < ?", (now - KEEP_FINISHED_S,))

    def waiting(self) -> list[Waiting]:
        with self._lock:
            rows = self._db.execute("SELECT id, request, run_at, reply_topic, correlation FROM deferred"
                                    " WHERE state = 'waiting' ORDER BY run_at").fetchall()
        out = []
        for request_id, doc, run_at, topic, correlation in rows:
            try:
                req = InferRequest.model_validate_json(doc)
            except ValidationError as exc:
                # Written by an older hub that took what this one refuses (an empty text, say):
                # finished as refused rather than stopping the hub's start.
                why = format_validation_error(exc).replace("\n", "; ")
                self.finish(request_id, {"id": request_id, "ok": False,
                                         "error": {"code": "bad_request", "message": why}})
                continue
            out.append(Waiting(req, run_at, ReplyRoute(topic, correlation) if topic else None))
        return out

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT id, task, run_at, deadline, reply_topic, state, outcome, finished_at"
                                   " FROM deferred WHERE id = ?", (request_id,)).fetchone()
        return _doc(row) if row else None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, task, run_at, deadline, reply_topic, state, NULL, finished_at"
                                    " FROM deferred ORDER BY state DESC, run_at").fetchall()
        return [_doc(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _doc(row: tuple[Any, ...]) -> dict[str, Any]:
    request_id, task, run_at, deadline, topic, state, outcome, finished_at = row
    doc: dict[str, Any] = {"id": request_id, "task": task, "state": state, "run_at": run_at, "deadline": deadline,
                           "reply_topic": topic}
    if finished_at is not None:
        doc["finished_at"] = finished_at
    if outcome is not None:
        doc["outcome"] = json.loads(outcome)
    return doc
