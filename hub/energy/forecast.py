"""The best window for a job: lowest mean carbon (or price) over its duration, finishing by its
deadline — in the manner of the Carbon Aware SDK's forecast endpoint ("optimalDataPoints").

Pure: the forecast, the job and ``now`` in; a window out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ForecastPoint


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float
    mean: float  # time-weighted mean of the forecast over [start, end)


class NoWindow(ValueError):
    pass


def mean_over(points: list[ForecastPoint], start: float, end: float) -> float | None:
    """Time-weighted mean over [start, end); None when the forecast does not cover all of it."""
    covered = 0.0
    total = 0.0
    for p in points:
        lo, hi = max(p.start, start), min(p.end, end)
        if hi > lo:
            covered += hi - lo
            total += (hi - lo) * p.value
    if end - start <= 0 or covered < (end - start) * 0.999:
        return None
    return total / covered


def best_window(points: list[ForecastPoint], duration_s: float, now: float, deadline: float) -> Window:
    """The start in [now, deadline − duration] with the lowest mean. Candidate starts are now and
    every forecast boundary (the mean only changes slope there). Ties go to the earliest."""
    if duration_s <= 0:
        raise NoWindow("duration must be positive")
    latest = deadline - duration_s
    if latest < now:
        raise NoWindow(f"the job needs {duration_s:g} s but the deadline is {deadline - now:.0f} s away")
    pts = sorted(points, key=lambda p: p.start)
    candidates = {now, latest}
    for p in pts:
        for edge in (p.start, p.end, p.start - duration_s, p.end - duration_s):
            if now <= edge <= latest:
                candidates.add(edge)
    best: Window | None = None
    for s in sorted(candidates):
        m = mean_over(pts, s, s + duration_s)
        if m is not None and (best is None or m < best.mean - 1e-9):
            best = Window(s, s + duration_s, m)
    if best is None:
        raise NoWindow("the forecast does not cover any window before the deadline")
    return best
