"""Gaze streams: samples from an MQTT topic (JSON) and from a serial port (CSV lines), I-VT
fixations, dwell on named areas of interest, an attention score.

The plugin publishes ``<root>/gaze/attention`` (retained off, QoS 0) at ``publish_hz`` and the bus
event ``gaze.attention`` with ``on_target``: a running EEG session with ``gaze_gate`` counts focus
only while the eyes rest on the task's area. ``GET /api/gaze`` answers the latest snapshot and the
sources' status. Sample formats: ``plugins/gaze/processing.py`` (and docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import serial
from pydantic import Field, model_validator

from hub.plugin_api import Message, Plugin, PluginConfig, PluginContext, web

from .processing import IVT, AreasOfInterest, GazeMetrics, GazeParseError, parse_csv_line, parse_json

STALE_S = 1.0  # no sample for this long: gaze unknown
MAX_LINE = 256  # a CSV sample is ~40 bytes; anything longer is garbage, not a sample


class GazeConfig(PluginConfig):
    #: Topic filter for JSON samples; default ``<root>/gaze/samples``. Empty: no MQTT source.
    mqtt_topic: str | None = None
    #: Serial device giving CSV lines (``t,x,y,confidence[,pupil]``); none by default.
    serial_port: str | None = None
    baudrate: int = Field(default=115200, gt=0)
    #: Named rectangles in normalised screen coordinates: ``task = [0.2, 0.2, 0.8, 0.8]``.
    aois: dict[str, tuple[float, float, float, float]] = Field(default_factory=dict)
    target: str | None = None
    window_s: float = Field(default=10.0, gt=0, le=600)
    velocity_threshold_deg_s: float = Field(default=30.0, gt=0)
    degrees_per_unit: float = Field(default=30.0, gt=0)
    min_fixation_s: float = Field(default=0.1, gt=0)
    publish_hz: float = Field(default=5.0, gt=0, le=50)

    @model_validator(mode="after")
    def _target(self) -> "GazeConfig":
        if self.target is not None and self.target not in self.aois:
            raise ValueError(f"target {self.target!r} is not one of the aois ({', '.join(self.aois) or 'none'})")
        return self


class Gaze:
    def __init__(self, ctx: PluginContext[GazeConfig]) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.metrics = GazeMetrics(AreasOfInterest(cfg.aois), target=cfg.target, window_s=cfg.window_s,
                                   ivt=IVT(velocity_threshold_deg_s=cfg.velocity_threshold_deg_s,
                                           degrees_per_unit=cfg.degrees_per_unit, min_fixation_s=cfg.min_fixation_s))
        self.samples = 0
        self.rejected = 0
        self.last_error = ""
        self.last_t: float | None = None
        self.serial_status = "not configured" if not cfg.serial_port else "opening"
        self.last_arrival = 0.0

    def accept(self, sample: Any) -> None:
        self.samples += 1
        self.last_t = sample.t
        self.last_arrival = time.monotonic()
        self.metrics.push(sample)

    def reject(self, where: str, exc: Exception) -> None:
        self.rejected += 1
        self.last_error = f"{where}: {exc}"
        self.ctx.state.count("gaze_rejected_samples")
        if self.rejected <= 20 or self.rejected % 1000 == 0:
            self.ctx.log.warning("rejected gaze sample from %s: %s (%d so far)", where, exc, self.rejected)

    def snapshot(self) -> dict[str, Any]:
        now = self.last_t if self.last_t is not None else 0.0
        snap = {**self.metrics.snapshot(now), "t": self.last_t, "samples": self.samples, "rejected": self.rejected,
                "last_error": self.last_error or None, "serial": self.serial_status,
                "stale": time.monotonic() - self.last_arrival > STALE_S}
        if snap["stale"]:
            snap["on_target"] = None  # the tracker went quiet: nobody knows where the eyes are
        return snap

    # -- sources -------------------------------------------------------------------------------

    def on_mqtt(self, message: Message) -> None:
        try:
            self.accept(parse_json(message.payload))
        except GazeParseError as exc:
            self.reject(message.topic, exc)

    async def read_serial(self, port: str) -> None:
        """Open the port (exclusively), read lines as they come; reopen with backoff when it is
        absent, busy or unplugged. The read is driven by the event loop, not a thread."""
        backoff = 1.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                ser = serial.Serial(port, self.ctx.config.baudrate, timeout=0, exclusive=True)
            except (serial.SerialException, OSError) as exc:
                reason = "does not exist" if not os.path.exists(port) else str(exc)
                self.serial_status = f"error: {port}: {reason}; retrying in {backoff:.0f} s"
                self.ctx.log.warning("gaze serial %s", self.serial_status)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            self.serial_status = f"reading {port}"
            closed: asyncio.Future[str] = loop.create_future()
            pending = bytearray()

            def readable() -> None:
                try:
                    chunk = ser.read(4096)
                except (serial.SerialException, OSError) as exc:
                    if not closed.done():
                        closed.set_result(str(exc))
                    return
                pending.extend(chunk)
                while (nl := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:nl])
                    del pending[:nl + 1]
                    self._line(port, line)
                if len(pending) > MAX_LINE:
                    self.reject(port, GazeParseError(f"line longer than {MAX_LINE} bytes without a newline"))
                    pending.clear()

            loop.add_reader(ser.fileno(), readable)
            try:
                reason = await closed
            finally:
                loop.remove_reader(ser.fileno())
                ser.close()
            self.serial_status = f"error: {port}: {reason}; reopening"
            await asyncio.sleep(backoff)

    def _line(self, port: str, line: bytes) -> None:
        if len(line) > MAX_LINE:
            self.reject(port, GazeParseError(f"line longer than {MAX_LINE} bytes"))
            return
        try:
            sample = parse_csv_line(line)
        except GazeParseError as exc:
            self.reject(port, exc)
            return
        if sample is not None:
            self.accept(sample)

    async def publish(self) -> None:
        topic = f"{self.ctx.topic_root}/gaze/attention"
        last_record = 0.0
        while True:
            await asyncio.sleep(1 / self.ctx.config.publish_hz)
            if self.last_t is None:
                continue
            snap = self.snapshot()
            self.ctx.emit("gaze.attention", snap)
            await self.ctx.publish(topic, json.dumps(snap))
            if time.time() - last_record >= 1.0:
                last_record = time.time()
                self.ctx.record("attention", snap["attention"], time.time())
                self.ctx.record("fixation_rate_hz", snap["fixation_rate_hz"], time.time())


async def setup(ctx: PluginContext[GazeConfig]) -> None:
    gaze = Gaze(ctx)
    cfg = ctx.config
    topic = cfg.mqtt_topic if cfg.mqtt_topic is not None else f"{ctx.topic_root}/gaze/samples"
    if topic:
        await ctx.subscribe(topic, gaze.on_mqtt, qos=0)
    if cfg.serial_port:
        ctx.create_task(gaze.read_serial(cfg.serial_port), "serial")
    ctx.create_task(gaze.publish(), "publish")

    async def show(request: web.Request) -> web.Response:
        return web.json_response(gaze.snapshot())

    ctx.add_route("GET", "", show)


PLUGIN = Plugin(name="gaze", version="1.0.0", description="Gaze streams: fixations, areas of interest, attention",
                setup=setup, config_model=GazeConfig)
