"""Gaze core: parsing, I-VT on synthetic traces, AOI metrics."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import pytest

from plugins.gaze.processing import (
    IVT,
    AreasOfInterest,
    Event,
    Fixation,
    GazeMetrics,
    GazeParseError,
    GazeSample,
    Saccade,
    parse_csv_line,
    parse_json,
)

T0 = 1732540000.0  # realistic Unix timestamps: durations must survive float rounding at 1.7e9
DPU = 30.0  # degrees per normalised unit (the IVT default)


# --- synthetic traces ---------------------------------------------------------------------------


@dataclass
class Fix:
    x: float
    y: float
    duration: float


def make_trace(fixes: list[Fix], rate_hz: float, *, saccade_deg_s: float = 300.0, jitter: float = 0.001,
               seed: int = 1) -> tuple[list[GazeSample], list[tuple[float, float]]]:
    """Sample a gaze path at `rate_hz`: fixations with uniform jitter, joined by saccades.

    Saccades follow a cosine (bell-shaped velocity) profile with mean angular speed
    `saccade_deg_s`, so peak speed is ~1.6x that, as in real saccades (a 10° saccade lasts ~35 ms).
    Returns the samples and the true (start, end) of each fixation segment.
    """
    rng = random.Random(seed)
    segments: list[tuple[float, float, Fix, Fix | None]] = []  # (start, end, fixation, next)
    t = T0
    for i, f in enumerate(fixes):
        segments.append((t, t + f.duration, f, None))
        t += f.duration
        if i + 1 < len(fixes):
            nxt = fixes[i + 1]
            amp_deg = math.hypot(nxt.x - f.x, nxt.y - f.y) * DPU
            dur = amp_deg / saccade_deg_s
            segments.append((t, t + dur, f, nxt))
            t += dur
    end = t
    samples = []
    k = 0
    while True:
        ts = T0 + k / rate_hz
        if ts >= end:
            break
        k += 1
        for s0, s1, f, nxt in segments:
            if s0 <= ts < s1:
                if nxt is None:
                    x = f.x + rng.uniform(-jitter, jitter)
                    y = f.y + rng.uniform(-jitter, jitter)
                else:
                    p = (1 - math.cos(math.pi * (ts - s0) / (s1 - s0))) / 2
                    x, y = f.x + p * (nxt.x - f.x), f.y + p * (nxt.y - f.y)
                samples.append(GazeSample(ts, x, y, 0.95))
                break
    truth = [(s0, s1) for s0, s1, _, nxt in segments if nxt is None]
    return samples, truth


def run(ivt: IVT, samples: list[GazeSample]) -> list[Event]:
    events: list[Event] = []
    for s in samples:
        events += ivt.push(s)
    return events + ivt.flush()


def fixations(events: list[Event]) -> list[Fixation]:
    return [e for e in events if isinstance(e, Fixation)]


def saccades(events: list[Event]) -> list[Saccade]:
    return [e for e in events if isinstance(e, Saccade)]


FOUR = [Fix(0.2, 0.2, 0.30), Fix(0.7, 0.25, 0.50), Fix(0.5, 0.8, 0.25), Fix(0.25, 0.6, 0.40)]


# --- I-VT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [60, 120, 250])
def test_fixations_and_saccades_of_a_synthetic_trace(rate_hz: int) -> None:
    samples, truth = make_trace(FOUR, rate_hz)
    events = run(IVT(), samples)
    period = 1 / rate_hz
    assert [type(e).__name__ for e in events] == ["Fixation", "Saccade"] * 3 + ["Fixation"]
    fx = fixations(events)
    for f, (s0, s1), spec in zip(fx, truth, FOUR):
        # True segment [s0, s1): first/last samples inside it are within one period of its edges.
        assert abs(f.start - s0) <= period + 1e-6
        assert abs(f.end - s1) <= 2 * period + 1e-6
        assert abs(f.duration - spec.duration) <= 2 * period + 1e-6
        assert f.duration == pytest.approx(f.end - f.start)
        assert (f.x, f.y) == pytest.approx((spec.x, spec.y), abs=0.002)
    for sc, a, b, f_before, f_after in zip(saccades(events), FOUR, FOUR[1:], fx, fx[1:]):
        assert sc.amplitude == pytest.approx(math.hypot(b.x - a.x, b.y - a.y) * DPU, abs=0.15)
        # A saccade joins the fixations around it: it starts where one ends and ends where the next starts.
        assert sc.start == f_before.end and sc.end == f_after.start
    assert IVT().out_of_order == 0


def test_fixation_durations_count_samples() -> None:
    # Exactly 30 samples per fixation at 100 Hz (no jitter): 29 intervals = 0.29 s, ± one sample.
    rate = 100.0
    samples = [GazeSample(T0 + k / rate, 0.3 if k < 30 else 0.8, 0.5, 1.0) for k in range(60)]
    fx = fixations(run(IVT(), samples))
    assert len(fx) == 2
    assert fx[0].duration == pytest.approx(0.29, abs=1e-6)
    # The second fixation starts at its landing sample (k=30), which is its first sample.
    assert fx[1].start == pytest.approx(T0 + 0.30, abs=1e-6)
    assert fx[1].duration == pytest.approx(0.29, abs=1e-6)


def test_velocity_threshold_is_configurable() -> None:
    # A slow 3° movement at ~60°/s mean: a saccade at 30°/s, part of one fixation at 200°/s.
    trace = [Fix(0.4, 0.5, 0.4), Fix(0.5, 0.5, 0.4)]
    samples, _ = make_trace(trace, 120, saccade_deg_s=60)
    default = run(IVT(), samples)
    assert len(fixations(default)) == 2 and len(saccades(default)) == 1
    lax = run(IVT(velocity_threshold_deg_s=200), samples)
    assert len(fixations(lax)) == 1 and saccades(lax) == []
    # The same movement is 6x slower in degrees on a screen spanning 5° instead of 30°.
    small_screen = run(IVT(degrees_per_unit=5), samples)
    assert len(fixations(small_screen)) == 1


def test_short_fixations_are_dropped() -> None:
    trace = [Fix(0.2, 0.2, 0.3), Fix(0.6, 0.6, 0.06), Fix(0.2, 0.7, 0.3)]
    samples, _ = make_trace(trace, 250)
    fx = fixations(run(IVT(), samples))
    assert [round(f.x, 1) for f in fx] == [0.2, 0.2]
    fx_all = fixations(run(IVT(min_fixation_s=0.03), samples))
    assert [round(f.x, 1) for f in fx_all] == [0.2, 0.6, 0.2]


def with_confidence(samples: list[GazeSample], lo: float, hi: float, conf: float) -> list[GazeSample]:
    return [GazeSample(s.t, s.x, s.y, conf) if lo <= s.t - T0 < hi else s for s in samples]


def test_long_low_confidence_gap_ends_the_fixation() -> None:
    samples, _ = make_trace([Fix(0.5, 0.5, 1.0)], 100)
    # Bounds between samples: t - T0 carries ~1e-7 s of rounding at T0 = 1.7e9.
    gapped = with_confidence(samples, 0.395, 0.595, 0.2)  # 200 ms blink
    ivt = IVT()
    emitted_at = []
    events: list[Event] = []
    for s in gapped:
        got = ivt.push(s)
        emitted_at += [s.t - T0] * len(got)
        events += got
    events += ivt.flush()
    fx = fixations(events)
    assert len(fx) == 2
    assert fx[0].end - T0 == pytest.approx(0.39, abs=1e-6)  # last good sample before the gap
    assert fx[1].start - T0 == pytest.approx(0.60, abs=1e-6)
    # Emitted during the gap, as soon as it exceeded max_gap_s, not when tracking resumed.
    assert 0.49 < emitted_at[0] < 0.52
    assert ivt.low_confidence == 20
    assert saccades(events) == []


def test_short_low_confidence_gap_is_bridged() -> None:
    samples, _ = make_trace([Fix(0.5, 0.5, 1.0)], 100)
    fx = fixations(run(IVT(), with_confidence(samples, 0.395, 0.445, 0.2)))  # 50 ms < max_gap_s
    assert len(fx) == 1 and fx[0].duration == pytest.approx(0.99, abs=1e-6)
    # A stricter max_gap_s splits the same trace.
    assert len(fixations(run(IVT(max_gap_s=0.04), with_confidence(samples, 0.395, 0.445, 0.2)))) == 2
    # A stricter min_confidence turns good samples into gaps.
    assert fixations(run(IVT(min_confidence=0.99), samples)) == []


def test_missing_samples_end_the_fixation() -> None:
    samples, _ = make_trace([Fix(0.5, 0.5, 1.0)], 100)
    dropped = [s for s in samples if not 0.395 <= s.t - T0 < 0.545]
    fx = fixations(run(IVT(), dropped))
    assert len(fx) == 2 and fx[0].end - T0 == pytest.approx(0.39, abs=1e-6)


def test_saccade_interrupted_by_a_gap_is_dropped() -> None:
    # The eye starts moving, tracking is lost for 200 ms, then resumes elsewhere: where the
    # saccade landed is unknown, so no saccade is reported (but both fixations are).
    rate = 100.0
    xs = [0.3] * 30 + [0.4, 0.5] + [0.6] * 20 + [0.8] * 30
    samples = [GazeSample(T0 + k / rate, x, 0.5, 0.2 if 32 <= k < 52 else 0.9) for k, x in enumerate(xs)]
    events = run(IVT(), samples)
    assert len(fixations(events)) == 2
    assert saccades(events) == []
    # Without the gap, the same movement is one saccade from the last sample at 0.3 to the landing.
    ok = [GazeSample(s.t, s.x, s.y, 0.9) for s in samples if s.confidence > 0.5]
    ok = [s for s in ok if s.x != 0.8] + [GazeSample(T0 + (32 + k) / rate, 0.8, 0.5, 0.9) for k in range(30)]
    sc = saccades(run(IVT(), ok))
    assert len(sc) == 1 and sc[0].amplitude == pytest.approx(0.5 * DPU)


def test_out_of_order_samples_are_ignored_and_counted() -> None:
    samples, _ = make_trace(FOUR, 120)
    clean = run(IVT(), samples)
    messy: list[GazeSample] = []
    for i, s in enumerate(samples):
        messy.append(s)
        if i % 10 == 5:
            messy.append(s)  # duplicate timestamp
            messy.append(GazeSample(s.t - 0.5, 0.9, 0.1, 1.0))  # late sample from elsewhere
    ivt = IVT()
    assert run(ivt, messy) == clean
    assert ivt.out_of_order == 2 * sum(1 for i in range(len(samples)) if i % 10 == 5)


def test_flush_ends_the_current_fixation() -> None:
    samples, _ = make_trace([Fix(0.3, 0.3, 0.5)], 60)
    ivt = IVT()
    assert [e for s in samples for e in ivt.push(s)] == []
    assert ivt.current is not None and ivt.current.x == pytest.approx(0.3, abs=0.002)
    fx = ivt.flush()
    assert len(fx) == 1 and isinstance(fx[0], Fixation)
    assert ivt.current is None and ivt.flush() == []


@pytest.mark.parametrize("kwargs", [{"velocity_threshold_deg_s": 0}, {"degrees_per_unit": -1},
                                    {"min_confidence": 1.5}, {"max_gap_s": math.nan}, {"min_fixation_s": -1}])
def test_ivt_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        IVT(**kwargs)


# --- AOIs and metrics ----------------------------------------------------------------------------

AOIS = AreasOfInterest({"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.3)})


def test_aoi_hits_and_validation() -> None:
    assert AOIS.hits(0.2, 0.2) == ["left", "top"]
    assert AOIS.hits(0.7, 0.9) == ["right"]
    assert AOIS.hits(1.05, 0.5) == []
    with pytest.raises(ValueError, match="bad"):
        AreasOfInterest({"bad": (0.5, 0.0, 0.2, 1.0)})
    with pytest.raises(ValueError, match="nowhere"):
        GazeMetrics(AOIS, target="nowhere")


def fx(start: float, end: float, x: float, y: float) -> Fixation:
    return Fixation(T0 + start, T0 + end, x, y, end - start)


def test_dwell_share_and_attention_from_known_fixations() -> None:
    m = GazeMetrics(AOIS, target="right", window_s=10.0)
    m.add(fx(0.0, 2.0, 0.2, 0.5))  # left, 2 s; entirely before the window below
    m.add(fx(3.0, 5.0, 0.2, 0.5))  # left, 2 s, only 1 s inside the window
    m.add(fx(5.5, 8.5, 0.8, 0.5))  # right, 3 s
    m.add(fx(9.0, 10.0, 0.3, 0.1))  # left + top, 1 s
    m.add(fx(10.5, 12.0, 1.08, 0.5))  # off every AOI, 1.5 s
    snap = m.snapshot(T0 + 14.0)  # window = [4, 14]
    assert snap["fixation_count"] == 4
    assert snap["fixation_rate_hz"] == pytest.approx(0.4)
    assert snap["fixation_time_s"] == pytest.approx(6.5)
    assert snap["dwell_s"] == pytest.approx({"left": 2.0, "right": 3.0, "top": 1.0})
    assert snap["share"] == pytest.approx({"left": 2 / 6.5, "right": 3 / 6.5, "top": 1 / 6.5})
    assert snap["attention"] == pytest.approx(3 / 6.5)
    assert snap["on_target"] is False  # the last fixation is off-screen and 2 s old

    any_aoi = GazeMetrics(AOIS, window_s=10.0)
    for f in list(m._fixations):
        any_aoi.add(f)
    # Without a target: time in any AOI (the left+top fixation counts once), 5 of 6.5 s.
    assert any_aoi.snapshot(T0 + 14.0)["attention"] == pytest.approx(5.0 / 6.5)


def test_metrics_on_a_sampled_trace() -> None:
    trace = [Fix(0.25, 0.5, 1.0), Fix(0.75, 0.5, 2.0), Fix(0.25, 0.6, 0.5), Fix(0.75, 0.6, 1.5)]
    samples, truth = make_trace(trace, 120)
    m = GazeMetrics(AOIS, target="right", window_s=10.0)
    for s in samples:
        m.push(s)
    now = samples[-1].t
    snap = m.snapshot(now)  # the last fixation is still in progress and counts
    assert snap["fixation_count"] == 4
    period = 1 / 120
    assert snap["dwell_s"]["left"] == pytest.approx(1.5, abs=4 * period)
    assert snap["dwell_s"]["right"] == pytest.approx(3.5, abs=4 * period)
    assert snap["attention"] == pytest.approx(3.5 / 5.0, abs=0.01)
    assert snap["on_target"] is True
    assert m.on_target(now + 0.29) is True
    assert m.on_target(now + 0.31) is False  # tracking stopped: nothing recent
    m.flush()
    assert m.snapshot(now)["dwell_s"] == pytest.approx(snap["dwell_s"])  # flushed fixation kept


def test_on_target_follows_the_current_fixation() -> None:
    samples, _ = make_trace([Fix(0.75, 0.5, 0.5), Fix(0.25, 0.5, 0.5)], 120)
    m = GazeMetrics(AOIS, target="right")
    seen: list[tuple[float, bool]] = []
    for s in samples:
        m.push(s)
        seen.append((s.t - T0, m.on_target(s.t)))
    assert all(on for t, on in seen if 0.1 <= t < 0.5)
    # After landing on the left, on_target goes False once the new fixation reaches 0.1 s.
    assert not any(on for t, on in seen if t > 0.5 + 0.04 + 0.11)


def test_metrics_forget_old_fixations() -> None:
    m = GazeMetrics(AOIS, window_s=5.0)
    for i in range(100):
        m.add(fx(i, i + 0.5, 0.2, 0.5))
    assert len(m._fixations) <= 7
    assert m.snapshot(T0 + 100.0)["fixation_count"] == 5


# --- parsing ---------------------------------------------------------------------------------------


def test_parse_json_valid() -> None:
    s = parse_json(b'{"t": 1732540000.123, "x": 0.41, "y": 0.52, "confidence": 0.97, "pupil": 3.1}')
    assert s == GazeSample(1732540000.123, 0.41, 0.52, 0.97, 3.1)
    s = parse_json(b'{"t": 5, "x": -0.05, "y": 1.1, "confidence": 1, "pupil": null}')
    assert s == GazeSample(5.0, -0.05, 1.1, 1.0, None) and isinstance(s.t, float)


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"t": 1, "x": 0.5, "y": 0.5, "confidence": 0.9, "gaze": 1}', ["gaze"]),
    (b'{"t": 1, "x": 0.5, "y": 0.5}', ["confidence", "missing"]),
    (b'{"t": NaN, "x": 0.5, "y": 0.5, "confidence": 0.9}', ["NaN"]),
    (b'{"t": 1, "x": Infinity, "y": 0.5, "confidence": 0.9}', ["Infinity"]),
    (b'{"t": 1e400, "x": 0.5, "y": 0.5, "confidence": 0.9}', ["t:", "inf"]),
    (b'{"t": 1, "x": 1.5, "y": 0.5, "confidence": 0.9}', ["x:", "1.5"]),
    (b'{"t": 1, "x": 0.5, "y": -0.2, "confidence": 0.9}', ["y:", "-0.2"]),
    (b'{"t": 1, "x": 0.5, "y": 0.5, "confidence": 1.2}', ["confidence", "1.2"]),
    (b'{"t": 1, "x": 0.5, "y": 0.5, "confidence": 0.9, "pupil": 0}', ["pupil", "0"]),
    (b'{"t": 1, "x": "0.5", "y": 0.5, "confidence": 0.9}', ["x:", '"0.5"']),
    (b'{"t": true, "x": 0.5, "y": 0.5, "confidence": 0.9}', ["t:", "true"]),
    (b'{"t": 1, "t": 2, "x": 0.5, "y": 0.5, "confidence": 0.9}', ["t:", "duplicate"]),
    (b'[1, 0.5, 0.5, 0.9]', ["payload", "object", "[1, 0.5"]),
    (b'{"t": 1, "x": 0.5', ["payload", "invalid JSON", '{"t": 1']),
    (b'\xff{}', ["payload", "UTF-8"]),
    (b'{"t": 1, "x": 0.5, "y": 0.5, "confidence": 0.9, "pad": "' + b"a" * 5000 + b'"}', ["payload", "5058 bytes", "4096"]),
])
def test_parse_json_errors_name_the_field_and_value(payload: bytes, expected: list[str]) -> None:
    with pytest.raises(GazeParseError) as err:
        parse_json(payload)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_parse_json_size_limit_is_4_kib() -> None:
    base = {"t": 1, "x": 0.5, "y": 0.5, "confidence": 0.9}
    text = json.dumps(base)
    fits = text[:-1] + " " * (4096 - len(text)) + "}"
    assert len(fits) == 4096 and parse_json(fits.encode()).x == 0.5
    with pytest.raises(GazeParseError, match="4097 bytes"):
        parse_json((fits[:-1] + " }").encode())


def test_parse_csv_valid_and_comments() -> None:
    assert parse_csv_line(b"1732540000.123,0.41,0.52,0.97,3.1\n") == GazeSample(1732540000.123, 0.41, 0.52, 0.97, 3.1)
    assert parse_csv_line("12.5, 0.4 ,0.5,1\r\n") == GazeSample(12.5, 0.4, 0.5, 1.0)
    for comment in (b"\n", b"", b"   \r\n", b"# t,x,y,confidence\n", b"  # note\n"):
        assert parse_csv_line(comment) is None


@pytest.mark.parametrize(("line", "expected"), [
    (b"1,0.5,0.5\n", ["3 fields", "1,0.5,0.5"]),
    (b"1,0.5,0.5,0.9,3,7\n", ["6 fields"]),
    (b"1,0.5,0.5,0.9,\n", ["pupil", "''"]),
    (b"abc,0.5,0.5,0.9\n", ["t:", "'abc'"]),
    (b"1,0.5,zz,0.9\n", ["y:", "'zz'"]),
    (b"1,nan,0.5,0.9\n", ["x:", "nan"]),
    (b"inf,0.5,0.5,0.9\n", ["t:", "inf"]),
    (b"1,1.2,0.5,0.9\n", ["x:", "1.2"]),
    (b"1,0.5,0.5,-0.1\n", ["confidence", "-0.1"]),
    (b"1,0.5,0.5,0.9,-2\n", ["pupil", "-2"]),
    (b"1,0.5,0.5,0.9\xc2\xb5\n", ["line", "ASCII", "\\xc2"]),
    ("1,0.5,0.5,0.9µ\n", ["line", "ASCII"]),
])
def test_parse_csv_errors_name_the_field_and_value(line: bytes | str, expected: list[str]) -> None:
    with pytest.raises(GazeParseError) as err:
        parse_csv_line(line)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_gaze_sample_validates_on_construction() -> None:
    with pytest.raises(GazeParseError, match="confidence"):
        GazeSample(1.0, 0.5, 0.5, 2.0)
    assert isinstance(GazeParseError("x"), ValueError)
