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

    # -- reading past the data's ends (``sovereign simulate --wrap``) -----------------------------

    def covered(self) -> tuple[float, float]:
        """[start, end) of the data: the last value is taken to hold for one more step (the last
        interval's length), as a half-hourly series' last row covers its half hour."""
        return self.times[0], self.times[-1] + max(self.times[-1] - self.times[-2], 0.0)

    def wrapped(self) -> "Series":
        """This series read round: inside :meth:`covered` the same values; outside it, the value
        a whole number of periods away, inside the data. See :class:`WrappedSeries`."""
        return WrappedSeries(self.times, self.values, self.skipped)


_DAY = 86400.0
_YEAR = 365 * _DAY


@dataclass(frozen=True)
class WrappedSeries(Series):
    """A series whose times outside the data read it modulo a period, so a replay longer than the
    data (or started outside it) still sees days and seasons in order.

    The period is a year of 365 days when the data covers one (time of day kept exactly, the
    date within a day; the weekday is not kept), otherwise the whole days the data covers (time
    of day kept), or, under a day of data, the span itself. A time past the end reads the latest
    data at that phase; a time before the start, the earliest. Inside the data nothing changes.
    """

    def period(self) -> float:
        start, end = self.covered()
        span = end - start
        if span >= _YEAR:
            return _YEAR
        if span >= _DAY:
            return (span // _DAY) * _DAY
        return span

    def _segment(self, t: float) -> tuple[float, float]:
        """(offset, until): ``t - offset`` lies in the data, for every time from ``t`` to ``until``."""
        start, end = self.covered()
        p = self.period()
        if p <= 0:  # every row at one time: nothing to go round, read it clamped
            return 0.0, math.inf
        if t >= end:
            k = math.floor((t - end) / p) + 1  # the fewest periods that bring t back below the end
            return k * p, end + k * p
        if t < start:
            k = math.ceil((start - t) / p)  # the fewest that bring it up to the start
            return -k * p, start - (k - 1) * p
        return 0.0, end

    def fold(self, t: float) -> float:
        """The time inside the data that ``t`` reads."""
        return t - self._segment(t)[0]

    def at(self, t: float) -> float:
        return super().at(self.fold(t))

    def window(self, t0: float, t1: float) -> list[tuple[float, float, float]]:
        """(start, end, value) of intervals covering [t0, t1) without gaps, in ``t``'s time; an
        interval is cut where the reading jumps a period (so one may be shorter than a step)."""
        if self.period() <= 0:
            return super().window(t0, t1)
        _, data_end = self.covered()
        out = []
        t = t0
        while t < t1:
            offset, until = self._segment(t)
            f = t - offset
            i = max(bisect.bisect_right(self.times, f) - 1, 0)
            step_end = self.times[i + 1] if i + 1 < len(self.times) else data_end
            end = min(step_end + offset, until)
            # The first interval may start before t0, as Series.window's does; the others start
            # where the one before ended.
            out.append((self.times[i] + offset if t == t0 else t, end, self.values[i]))
            t = end
        return out

    def wrapped(self) -> "Series":
        return self
