"""Opening the hub's SQLite files the same way everywhere: WAL, usable from a worker thread."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_db(path: Path | None, *schema: str) -> sqlite3.Connection:
    """``path`` None gives an in-memory database (tests, simulation). Callers serialise access
    with their own lock: the connection may be used from worker threads, one at a time."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path or ":memory:", check_same_thread=False)
    with db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            db.execute(statement)
    return db
