"""EEG session report: synthetic session directories rendered to PNG."""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path
from typing import Any

from plugins.eeg.report import BANDS, build_figure, load_features, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1732540000.0
CHANNELS = ["Fz", "C3", "Cz", "C4", "Pz", "O1", "Oz", "O2"]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, "not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def record(i: int, rate: float = 12.5, baseline_updates: int = 60, gaze: bool = True) -> dict[str, Any]:
    t = T0 + 0.5 + i / rate
    powers = {b: (10.0 / (k + 1)) * (1.5 + math.sin(i / 20 + k)) for k, b in enumerate(BANDS)}
    total = sum(powers.values())
    rec: dict[str, Any] = {
        "t": t, "newest_sample_t": t - 0.005,
        "band_powers": powers, "relative": {b: p / total for b, p in powers.items()},
        "artifacts": {"railed": [3] if i % 50 == 0 else [], "flat": [7] if i % 97 == 0 else [],
                      "high_amplitude": [1, 3] if i % 40 == 0 else []},
        "score": 0.5 + 0.45 * math.sin(i / 15), "metric": 1.0 + i / 100,
        "phase": "baseline" if i < baseline_updates else "feedback",
    }
    if gaze:
        rec["gaze_on_target"] = [True, False, None][i % 3]
    return rec


def write_session(d: Path, n: int, bad_lines: list[str] = (), stopped: bool = True,
                  gaze: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record(i, gaze=gaze)) for i in range(n)]
    for k, bad in enumerate(bad_lines):  # scatter the bad lines through the file
        lines.insert(min(len(lines), (k + 1) * max(1, n // (len(bad_lines) + 1))), bad)
    (d / "features.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    summary = {"session": d.name, "board": "synthetic", "protocol": "alpha", "channels": CHANNELS,
               "sampling_rate": 250, "started": T0, "stopped": T0 + n / 12.5 + 1 if stopped else None,
               "baseline": {"mean": 1.2, "std": 0.3, "duration_s": 4.8}, "updates": n,
               "mean_score": 0.5, "artifact_share": 0.05}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_load_features_skips_and_counts_malformed_lines(tmp_path: Path) -> None:
    d = write_session(tmp_path / "s1", 200, bad_lines=['{"t": 17325', "not json at all"])
    records, skipped = load_features(d / "features.jsonl")
    assert skipped == 2
    assert len(records) == 200
    assert all(a["t"] <= b["t"] for a, b in zip(records, records[1:]))
    # Valid JSON without a usable "t" is bad too; blank lines are not counted.
    (tmp_path / "x.jsonl").write_text('[1, 2]\n{"score": 0.5}\n{"t": null}\n\n{"t": 1.0}\n')
    records, skipped = load_features(tmp_path / "x.jsonl")
    assert (len(records), skipped) == (1, 3)
    assert load_features(tmp_path / "missing.jsonl") == ([], 0)


def test_render_session_with_phases_artifacts_and_bad_lines(tmp_path: Path) -> None:
    d = write_session(tmp_path / "abc", 600, bad_lines=['{"t": 17325', "\x00garbage"])
    fig = build_figure(d)
    title = fig.get_suptitle()
    assert "abc" in title and "synthetic" in title and "alpha" in title
    assert "2 malformed lines skipped" in title
    assert "mean score 0.50" in title and "artifacts 5%" in title
    assert len(fig.axes) == 4
    ax_abs, ax_rel, ax_score, ax_art = fig.axes
    assert ax_abs.get_yscale() == "log"
    assert len(ax_abs.get_lines()) == len(BANDS)
    # Baseline ends at update 59 -> t = 0.5 + 59 / 12.5 s after the start.
    end_lines = [ln for ln in ax_score.get_lines() if ln.get_label() == "baseline end"]
    assert len(end_lines) == 1
    assert abs(end_lines[0].get_xdata()[0] - (0.5 + 59 / 12.5)) < 1e-6
    assert [tick.get_text() for tick in ax_art.get_yticklabels()] == CHANNELS
    raster = ax_art.collections[0].get_array()
    assert raster.max() == 3  # railed is flagged somewhere
    assert raster.reshape(len(CHANNELS), -1)[0].max() == 0  # channel Fz never flagged

    out = render_report(d)
    assert out == d / "report.png"
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = png_size(out)
    assert width >= 1000 and height >= 800
    assert not list(d.glob(".*.tmp"))


def test_render_to_explicit_path_running_session_without_gaze(tmp_path: Path) -> None:
    d = write_session(tmp_path / "live", 100, stopped=False, gaze=False)
    out = render_report(d, tmp_path / "reports" / "live.png")
    assert out == tmp_path / "reports" / "live.png"
    assert png_size(out) >= (1000, 800)
    assert not (d / "report.png").exists()
    title = build_figure(d).get_suptitle()
    assert "(running)" in title and "skipped" not in title


def test_empty_session_says_no_data_yet(tmp_path: Path) -> None:
    d = write_session(tmp_path / "empty", 0, stopped=False)
    assert (d / "features.jsonl").read_text() == ""
    fig = build_figure(d)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no data yet" in texts
    out = render_report(d)
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    width, height = png_size(out)
    assert width >= 1000 and height >= 800


def test_only_malformed_lines_and_no_summary(tmp_path: Path) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "features.jsonl").write_text("{oops\n[]\n")
    (d / "summary.json").write_text("{not json")
    fig = build_figure(d)
    assert "2 malformed lines skipped" in fig.get_suptitle()
    assert "no data yet" in [t.get_text() for ax in fig.axes for t in ax.texts]
    assert render_report(d).read_bytes().startswith(PNG_SIGNATURE)


def test_one_hour_session_renders_quickly(tmp_path: Path) -> None:
    n = 45_000  # 1 hour at 12.5 Hz
    d = write_session(tmp_path / "long", n)
    started = time.perf_counter()
    out = render_report(d)
    elapsed = time.perf_counter() - started
    # About 2 s on a quiet machine, 6 s with both cores busy: the bound catches a render that
    # grows out of proportion with the session, not a slow machine.
    assert elapsed < 30.0, f"rendering took {elapsed:.1f} s"
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    fig = build_figure(d)
    plotted = len(fig.axes[0].get_lines()[0].get_xdata())
    assert 0 < plotted <= 5000  # downsampled for plotting
    assert fig.axes[0].get_lines()[0].get_xdata()[-1] > 3500  # but still spans the whole hour
