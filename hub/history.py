"""History of every energy reading and derived value, in SQLite (WAL) by default.

Raw points are kept for ``raw_retention_days``; at write time every point is also folded into a
5-minute aggregate (count, sum, min, max), which is kept for ``rollup_retention_days``. A query
is answered from raw points when its range is still covered by them, else from the aggregates.
Writes are buffered and committed from a worker thread, one transaction per batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROLLUP_S = 300


@dataclass(frozen=True, slots=True)
class Point:
    metric: str
    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class Bucket:
    t: float  # start of the step
    mean: float
    min: float
    max: float
    n: int


class SqliteHistory:
    def __init__(self, path: Path, raw_retention_days: float = 7, rollup_retention_days: float = 365) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.raw_retention_s = raw_retention_days * 86400
        self.rollup_retention_s = rollup_retention_days * 86400
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        self._pending: list[Point] = []
        with self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS points (metric TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS points_metric_ts ON points (metric, ts)")
            self._db.execute("CREATE TABLE IF NOT EXISTS rollup (metric TEXT NOT NULL, bucket INTEGER NOT NULL,"
                             " n INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,"
                             " PRIMARY KEY (metric, bucket)) WITHOUT ROWID")
        self._last_retention = 0.0

    def add(self, metric: str, ts: float, value: float) -> None:
        """Buffer a point (cheap, in the loop); ``flush`` writes it."""
        self._pending.append(Point(metric, ts, value))

    def _take(self) -> list[Point]:
        batch, self._pending = self._pending, []
        return batch

    def write(self, points: list[Point]) -> None:
        if not points:
            return
        rows = [(p.metric, p.ts, p.value) for p in points]
        rollups = [(p.metric, int(p.ts // ROLLUP_S) * ROLLUP_S, p.value, p.value, p.value) for p in points]
        with self._lock, self._db:
            self._db.executemany("INSERT INTO points VALUES (?, ?, ?)", rows)
            self._db.executemany(
                "INSERT INTO rollup VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (metric, bucket) DO UPDATE SET"
                " n = n + 1, sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max)",
                rollups)

    def flush(self) -> None:
        self.write(self._take())

    async def flush_async(self) -> None:
        batch = self._take()
        if batch:
            await asyncio.to_thread(self.write, batch)

    def apply_retention(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute("DELETE FROM points WHERE ts < ?", (now - self.raw_retention_s,))
            self._db.execute("DELETE FROM rollup WHERE bucket < ?", (now - self.rollup_retention_s,))

    async def maintain(self, now: float | None = None) -> None:
        """Retention, at most hourly, off the loop."""
        now = time.time() if now is None else now
        if now - self._last_retention >= 3600:
            self._last_retention = now
            await asyncio.to_thread(self.apply_retention, now)

    def metrics(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT metric FROM rollup ORDER BY metric")]

    def query(self, metric: str, since: float, until: float, step: float, now: float | None = None) -> list[Bucket]:
        """Aggregates of ``metric`` in [since, until) per ``step`` seconds."""
        now = time.time() if now is None else now
        step = max(step, 1.0)
        with self._lock:
            if since >= now - self.raw_retention_s:
                rows = self._db.execute(
                    "SELECT CAST(ts / ? AS INTEGER) * ? AS t, avg(value), min(value), max(value), count(*)"
                    " FROM points WHERE metric = ? AND ts >= ? AND ts < ? GROUP BY t ORDER BY t",
                    (step, step, metric, since, until)).fetchall()
            else:
                step = max(step, ROLLUP_S)
                rows = self._db.execute(
                    "SELECT CAST(bucket / ? AS INTEGER) * ? AS t, sum(sum) / sum(n), min(min), max(max), sum(n)"
                    " FROM rollup WHERE metric = ? AND bucket >= ? AND bucket < ? GROUP BY t ORDER BY t",
                    (step, step, metric, int(since // ROLLUP_S) * ROLLUP_S, until)).fetchall()
        return [Bucket(float(t), mean, lo, hi, n) for t, mean, lo, hi, n in rows]

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
