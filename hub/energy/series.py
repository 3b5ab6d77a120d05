"""Time series from two-column CSV files (``Time,<column>``), as the bundled 2020 grid data:
read by the replay plugin and by the simulator."""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


class SeriesError(ValueError):
    pass


@dataclass(frozen=True)
class Series:
    """A time series from a two-column CSV: sorted Unix times and values."""

    times: list[float]
    values: list[float]
    skipped: int

    @classmethod
    def load(cls, path: Path, column: str) -> "Series":
        times, values, skipped = [], [], 0
        with path.expanduser().open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or len(header) < 2 or header[0].strip() != "Time" or header[1].strip() != column:
                raise SeriesError(f"{path}: expected the header 'Time,{column}', got {header!r}")
            for row in reader:
                try:
                    t = datetime.fromisoformat(row[0].strip()).replace(tzinfo=timezone.utc).timestamp()
                    v = float(row[1])
                    if not math.isfinite(v):
                        raise ValueError("not finite")
                except (ValueError, IndexError):
                    skipped += 1
                    continue
                times.append(t)
                values.append(v)
        if len(times) < 2:
            raise SeriesError(f"{path}: fewer than two valid rows ({skipped} unreadable)")
        order = sorted(range(len(times)), key=times.__getitem__)
        return cls([times[i] for i in order], [values[i] for i in order], skipped)

    def at(self, t: float) -> float:
        """The value in force at ``t`` (step function, clamped to the data's span)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.values[min(max(i, 0), len(self.values) - 1)]

    def window(self, t0: float, t1: float) -> list[tuple[float, float, float]]:
        """(start, end, value) of every interval overlapping [t0, t1)."""
        i = max(bisect.bisect_right(self.times, t0) - 1, 0)
        out = []
        while i < len(self.times) - 1 and self.times[i] < t1:
            out.append((self.times[i], self.times[i + 1], self.values[i]))
            i += 1
        return out
