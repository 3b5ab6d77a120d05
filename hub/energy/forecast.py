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


#: GET /api/energy/best-window's defaults, when they fit the forecast the hub holds.
DEFAULT_DURATION_S = 3600.0
DEFAULT_HORIZON_S = 24 * 3600.0


def covered_until(points: list[ForecastPoint], now: float) -> float | None:
    """Where the forecast's unbroken cover ahead of ``now`` ends (from its first point still
    running, or to come); None when nothing of it is ahead."""
    pts = sorted((p for p in points if p.end > now), key=lambda p: p.start)
    if not pts:
        return None
    end = pts[0].end
    for p in pts[1:]:
        if p.start > end + 1e-6:
            break
        end = max(end, p.end)
    return end


def _span(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def fit_defaults(points: list[ForecastPoint], now: float, duration_s: float | None, deadline: float | None,
                 what: str = "forecast") -> tuple[float, float, list[str]]:
    """The duration and deadline of a best-window question that left either out: 1 h due
    within 24 h, unless the forecast the hub holds reaches less far. Then the deadline is the end
    of the forecast and the duration, if 1 h no longer fits, a quarter of what it covers. Returns
    them with a note for each default that was changed, or raises NoWindow saying how far the
    forecast reaches and what to ask instead."""
    notes: list[str] = []
    end = covered_until(points, now)
    if end is None or end <= now:
        raise NoWindow(f"the hub holds no {what} reaching past now")
    start = max(now, min(p.start for p in points if p.end > now))
    if deadline is None:
        deadline = now + DEFAULT_HORIZON_S
        if end < deadline:
            deadline = end
            notes.append(f"deadline: the end of the {what}, {_span(end - now)} from now (the default, 24 h, "
                         f"reaches past it)")
    if duration_s is None:
        duration_s = DEFAULT_DURATION_S
        room = min(deadline, end) - start
        if room < duration_s:
            if room <= 0:
                raise NoWindow(f"the {what} covers nothing before the deadline (it covers "
                               f"{_span(start - now)} to {_span(end - now)} from now)")
            duration_s = max(1.0, float(int(room / 4)))
            notes.append(f"duration: {_span(duration_s)}, a quarter of the {_span(room)} the {what} covers before "
                         f"the deadline (the default, 1 h, does not fit)")
    return duration_s, deadline, notes


def no_window_hint(points: list[ForecastPoint], now: float, what: str = "forecast") -> str:
    """What to ask instead, when a window of ``duration_s`` before ``deadline`` is not in the forecast."""
    end = covered_until(points, now)
    if end is None or end <= now:
        return ("a carbon forecast comes from the ukcarbon, electricitymaps or replay plugin, a price forecast from "
                "the tariff plugin")
    room = end - max(now, min(p.start for p in points if p.end > now))
    return (f"the {what} reaches {_span(end - now)} ahead (until Unix time {end:.0f}): ask for a duration of at "
            f"most {max(1, int(room))}s and a deadline within {max(1, int(end - now))}s (e.g. "
            f"duration={max(1, int(room / 4))}s&deadline={max(1, int(end - now))}s), or leave both out")


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
