"""One-page PNG report of a recorded EEG session.

A session directory holds ``features.jsonl`` (one JSON object per feedback update) and
``summary.json``; :func:`render_report` turns them into ``report.png`` with four panels against
the time since the session start: absolute band powers (log scale), relative band powers (stacked),
the feedback score with the baseline phase shaded, and per-channel artifact flags as a raster.

Rendering uses :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never pyplot, so it
does not touch the global backend or figure registry of other users in the same process. It never
crashes on bad input: malformed lines are skipped and counted in the title, a missing or broken
``summary.json`` is treated as empty, and an empty session renders a "no data yet" page.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["BANDS", "MAX_PLOT_POINTS", "build_figure", "load_features", "load_summary", "render_report"]

BANDS: tuple[str, ...] = ("delta", "theta", "alpha", "beta", "gamma")
MAX_PLOT_POINTS = 5000
#: Artifact kinds in increasing display priority (a cell shows the worst kind flagged in it).
ARTIFACT_KINDS: tuple[str, ...] = ("high_amplitude", "flat", "railed")
_ARTIFACT_COLOURS = ("white", "#f4a261", "#2a9d8f", "#d62828")
FIGSIZE = (14.0, 11.0)
DPI = 100


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_features(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Read ``features.jsonl``: (records sorted by ``t``, number of skipped bad lines).

    A line is bad when it is not valid JSON, not an object, or has no finite numeric ``t``.
    Blank lines are ignored without being counted; a missing file yields ``([], 0)``.
    """
    records: list[dict[str, Any]] = []
    skipped = 0
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return records, 0
    with fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(obj, dict) or not _is_number(obj.get("t")):
                skipped += 1
                continue
            records.append(obj)
    records.sort(key=lambda r: r["t"])
    return records, skipped


def load_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.json`` as a dict; ``{}`` if it is missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _num(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def _band_matrix(records: list[dict[str, Any]], key: str) -> np.ndarray:
    """(n, 5) float array of ``record[key][band]``; NaN where missing."""
    out = np.full((len(records), len(BANDS)), np.nan)
    for i, rec in enumerate(records):
        values = rec.get(key)
        if isinstance(values, dict):
            out[i] = [_num(values.get(b)) for b in BANDS]
    return out


def _bin_mean(y: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware mean over consecutive blocks of ``factor`` rows (last block may be short)."""
    n = y.shape[0]
    pad = (-n) % factor
    if pad:
        y = np.concatenate([y, np.full((pad, *y.shape[1:]), np.nan)])
    blocks = y.reshape(-1, factor, *y.shape[1:])
    valid = ~np.isnan(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=1)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _downsample(t: np.ndarray, *series: np.ndarray, max_points: int = MAX_PLOT_POINTS
                ) -> tuple[np.ndarray, ...]:
    """Block means of ``t`` and each series so that at most ``max_points`` rows remain."""
    if t.size <= max_points:
        return (t, *series)
    factor = math.ceil(t.size / max_points)
    return (_bin_mean(t, factor), *(_bin_mean(s, factor) for s in series))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end] index pairs (inclusive) of the True runs in ``mask``."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def _channel_labels(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    channels = summary.get("channels")
    labels = [str(c) for c in channels] if isinstance(channels, list) else []
    highest = -1
    for rec in records:
        arts = rec.get("artifacts")
        if isinstance(arts, dict):
            for idx in arts.values():
                if isinstance(idx, list):
                    highest = max([highest, *(i for i in idx if isinstance(i, int) and not isinstance(i, bool))])
    labels += [str(i) for i in range(len(labels), highest + 1)]
    return labels


def _artifact_raster(records: list[dict[str, Any]], t: np.ndarray, n_channels: int,
                     n_bins: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(channels × bins) worst artifact code per time bin, the bin edges, and the flagged share.

    Bins never lose a flag (a bin shows the worst kind seen in it), unlike plain decimation.
    """
    lo, hi = float(t[0]), float(t[-1])
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, n_bins + 1)
    col = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_bins - 1)
    grid = np.zeros((max(n_channels, 1), n_bins), dtype=np.int8)
    flagged = 0
    for i, rec in enumerate(records):
        arts = rec.get("artifacts")
        if not isinstance(arts, dict):
            continue
        any_flag = False
        for code, kind in enumerate(ARTIFACT_KINDS, start=1):
            idx = arts.get(kind)
            if not isinstance(idx, list):
                continue
            for ch in idx:
                if isinstance(ch, int) and not isinstance(ch, bool) and 0 <= ch < n_channels:
                    any_flag = True
                    if grid[ch, col[i]] < code:
                        grid[ch, col[i]] = code
        flagged += any_flag
    return grid, edges, flagged / len(records)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _title(summary: dict[str, Any], session_dir: Path, duration: float, running: bool,
           mean_score: float, artifact_share: float, n_updates: int, skipped: int) -> str:
    session = summary.get("session") or session_dir.name
    parts = [f"EEG session {session}",
             f"board {summary.get('board', '?')}",
             f"protocol {summary.get('protocol', '?')}",
             f"duration {_fmt_duration(duration)}" + (" (running)" if running else ""),
             f"mean score {mean_score:.2f}" if math.isfinite(mean_score) else "mean score n/a",
             f"artifacts {artifact_share:.0%}" if math.isfinite(artifact_share) else "artifacts n/a",
             f"{n_updates} updates"]
    if skipped:
        parts.append(f"{skipped} malformed line{'s' if skipped != 1 else ''} skipped")
    return " · ".join(parts)


def build_figure(session_dir: str | os.PathLike[str]) -> Figure:
    """The report figure of a session directory (not yet saved)."""
    session_dir = Path(session_dir)
    records, skipped = load_features(session_dir / "features.jsonl")
    summary = load_summary(session_dir / "summary.json")
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)

    started = summary.get("started")
    stopped = summary.get("stopped")
    running = not _is_number(stopped)
    t0 = float(started) if _is_number(started) else (float(records[0]["t"]) if records else math.nan)

    if not records:
        duration = float(stopped) - t0 if not running else math.nan
        fig.suptitle(_title(summary, session_dir, duration, running, math.nan, math.nan, 0, skipped))
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", fontsize=28, color="0.4",
                transform=ax.transAxes)
        return fig

    t = np.array([float(r["t"]) for r in records]) - t0
    absolute = _band_matrix(records, "band_powers")
    relative = _band_matrix(records, "relative")
    score = np.array([_num(r.get("score")) for r in records])
    baseline = np.array([r.get("phase") == "baseline" for r in records])

    end = float(stopped) - t0 if not running else float(t[-1])
    duration = max(end, float(t[-1]))
    mean_score = _num(summary.get("mean_score"))
    if not math.isfinite(mean_score) and np.isfinite(score).any():
        mean_score = float(np.nanmean(score))
    labels = _channel_labels(summary, records)
    grid, edges, computed_share = _artifact_raster(records, t, len(labels), min(len(records), 1000))
    artifact_share = _num(summary.get("artifact_share"))
    if not math.isfinite(artifact_share):
        artifact_share = computed_share
    fig.suptitle(_title(summary, session_dir, duration, running, mean_score, artifact_share,
                        len(records), skipped))

    ts, abs_s, rel_s, score_s = _downsample(t, absolute, relative, score)
    ax_abs, ax_rel, ax_score, ax_art = fig.subplots(4, 1, sharex=True,
                                                    gridspec_kw={"height_ratios": [3, 2, 2, 2]})
    colours = [f"C{i}" for i in range(len(BANDS))]

    # (a) absolute band powers, log scale (non-positive values are masked by the log axis).
    for j, band in enumerate(BANDS):
        ax_abs.plot(ts, abs_s[:, j], lw=0.9, color=colours[j], label=band)
    if (abs_s > 0).any():
        ax_abs.set_yscale("log")
    ax_abs.set_ylabel("band power (µV²)")
    ax_abs.legend(loc="upper right", ncols=len(BANDS), fontsize="small")
    ax_abs.grid(True, which="major", alpha=0.3)

    # (b) relative band powers, stacked.
    ax_rel.stackplot(ts, np.nan_to_num(rel_s, nan=0.0).T, colors=colours, labels=BANDS, alpha=0.85,
                     linewidth=0)
    ax_rel.set_ylim(0, 1)
    ax_rel.set_ylabel("relative power")

    # (c) score with baseline shading (runs computed on the full-resolution phases).
    for k, (a, b) in enumerate(_runs(baseline)):
        ax_score.axvspan(t[a], t[b], color="0.85", lw=0, label="baseline" if k == 0 else None)
    if baseline.any():
        base_end = float(t[np.flatnonzero(baseline)[-1]])
        ax_score.axvline(base_end, color="k", ls="--", lw=1, label="baseline end")
    ax_score.plot(ts, score_s, color="C4", lw=0.9, label="score")
    ax_score.set_ylim(-0.02, 1.02)
    ax_score.set_ylabel("feedback score")
    ax_score.legend(loc="upper right", fontsize="small", ncols=3)
    ax_score.grid(True, alpha=0.3)

    # (d) artifact raster, channel × time.
    cmap = ListedColormap(list(_ARTIFACT_COLOURS))
    norm = BoundaryNorm(np.arange(-0.5, len(_ARTIFACT_COLOURS)), cmap.N)
    ax_art.pcolormesh(edges, np.arange(grid.shape[0] + 1) - 0.5, grid, cmap=cmap, norm=norm,
                      shading="flat", rasterized=True)
    ax_art.set_yticks(range(len(labels)), labels, fontsize="small" if len(labels) <= 16 else "x-small")
    ax_art.set_ylim(grid.shape[0] - 0.5, -0.5)
    ax_art.set_ylabel("channel")
    ax_art.set_xlabel("time since session start (s)")
    ax_art.legend(handles=[Patch(color=c, label=k.replace("_", " "))
                           for k, c in zip(ARTIFACT_KINDS, _ARTIFACT_COLOURS[1:])],
                  loc="upper right", fontsize="small", ncols=len(ARTIFACT_KINDS))
    ax_art.set_xlim(min(0.0, float(t[0])), max(duration, float(t[-1]), 1e-9))
    return fig


def render_report(session_dir: Path, out: Path | None = None) -> Path:
    """Write the session report PNG (default ``<session_dir>/report.png``) and return its path.

    The file is written to a temporary name and renamed, so a reader never sees half a PNG.
    """
    session_dir = Path(session_dir)
    out = Path(out) if out is not None else session_dir / "report.png"
    fig = build_figure(session_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
