"""Gaze processing core, without any I/O: sample parsing, I-VT fixation detection, AOI metrics.

## Sample formats

Both formats carry the same fields:

| field | unit | range | required |
|---|---|---|---|
| `t` | seconds (float; Unix time or time since tracker start) | finite, must increase from sample to sample | yes |
| `x` | normalised screen width: 0 = left edge, 1 = right edge | -0.1 .. 1.1 | yes |
| `y` | normalised screen height: 0 = top edge, 1 = bottom edge | -0.1 .. 1.1 | yes |
| `confidence` | tracker confidence | 0 .. 1 | yes |
| `pupil` | pupil diameter, mm | > 0 | no |

`x`/`y` may overshoot the screen by 0.1 because trackers report gaze slightly off-screen.
NaN and infinities are rejected everywhere. A sample whose timestamp does not increase is
not a parse error; the fixation detector ignores and counts it (`out_of_order`).

### MQTT (JSON)

One UTF-8 JSON object per message, at most 4096 bytes:

```json
{"t": 1732540000.123, "x": 0.41, "y": 0.52, "confidence": 0.97, "pupil": 3.1}
```

Values are JSON numbers (not strings, not booleans). `pupil` may be omitted or `null`.
Unknown keys and duplicate keys are rejected.

### Serial (CSV)

One sample per line, ASCII, fields separated by commas, each line terminated by `\\n`
(`\\r\\n` is accepted too):

```
t,x,y,confidence[,pupil]
```

- Exactly 4 fields, or 5 with `pupil`; an empty field is an error (omit `pupil` entirely
  instead of leaving it empty).
- Numbers are decimal floats (`12.5`, `1732540000.123`, `1e-3`); spaces around a field are
  ignored.
- Blank lines and lines whose first non-blank character is `#` are comments and are skipped.

Example:

```
# t,x,y,confidence,pupil
1732540000.000,0.412,0.520,0.97,3.1
1732540000.004,0.413,0.519,0.96
```

Every rejected sample raises `GazeParseError` (a `ValueError`) whose message names the field
and the offending value, e.g. `x: 1.5 is outside -0.1..1.1`.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_JSON_BYTES = 4096
XY_RANGE = (-0.1, 1.1)
REQUIRED_KEYS = ("t", "x", "y", "confidence")
ALL_KEYS = (*REQUIRED_KEYS, "pupil")
# Durations compared against thresholds are differences of float timestamps around 1.7e9 s,
# which carry ~1e-7 s of rounding; a 7-sample fixation at 60 Hz must count as 0.1 s.
_EPS_S = 1e-6


class GazeParseError(ValueError):
    """A gaze sample could not be parsed or is out of range; the message names field and value."""


def _check(field: str, value: float) -> float:
    """Validate one numeric field of a sample; raises GazeParseError naming the field."""
    if not math.isfinite(value):
        raise GazeParseError(f"{field}: must be a finite number, got {value!r}")
    if field in ("x", "y") and not XY_RANGE[0] <= value <= XY_RANGE[1]:
        raise GazeParseError(f"{field}: {value!r} is outside {XY_RANGE[0]}..{XY_RANGE[1]}")
    if field == "confidence" and not 0.0 <= value <= 1.0:
        raise GazeParseError(f"confidence: {value!r} is outside 0..1")
    if field == "pupil" and value <= 0.0:
        raise GazeParseError(f"pupil: must be > 0 mm, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class GazeSample:
    t: float  # seconds
    x: float  # normalised, 0 = left
    y: float  # normalised, 0 = top
    confidence: float
    pupil: float | None = None  # mm

    def __post_init__(self) -> None:
        for name in REQUIRED_KEYS:
            _check(name, getattr(self, name))
        if self.pupil is not None:
            _check("pupil", self.pupil)


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise GazeParseError(f"{key}: duplicate key")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    # json accepts the non-standard NaN/Infinity/-Infinity literals by default.
    raise GazeParseError(f"non-finite number {name!r} is not allowed")


def parse_json(payload: bytes | str) -> GazeSample:
    """Parse one MQTT JSON gaze payload (format in the module docstring)."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(raw) > MAX_JSON_BYTES:
        raise GazeParseError(f"payload: {len(raw)} bytes is over the {MAX_JSON_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GazeParseError(f"payload: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise GazeParseError(f"payload: invalid JSON ({e.msg} at char {e.pos}): {_short(text)}") from None
    if not isinstance(doc, dict):
        raise GazeParseError(f"payload: expected a JSON object, got {_short(text)}")
    unknown = sorted(set(doc) - set(ALL_KEYS))
    if unknown:
        raise GazeParseError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(ALL_KEYS)}")
    values: dict[str, float | None] = {}
    for key in ALL_KEYS:
        if key not in doc:
            if key != "pupil":
                raise GazeParseError(f"{key}: missing")
            continue
        v = doc[key]
        if v is None and key == "pupil":
            values[key] = None
            continue
        # bool is an int subclass: `true` would otherwise silently become 1.0.
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise GazeParseError(f"{key}: expected a number, got {json.dumps(v)[:80]}")
        values[key] = float(v)  # 1e400 parses to inf; GazeSample rejects it
    return GazeSample(**values)  # type: ignore[arg-type]


def parse_csv_line(line: bytes | str) -> GazeSample | None:
    """Parse one serial line ``t,x,y,confidence[,pupil]``; comments and blank lines give None."""
    if isinstance(line, (bytes, bytearray)):
        try:
            line = bytes(line).decode("ascii")
        except UnicodeDecodeError as e:
            bad = bytes(line)[e.start:e.start + 1]
            raise GazeParseError(f"line: non-ASCII byte {bad!r} at {e.start}") from None
    elif not line.isascii():
        raise GazeParseError(f"line: not ASCII: {_short(line)}")
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split(",")
    if len(fields) not in (4, 5):
        raise GazeParseError(
            f"line: expected 4 or 5 fields (t,x,y,confidence[,pupil]), got {len(fields)} fields: {_short(text)}")
    values: list[float] = []
    for name, field in zip(ALL_KEYS, fields):
        try:
            values.append(float(field))  # float() itself ignores surrounding spaces
        except ValueError:
            raise GazeParseError(f"{name}: not a number: {field.strip()!r}") from None
    return GazeSample(*values)


# --- I-VT fixation detection -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fixation:
    start: float  # s, timestamp of the first sample
    end: float  # s, timestamp of the last sample
    x: float  # centroid, normalised
    y: float
    duration: float  # end - start, s


@dataclass(frozen=True, slots=True)
class Saccade:
    start: float  # s, last sample before the eye moved
    end: float  # s, first sample of the landing (low-velocity) point
    amplitude: float  # degrees, distance between the start and end samples


Event = Fixation | Saccade


@dataclass(slots=True)
class _Open:
    """Accumulator of the fixation being built."""

    start: float
    end: float
    sx: float
    sy: float
    n: int

    def add(self, s: GazeSample) -> None:
        self.end = s.t
        self.sx += s.x
        self.sy += s.y
        self.n += 1

    def freeze(self) -> Fixation:
        return Fixation(self.start, self.end, self.sx / self.n, self.sy / self.n, self.end - self.start)


class IVT:
    """Streaming velocity-threshold identification (I-VT, Salvucci & Goldberg 2000).

    Each interval between consecutive valid samples is slow (velocity below the threshold) or
    fast. A maximal run of slow intervals is a fixation whose samples are the run's endpoints
    (so the landing sample of a saccade is the fixation's first sample); its position is the
    centroid. A maximal run of fast intervals between two slow runs is a saccade. Fixations
    shorter than `min_fixation_s` are dropped. A saccade interrupted by a gap (or `flush`) is
    dropped, since where it landed is unknown.

    Velocity uses Euclidean distance in normalised units times `degrees_per_unit`; this treats
    both axes alike, which is accurate enough for thresholding on a roughly square field of view.
    """

    def __init__(self, *, velocity_threshold_deg_s: float = 30.0, degrees_per_unit: float = 30.0,
                 min_fixation_s: float = 0.1, min_confidence: float = 0.5, max_gap_s: float = 0.1) -> None:
        for name, v in (("velocity_threshold_deg_s", velocity_threshold_deg_s),
                        ("degrees_per_unit", degrees_per_unit), ("max_gap_s", max_gap_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be > 0, got {v!r}")
        if not (math.isfinite(min_fixation_s) and min_fixation_s >= 0):
            raise ValueError(f"min_fixation_s: must be >= 0, got {min_fixation_s!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence: must be within 0..1, got {min_confidence!r}")
        self.velocity_threshold_deg_s = velocity_threshold_deg_s
        self.degrees_per_unit = degrees_per_unit
        self.min_fixation_s = min_fixation_s
        self.min_confidence = min_confidence
        self.max_gap_s = max_gap_s
        self.out_of_order = 0  # samples ignored because their timestamp did not increase
        self.low_confidence = 0  # samples treated as gaps
        self._last_t: float | None = None  # last timestamp seen, valid or not
        self._prev: GazeSample | None = None  # last valid sample, None at start/after a gap
        self._fix: _Open | None = None
        self._sacc_from: GazeSample | None = None  # start of the current fast run

    @property
    def current(self) -> Fixation | None:
        """The fixation in progress (up to the latest sample), whatever its length so far."""
        return self._fix.freeze() if self._fix else None

    def push(self, s: GazeSample) -> list[Event]:
        if self._last_t is not None and s.t <= self._last_t:
            self.out_of_order += 1
            return []
        self._last_t = s.t
        prev = self._prev
        if s.confidence < self.min_confidence:
            self.low_confidence += 1
            # End the fixation as soon as the gap is known to be too long, not at the next good sample.
            if prev is not None and s.t - prev.t > self.max_gap_s:
                return self._reset()
            return []
        events: list[Event] = []
        if prev is not None and s.t - prev.t > self.max_gap_s:
            events = self._reset()
            prev = None
        self._prev = s
        if prev is None:
            return events
        velocity = math.hypot(s.x - prev.x, s.y - prev.y) / (s.t - prev.t) * self.degrees_per_unit
        if velocity < self.velocity_threshold_deg_s:
            if self._fix is None:
                if self._sacc_from is not None:
                    a = self._sacc_from
                    amp = math.hypot(prev.x - a.x, prev.y - a.y) * self.degrees_per_unit
                    events.append(Saccade(a.t, prev.t, amp))
                    self._sacc_from = None
                self._fix = _Open(prev.t, prev.t, prev.x, prev.y, 1)
            self._fix.add(s)
        else:
            events += self._close_fixation()
            if self._sacc_from is None:
                self._sacc_from = prev
        return events

    def flush(self) -> list[Event]:
        """End the fixation in progress (emitted if long enough) and forget the stream's position."""
        return self._reset()

    def _close_fixation(self) -> list[Event]:
        fix, self._fix = self._fix, None
        if fix is None or fix.end - fix.start < self.min_fixation_s - _EPS_S:
            return []
        return [fix.freeze()]

    def _reset(self) -> list[Event]:
        self._prev = None
        self._sacc_from = None
        return self._close_fixation()


# --- Areas of interest and rolling metrics -----------------------------------------------------


class AreasOfInterest:
    """Named rectangles in normalised screen coordinates, ``{name: (x0, y0, x1, y1)}``, inclusive."""

    def __init__(self, rects: Mapping[str, tuple[float, float, float, float]]) -> None:
        self.rects: dict[str, tuple[float, float, float, float]] = {}
        for name, r in rects.items():
            if len(r) != 4 or not all(math.isfinite(v) for v in r):
                raise ValueError(f"AOI {name!r}: expected 4 finite numbers (x0, y0, x1, y1), got {r!r}")
            x0, y0, x1, y1 = (float(v) for v in r)
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"AOI {name!r}: need x0 < x1 and y0 < y1, got {r!r}")
            self.rects[name] = (x0, y0, x1, y1)

    @property
    def names(self) -> list[str]:
        return list(self.rects)

    def hits(self, x: float, y: float) -> list[str]:
        """Names of the AOIs containing the point (AOIs may overlap)."""
        return [n for n, (x0, y0, x1, y1) in self.rects.items() if x0 <= x <= x1 and y0 <= y <= y1]


class GazeMetrics:
    """Rolling attention metrics over the last `window_s` seconds of gaze time.

    Feed samples with `push` (runs its own IVT and returns its events) or completed fixations
    with `add`. `now` is on the tracker's clock (sample `t`). A fixation counts toward the window
    for the part of it that overlaps ``[now - window_s, now]``; the fixation in progress counts
    once it has reached the detector's minimum duration. A fixation is in an AOI if its centroid is.
    """

    def __init__(self, aois: AreasOfInterest, *, target: str | None = None, window_s: float = 10.0,
                 on_target_s: float = 0.3, ivt: IVT | None = None) -> None:
        if target is not None and target not in aois.rects:
            raise ValueError(f"target: unknown AOI {target!r}; defined: {', '.join(aois.names) or '(none)'}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s: must be > 0, got {window_s!r}")
        self.aois = aois
        self.target = target
        self.window_s = window_s
        self.on_target_s = on_target_s
        self.ivt = ivt if ivt is not None else IVT()
        self._fixations: deque[Fixation] = deque()

    def push(self, sample: GazeSample) -> list[Event]:
        events = self.ivt.push(sample)
        for e in events:
            if isinstance(e, Fixation):
                self.add(e)
        return events

    def flush(self) -> list[Event]:
        events = self.ivt.flush()
        for e in events:
            if isinstance(e, Fixation):
                self.add(e)
        return events

    def add(self, fixation: Fixation) -> None:
        self._fixations.append(fixation)
        # Bound memory: anything that ended a full window before the newest fixation is useless
        # for any `now` at or after that fixation.
        while self._fixations and self._fixations[0].end < fixation.end - self.window_s:
            self._fixations.popleft()

    def _in_target(self, f: Fixation) -> bool:
        hits = self.aois.hits(f.x, f.y)
        return self.target in hits if self.target is not None else bool(hits)

    def _current(self) -> Fixation | None:
        cur = self.ivt.current
        if cur is None or cur.duration < self.ivt.min_fixation_s - _EPS_S:
            return None
        return cur

    def _window(self, now: float) -> list[tuple[Fixation, float]]:
        """Fixations overlapping the window, with the overlapping seconds."""
        lo = now - self.window_s
        fixes = list(self._fixations)
        cur = self._current()
        if cur is not None:
            fixes.append(cur)
        out = []
        for f in fixes:
            overlap = min(f.end, now) - max(f.start, lo)
            # A zero-length overlap still counts when the fixation lies inside the window.
            if overlap > 0 or (f.end >= lo and f.start <= now):
                out.append((f, max(overlap, 0.0)))
        return out

    def on_target(self, now: float) -> bool:
        """True if the current (or most recent, ended within `on_target_s`) fixation is on target."""
        f = self._current() or (self._fixations[-1] if self._fixations else None)
        return f is not None and now - f.end <= self.on_target_s and self._in_target(f)

    def snapshot(self, now: float) -> dict[str, Any]:
        window = self._window(now)
        total = sum(sec for _, sec in window)
        dwell = {name: 0.0 for name in self.aois.names}
        target_s = 0.0
        for f, sec in window:
            for name in self.aois.hits(f.x, f.y):
                dwell[name] += sec
            if self._in_target(f):
                target_s += sec
        return {
            "window_s": self.window_s,
            "fixation_count": len(window),
            "fixation_rate_hz": len(window) / self.window_s,
            "fixation_time_s": total,
            "dwell_s": dwell,
            "share": {name: (d / total if total > 0 else 0.0) for name, d in dwell.items()},
            "target": self.target,
            "attention": target_s / total if total > 0 else 0.0,
            "on_target": self.on_target(now),
            "out_of_order": self.ivt.out_of_order,
            "low_confidence": self.ivt.low_confidence,
        }
