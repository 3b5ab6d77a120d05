"""One biofeedback session: a BrainFlow board streaming into the feedback engine, recorded.

The poll loop takes whatever the board has buffered every ``poll_s`` (BrainFlow's
``get_board_data`` is a non-blocking copy out of its ring buffer), feeds the engine, publishes
each update, and appends raw data and features to the session's files. Files are flushed on a
timer and closed on every way out — stop, hub shutdown, a board error — so a recording is never
lost with the process's buffers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from brainflow.board_shim import BoardShim, BrainFlowError
from brainflow.data_filter import DataFilter

from .boards import BoardError, BoardSpec, open_board
from .processing import ArtifactLimits, FeedbackEngine, Protocol, Update

log = logging.getLogger("plugins.eeg")

State = Literal["running", "paused", "stopped", "failed"]


@dataclass
class SessionOptions:
    board: BoardSpec
    protocol: Protocol
    baseline_s: float = 30.0
    window_s: float = 1.0
    update_hz: float = 12.5
    notch_hz: float | None = 50.0
    poll_s: float = 0.005
    limits: ArtifactLimits = field(default_factory=ArtifactLimits)
    #: How often features go to the hub's history, and the state model is asked (seconds).
    history_every_s: float = 1.0
    state_every_s: float = 1.0
    #: Feedback counts only while the gaze rests on the task's area (when a gaze source reports).
    gaze_gate: bool = False


Publish = Callable[[dict[str, Any]], Awaitable[None]]


class EegSession:
    def __init__(self, opts: SessionOptions, directory: Path, publish: Publish,
                 record: Callable[[str, float, float], None],
                 classify: Callable[[list[float]], Awaitable[str | None]] | None = None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.opts = opts
        self.dir = directory / self.id
        self._publish = publish
        self._record = record
        self._classify = classify
        self.state: State = "running"
        self.error = ""
        self.started = time.time()
        self.stopped: float | None = None
        self.board: BoardShim | None = None
        descr = opts.board.describe()
        self.fs = float(descr["sampling_rate"])
        self.eeg_rows: list[int] = list(descr["eeg_channels"])
        self.ts_row: int = descr["timestamp_channel"]
        self.channel_names = [n for n in str(descr.get("eeg_names") or "").split(",") if n] or \
            [str(i) for i in range(len(self.eeg_rows))]
        self.engine = FeedbackEngine(self.fs, len(self.eeg_rows), opts.protocol, opts.baseline_s, opts.window_s,
                                     opts.update_hz, opts.notch_hz, opts.limits)
        self.updates = 0
        self.samples = 0
        self.score_sum = 0.0
        self.scored = 0
        self.artifact_updates = 0
        self.last: dict[str, Any] | None = None
        self.latest_state: str | None = None
        self.states: dict[str, int] = {}
        self.gaze_on_target: bool | None = None
        self.latencies_ms: list[float] = []  # sample → publish, for the benchmark and the summary
        self._raw_buffer: list[np.ndarray] = []
        self._features = None
        self._task: asyncio.Task[None] | None = None
        self._classifying: asyncio.Task[None] | None = None
        self._last_history = 0.0
        self._last_state = 0.0
        self._last_flush = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Opening a board can take a while (serial handshakes, BLE): not on the loop.
        self.board = await asyncio.to_thread(open_board, self.opts.board)
        self._features = open(self.dir / "features.jsonl", "a", buffering=1 << 16)
        self._write_summary()
        self._task = asyncio.create_task(self._run(), name=f"eeg session {self.id}")

    def pause(self) -> None:
        if self.state == "running":
            self.state = "paused"

    def resume(self) -> None:
        if self.state == "paused":
            self.state = "running"

    async def stop(self, reason: str = "") -> None:
        if self.state in ("stopped", "failed") and self._task is None:
            return
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._classifying is not None:
            self._classifying.cancel()
            await asyncio.gather(self._classifying, return_exceptions=True)
        self._drain()  # what the board still holds belongs to the recording
        self._close_files()
        if self.board is not None:
            board, self.board = self.board, None
            try:
                board.stop_stream()
                board.release_session()
            except BrainFlowError as exc:
                log.warning("session %s: releasing the board: %s", self.id, exc)
        if self.state != "failed":
            self.state = "stopped"
        self.stopped = time.time()
        self._write_summary(reason)

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.opts.poll_s)
                await self._poll()
        except asyncio.CancelledError:
            raise
        except (BrainFlowError, OSError, ValueError) as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("session %s failed: %s", self.id, self.error)
            self._close_files()
            self._write_summary(self.error)

    def _drain(self) -> None:
        if self.board is None:
            return
        try:
            data = self.board.get_board_data()
        except BrainFlowError:
            return
        if data.shape[1]:
            self._raw_buffer.append(data)

    async def _poll(self) -> None:
        assert self.board is not None
        data = self.board.get_board_data()
        if not data.shape[1]:
            return
        self._raw_buffer.append(data)
        self.samples += data.shape[1]
        now = time.time()
        if now - self._last_flush >= 0.5:
            self._flush_files()
            self._last_flush = now
        if self.state == "paused":
            return  # recorded, not fed back
        for update in self.engine.push(data[self.eeg_rows], data[self.ts_row]):
            await self._emit(update)

    async def _emit(self, u: Update) -> None:
        self.updates += 1
        score = u.score
        if self.opts.gaze_gate and self.gaze_on_target is False and score is not None and u.phase == "feedback":
            score = 0.0  # focus counts only while the eyes are on the task
        doc: dict[str, Any] = {"session": self.id, "t": 0.0, **u.to_dict(), "score": score,
                               "protocol": self.opts.protocol.name, "state": self.latest_state,
                               "gaze_on_target": self.gaze_on_target}
        if score is not None and u.phase == "feedback":
            self.score_sum += score
            self.scored += 1
        if any(u.artifacts.values()):
            self.artifact_updates += 1
        doc["t"] = time.time()
        await self._publish(doc)
        published = time.time()
        self.latencies_ms.append((published - u.t_sample) * 1000)
        if len(self.latencies_ms) > 100_000:
            del self.latencies_ms[:50_000]
        self.last = doc
        if self._features is not None:
            self._features.write(json.dumps(doc) + "\n")
        if published - self._last_history >= self.opts.history_every_s:
            self._last_history = published
            for name, value in (("score", score), ("metric", u.metric), *(("rel_" + b, v) for b, v in u.relative.items())):
                if value is not None and math.isfinite(value):
                    self._record(name, value, u.t_sample)
        if (self._classify is not None and published - self._last_state >= self.opts.state_every_s
                and (self._classifying is None or self._classifying.done())):
            self._last_state = published
            self._classifying = asyncio.create_task(self._state(u.state_features()))

    async def _state(self, features: list[float]) -> None:
        assert self._classify is not None
        label = await self._classify(features)
        if label:
            self.latest_state = label
            self.states[label] = self.states.get(label, 0) + 1

    # -- files ---------------------------------------------------------------------------------

    def _flush_files(self) -> None:
        if self._raw_buffer:
            data = np.concatenate(self._raw_buffer, axis=1)
            self._raw_buffer.clear()
            DataFilter.write_file(data, str(self.dir / "raw.csv"), "a")
        if self._features is not None:
            self._features.flush()

    def _close_files(self) -> None:
        try:
            self._flush_files()
        finally:
            if self._features is not None:
                self._features.close()
                self._features = None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        b = self.engine.baseline
        return {
            "session": self.id, "state": self.state, "error": self.error or None,
            "board": self.opts.board.board, "protocol": self.opts.protocol.name,
            "channels": self.channel_names, "sampling_rate": self.fs,
            "started": self.started, "stopped": self.stopped,
            "baseline": {"duration_s": b.duration_s, "done": b.done, "mean": b.mean, "std": b.std},
            "samples": self.samples, "updates": self.updates, "nonfinite_samples": self.engine.nonfinite_samples,
            "mean_score": round(self.score_sum / self.scored, 4) if self.scored else None,
            "artifact_share": round(self.artifact_updates / self.updates, 4) if self.updates else None,
            "states": self.states, "latency_ms": {"p50": lat[len(lat) // 2], "p95": lat[int(0.95 * (len(lat) - 1))]}
            if lat else None,
            "files": {"raw": str(self.dir / "raw.csv"), "features": str(self.dir / "features.jsonl")},
        }

    def _write_summary(self, reason: str = "") -> None:
        doc = self.summary()
        if reason:
            doc["stop_reason"] = reason
        tmp = self.dir / "summary.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.dir / "summary.json")


__all__ = ["BoardError", "EegSession", "SessionOptions"]
