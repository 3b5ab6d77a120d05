"""The cost ledger: what every task cost, per layer, device and task type — count, money, joules,
gCO2, latency — and what it would have cost had everything gone to the cloud.

One row per finished request (the dispatcher writes it; cache hits too, at zero cost), in SQLite
under the data directory. Reports aggregate over a period; the counterfactual uses the request's
token estimate and the cloud price of ``router.counterfactual_model`` (hub.toml, else the built-in
list of published prices), so "saved" is an estimate and says so. A request priced with no known
cloud price keeps a NULL counterfactual: it is left out of "all cloud" and "saved" (and counted
as ``unpriced``), and a period with no priced request has no saving at all (null), never 0.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..sqlite_db import open_db


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    request_id: str
    at: float
    task: str
    device_id: str  # "cache" for cache hits
    model: str
    layer: str  # tier: tiny | small | medium | large, or "cache" / "rule"
    ok: bool
    latency_ms: float
    joules: float
    gco2: float
    cost: float
    cloud_cost: float | None  # the counterfactual: the same request sent to the cloud; None: no price
    cloud_gco2: float


PERIODS = {"today": 86400, "week": 7 * 86400, "month": 30 * 86400}


def rounded(value: float, digits: int) -> float:
    """``round``, and never -0.0: a saving of -0.0000001 is 0, not "-0.0"."""
    return round(value, digits) + 0.0


class Ledger:
    def __init__(self, path: Path | None) -> None:
        self._db = open_db(
            path,
            "CREATE TABLE IF NOT EXISTS ledger (request_id TEXT, at REAL, task TEXT, device TEXT, model TEXT,"
            " layer TEXT, ok INTEGER, latency_ms REAL, joules REAL, gco2 REAL, cost REAL, cloud_cost REAL,"
            " cloud_gco2 REAL)",
            "CREATE INDEX IF NOT EXISTS ledger_at ON ledger (at)")
        self._lock = threading.Lock()
        self._pending: list[LedgerEntry] = []

    def add(self, e: LedgerEntry) -> None:
        self._pending.append(e)

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                 [(e.request_id, e.at, e.task, e.device_id, e.model, e.layer, int(e.ok), e.latency_ms,
                                   e.joules, e.gco2, e.cost, e.cloud_cost, e.cloud_gco2) for e in batch])

    def report(self, since: float, until: float | None = None) -> dict[str, Any]:
        """Totals, and breakdowns by layer, device and task, over [since, until)."""
        self.flush()
        until = time.time() if until is None else until
        cols = ("count(*), coalesce(sum(ok),0), coalesce(sum(cost),0), coalesce(sum(joules),0), coalesce(sum(gco2),0),"
                " coalesce(avg(latency_ms),0), coalesce(sum(cloud_cost),0), coalesce(sum(cloud_gco2),0),"
                " count(cloud_cost), coalesce(sum(CASE WHEN cloud_cost IS NOT NULL THEN cost END),0)")

        def row(r: tuple[Any, ...]) -> dict[str, Any]:
            n, ok, cost, joules, gco2, lat, cloud_cost, cloud_gco2, priced, priced_cost = r
            # No priced request: nothing to compare with (null), unless there was no request at all.
            known = priced > 0 or n == 0
            return {"count": n, "ok": ok, "cost": rounded(cost, 6), "joules": rounded(joules, 3),
                    "gco2": rounded(gco2, 4), "mean_latency_ms": rounded(lat, 2),
                    "all_cloud_cost": rounded(cloud_cost, 6) if known else None,
                    "saved_cost": rounded(cloud_cost - priced_cost, 6) if known else None,
                    "unpriced": n - priced, "all_cloud_gco2": rounded(cloud_gco2, 4)}

        with self._lock:
            total = row(self._db.execute(f"SELECT {cols} FROM ledger WHERE at >= ? AND at < ?", (since, until)).fetchone())
            groups = {}
            for key in ("layer", "device", "task"):
                groups[f"by_{key}"] = {
                    r[0]: row(r[1:]) for r in self._db.execute(
                        f"SELECT {key}, {cols} FROM ledger WHERE at >= ? AND at < ? GROUP BY {key} ORDER BY {key}",
                        (since, until))}
        return {"since": since, "until": until, "total": total, **groups}

    def periods(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {name: self.report(now - span, now) for name, span in PERIODS.items()}

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
