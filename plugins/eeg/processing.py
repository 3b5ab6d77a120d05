"""Real-time EEG processing for biofeedback: pure functions and small state machines, no I/O.

Everything here is *causal* — it uses only samples that have arrived — because feedback only
trains when it is fast. BrainFlow's examples filter 4 s windows with zero-phase filters, which
need the future; here a notch and a band-pass run as IIR second-order sections whose state is
carried from chunk to chunk (``scipy.signal.sosfilt`` with ``zi``), and band powers come from
the most recent window every ``step`` samples.

Samples are µV, shaped (channels, samples). Channel indices in results are positions in the
session's EEG channel list (0-based).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BANDS: dict[str, tuple[float, float]] = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0),
                                         "beta": (13.0, 30.0), "gamma": (30.0, 45.0)}
ProtocolName = Literal["alpha", "focus", "ratio"]
#: The state model's feature vector (models/eeg/README.md).
STATE_FEATURES = ("rel_delta", "rel_theta", "rel_alpha", "rel_beta", "rel_gamma", "log10_total_power",
                  "artifact_fraction")


class CausalFilter:
    """Notch (mains) then band-pass, per channel, with state carried across chunks."""

    def __init__(self, fs: float, channels: int, notch_hz: float | None = 50.0,
                 band: tuple[float, float] = (1.0, 45.0), order: int = 4) -> None:
        # scipy.signal costs ~65 MB of RSS and ~0.6 s to import: only when a session filters,
        # never at hub start (the plugin is imported by every hub, sessions or not).
        from scipy import signal
        self._sosfilt = signal.sosfilt
        nyq = fs / 2
        parts = []
        if notch_hz and notch_hz < nyq:
            b, a = signal.iirnotch(notch_hz, 30.0, fs)
            parts.append(signal.tf2sos(b, a))
        low, high = band[0], min(band[1], nyq * 0.95)
        parts.append(signal.butter(order, [low, high], btype="bandpass", fs=fs, output="sos"))
        self.sos = np.vstack(parts)
        self._zi_unit = signal.sosfilt_zi(self.sos)  # (sections, 2) for a unit step
        self.zi: np.ndarray | None = None
        self.channels = channels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0:
            return x
        if self.zi is None:
            # Start in the steady state of the first sample: no step transient from a DC offset.
            self.zi = self._zi_unit[:, None, :] * x[None, :, 0, None]
        y, self.zi = self._sosfilt(self.sos, x, axis=1, zi=self.zi)
        return y


def band_powers(window: np.ndarray, fs: float) -> dict[str, np.ndarray]:
    """Absolute power per band (µV²) for each channel of a (channels, n) window: Hann-windowed
    periodogram, summed over the band's bins."""
    n = window.shape[1]
    taper = np.hanning(n)
    spectrum = np.fft.rfft((window - window.mean(axis=1, keepdims=True)) * taper, axis=1)
    # One-sided PSD in µV²/Hz, normalised for the taper's energy.
    psd = (np.abs(spectrum) ** 2) / (fs * (taper ** 2).sum())
    psd[:, 1:-1] *= 2
    freqs = np.fft.rfftfreq(n, 1 / fs)
    df = freqs[1] - freqs[0]
    out = {}
    for name, (lo, hi) in BANDS.items():
        sel = (freqs >= lo) & (freqs < hi)
        out[name] = psd[:, sel].sum(axis=1) * df
    return out


@dataclass(frozen=True)
class ArtifactLimits:
    #: |x| at or beyond this (µV, raw) is the amplifier's rail (OpenBCI Cyton at gain 24: ±187.5 mV).
    rail_uv: float = 187_000.0
    #: Filtered standard deviation below this (µV): an electrode off or a shorted channel.
    flat_uv: float = 0.5
    #: Filtered peak-to-peak above this (µV): blinks, movement, muscle.
    high_amplitude_uv: float = 200.0


def artifact_flags(raw: np.ndarray, filtered: np.ndarray, invalid: np.ndarray,
                   limits: ArtifactLimits) -> dict[str, list[int]]:
    """Per-channel flags for one window. ``invalid`` marks channels that carried NaN/inf."""
    railed = np.any(np.abs(raw) >= limits.rail_uv, axis=1)
    flat = filtered.std(axis=1) < limits.flat_uv
    high = np.ptp(filtered, axis=1) > limits.high_amplitude_uv
    return {"railed": np.flatnonzero(railed).tolist(), "flat": np.flatnonzero(flat).tolist(),
            "high_amplitude": np.flatnonzero(high).tolist(), "invalid": np.flatnonzero(invalid).tolist()}


@dataclass(frozen=True)
class Protocol:
    """What the feedback rewards. ``alpha``: relative alpha power up (relaxation); ``focus``:
    beta / (alpha + theta) up; ``ratio``: Σ numerator bands / Σ denominator bands up."""

    name: ProtocolName = "alpha"
    numerator: tuple[str, ...] = ("beta",)
    denominator: tuple[str, ...] = ("alpha", "theta")

    def metric(self, bands: dict[str, float]) -> float:
        total = sum(bands.values())
        if total <= 0:
            return float("nan")
        if self.name == "alpha":
            return bands["alpha"] / total
        num, den = (("beta",), ("alpha", "theta")) if self.name == "focus" else (self.numerator, self.denominator)
        d = sum(bands[b] for b in den)
        return sum(bands[b] for b in num) / d if d > 0 else float("nan")


@dataclass
class Baseline:
    """The first ``duration_s`` of a session calibrate the feedback: the score is the logistic of
    the metric's z-score against the baseline, so 0.5 means "as at rest before training"."""

    duration_s: float
    values: list[float] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None

    @property
    def done(self) -> bool:
        return self.mean is not None

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.values.append(value)

    def finish(self) -> None:
        if self.values:
            arr = np.asarray(self.values)
            self.mean = float(arr.mean())
            # A floor on the spread: a perfectly steady baseline must not make every wobble 0 or 1.
            self.std = float(max(arr.std(), abs(self.mean) * 0.05, 1e-9))
        else:
            self.mean, self.std = 0.0, 1.0

    def score(self, value: float) -> float:
        assert self.mean is not None and self.std is not None
        z = (value - self.mean) / self.std
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@dataclass
class Update:
    """One feedback update (a line of features.jsonl, and the feedback message)."""

    t_sample: float  # timestamp of the newest sample used
    band_powers: dict[str, float]  # µV², mean over clean channels
    relative: dict[str, float]
    artifacts: dict[str, list[int]]
    metric: float | None
    score: float | None
    phase: Literal["baseline", "feedback"]
    clean_channels: int
    channels: int

    @property
    def artifact_fraction(self) -> float:
        bad = set().union(*map(set, self.artifacts.values()))
        return len(bad) / self.channels if self.channels else 1.0

    def state_features(self) -> list[float]:
        total = sum(self.band_powers.values())
        return [self.relative.get(b, 0.0) for b in BANDS] + [math.log10(total) if total > 0 else 0.0,
                                                              self.artifact_fraction]

    def to_dict(self) -> dict[str, object]:
        return {"newest_sample_t": self.t_sample, "band_powers": {k: round(v, 4) for k, v in self.band_powers.items()},
                "relative": {k: round(v, 5) for k, v in self.relative.items()}, "artifacts": self.artifacts,
                "metric": None if self.metric is None else round(self.metric, 6),
                "score": None if self.score is None else round(self.score, 5), "phase": self.phase,
                "clean_channels": self.clean_channels}


class FeedbackEngine:
    """Feed it chunks of raw samples with their timestamps; it returns an :class:`Update` every
    ``step`` samples once a full window has arrived."""

    def __init__(self, fs: float, channels: int, protocol: Protocol, baseline_s: float = 30.0,
                 window_s: float = 1.0, update_hz: float = 12.5, notch_hz: float | None = 50.0,
                 limits: ArtifactLimits = ArtifactLimits()) -> None:
        self.fs, self.channels, self.protocol, self.limits = fs, channels, protocol, limits
        self.window = max(16, int(round(window_s * fs)))
        self.step = max(1, int(round(fs / update_hz)))
        self.filter = CausalFilter(fs, channels, notch_hz)
        self.baseline = Baseline(baseline_s)
        self._raw = np.zeros((channels, self.window))
        self._filt = np.zeros((channels, self.window))
        self._invalid_left = np.zeros(channels, dtype=int)  # samples until a NaN leaves the window
        self._last_finite = np.zeros(channels)
        self._filled = 0
        self._since_update = 0
        self._t0: float | None = None
        self.nonfinite_samples = 0

    def push(self, x: np.ndarray, t: np.ndarray) -> list[Update]:
        """``x``: (channels, n) raw µV; ``t``: (n,) sample timestamps (Unix seconds)."""
        if x.shape[0] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[0]}")
        x = np.array(x, dtype=float, copy=True)
        bad = ~np.isfinite(x)
        if bad.any():
            # NaN or inf would poison the IIR state for good: hold the last finite value, count
            # it, and flag the channel for as long as the sample is in the window.
            self.nonfinite_samples += int(bad.sum())
            for ch in np.flatnonzero(bad.any(axis=1)):
                row = x[ch]
                for i in np.flatnonzero(bad[ch]):
                    row[i] = row[i - 1] if i > 0 else self._last_finite[ch]
                self._invalid_left[ch] = self.window
        if x.shape[1]:
            self._last_finite = x[:, -1].copy()
        updates = []
        start = 0
        n = x.shape[1]
        while start < n:
            take = min(n - start, self.step - self._since_update)
            self._append(x[:, start:start + take])
            start += take
            self._since_update += take
            if self._since_update >= self.step:
                self._since_update = 0
                if self._filled >= self.window:
                    updates.append(self._update(float(t[start - 1])))
        return updates

    def _append(self, chunk: np.ndarray) -> None:
        k = chunk.shape[1]
        y = self.filter(chunk)
        self._raw = np.roll(self._raw, -k, axis=1)
        self._filt = np.roll(self._filt, -k, axis=1)
        self._raw[:, -k:] = chunk
        self._filt[:, -k:] = y
        self._filled = min(self.window, self._filled + k)
        self._invalid_left = np.maximum(0, self._invalid_left - k)

    def _update(self, t_sample: float) -> Update:
        if self._t0 is None:
            self._t0 = t_sample
        flags = artifact_flags(self._raw, self._filt, self._invalid_left > 0, self.limits)
        bad = set().union(*map(set, flags.values()))
        clean = [c for c in range(self.channels) if c not in bad]
        powers = band_powers(self._filt[clean], self.fs) if clean else {}
        bands = {b: float(v.mean()) for b, v in powers.items()} if clean else {b: 0.0 for b in BANDS}
        total = sum(bands.values())
        relative = {b: (v / total if total > 0 else 0.0) for b, v in bands.items()}
        metric = self.protocol.metric(bands) if clean else float("nan")
        metric_ok = math.isfinite(metric)
        if not self.baseline.done:
            if metric_ok:
                self.baseline.add(metric)
            if t_sample - self._t0 >= self.baseline.duration_s:
                self.baseline.finish()
            phase: Literal["baseline", "feedback"] = "baseline"
            score = 0.5 if metric_ok else None
        else:
            phase = "feedback"
            score = self.baseline.score(metric) if metric_ok else None
        return Update(t_sample, bands, relative, flags, metric if metric_ok else None, score, phase, len(clean),
                      self.channels)
