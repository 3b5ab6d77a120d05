"""The gaze plugin end to end: CSV samples through a real pty pair (socat) and JSON samples over
MQTT, fixations on areas of interest, the attention score, bad lines, and the fusion with an EEG
session that counts focus only while the eyes are on the task."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import wait_for

AOIS = {"task": [0.3, 0.3, 0.7, 0.7], "phone": [0.8, 0.8, 1.0, 1.0]}


def fixation_lines(t0: float, seconds: float, x: float, y: float, hz: float = 120) -> list[str]:
    n = int(seconds * hz)
    return [f"{t0 + i / hz:.4f},{x + 0.001 * (i % 3):.4f},{y:.4f},0.95" for i in range(n)]


async def snapshot(hub: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.http_url + "/api/gaze") as r:
            return await r.json()


async def snapshot_serial_is(hub: Any, prefix: str) -> bool:
    return str((await snapshot(hub))["serial"] or "").startswith(prefix)


class PtyPair:
    def __init__(self, tmp: Path) -> None:
        self.device, self.feed = tmp / "tracker", tmp / "feed"
        self.proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={self.device}",
                                      f"pty,raw,echo=0,link={self.feed}"], stderr=subprocess.DEVNULL)

    async def ready(self) -> None:
        await wait_for(lambda: self.device.exists() and self.feed.exists(), 30, what="pty pair")

    def write(self, lines: list[str]) -> None:
        fd = os.open(self.feed, os.O_WRONLY | os.O_NOCTTY)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


async def test_serial_fixations_aois_attention_and_bad_lines(mosquitto: Any, make_hub: Any, tmp_path: Path) -> None:
    pty = PtyPair(tmp_path)
    await pty.ready()
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"gaze": {"serial_port": str(pty.device), "aois": AOIS, "target": "task"}}) as hub:
            await wait_for(lambda: hub.state.get("mqtt.connected"), 30)
            # Written once the plugin reads the port: what is written before may not reach it.
            await wait_for(lambda: snapshot_serial_is(hub, "reading"), 30, interval=0.1, what="the port read")
            t0 = time.time()
            lines = (fixation_lines(t0, 1.0, 0.5, 0.5) + fixation_lines(t0 + 1.05, 0.5, 0.9, 0.9)
                     + ["# a comment", "", "not,a,sample", "1.0,2.0", f"{t0 + 1.6},0.5,0.5,1.7", "x" * 300]
                     + fixation_lines(t0 + 1.6, 0.6, 0.5, 0.5))
            pty.write(lines)

            async def all_read() -> Any:
                snap = await snapshot(hub)
                return snap if snap["samples"] >= 120 + 60 + 72 else None

            snap = await wait_for(all_read, 30, interval=0.1, what="every sample read")
            assert snap["samples"] == 120 + 60 + 72, snap
            assert snap["rejected"] == 4 and "line longer than 256" in (snap["last_error"] or ""), snap
            assert snap["serial"].startswith("reading")
            assert snap["dwell_s"]["task"] > 1.3 and 0.4 < snap["dwell_s"]["phone"] < 0.6, snap["dwell_s"]
            assert 0.6 < snap["attention"] < 0.85 and snap["on_target"] is True
            assert hub.state.counters["gaze_rejected_samples"] == 4
    finally:
        pty.close()


async def test_mqtt_samples_and_eeg_focus_counts_only_on_target(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"gaze": {"aois": AOIS, "target": "task", "publish_hz": 20},
                                 "eeg": {"state_model": False, "gaze_gate": True, "baseline_s": 0.5}}) as hub:
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        async with aiohttp.ClientSession() as s:
            async with s.post(hub.http_url + "/api/eeg/sessions", json={"board": "synthetic"}) as r:
                sid = (await r.json())["session"]

        async def look(x: float, y: float, seconds: float) -> None:
            t0 = time.time()
            for i in range(int(seconds * 60)):
                c.publish("sovereign/gaze/samples", json.dumps({"t": t0 + i / 60, "x": x, "y": y, "confidence": 0.9}))
                await asyncio.sleep(1 / 60)  # the scenario: a 60 Hz tracker, in real time like the EEG board

        async def last_score() -> Any:
            async with aiohttp.ClientSession() as s:
                async with s.get(hub.http_url + f"/api/eeg/sessions/{sid}") as r:
                    return (await r.json())["last"]

        async def matching_update(predicate: Any) -> Any:
            last = await last_score()
            return last if last and predicate(last) else None

        await look(0.9, 0.9, 2.0)  # on the phone, not the task
        # The EEG side runs on its own clock: wait for an update in feedback that saw the gaze off.
        off = await wait_for(lambda: matching_update(lambda u: u["phase"] == "feedback" and u["gaze_on_target"] is False),
                             30, interval=0.05, what="a feedback update with the gaze off the task")
        assert off["score"] == 0.0, off
        await look(0.5, 0.5, 1.0)
        on = await wait_for(lambda: matching_update(lambda u: u["gaze_on_target"] is True), 30, interval=0.05,
                            what="an update with the gaze on the task")
        assert on["score"] > 0.0, on
        c.publish("sovereign/gaze/samples", b'{"t": 1, "x": "left", "y": 0.5, "confidence": 1}')
        await wait_for(lambda: hub.state.counters.get("gaze_rejected_samples") == 1, 30)
        c.loop_stop()


async def test_absent_or_busy_serial_port_is_reported_and_retried(mosquitto: Any, make_hub: Any,
                                                                 tmp_path: Path) -> None:
    import serial
    pty = PtyPair(tmp_path)
    await pty.ready()
    holder = serial.Serial(str(pty.device), exclusive=True)  # someone else has the port
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"gaze": {"serial_port": str(pty.device)}}) as hub:
            await wait_for(lambda: snapshot_serial_is(hub, "error:"), 30, interval=0.1, what="the busy port reported")
            snap = await snapshot(hub)
            assert snap["serial"].startswith("error:") and "retrying" in snap["serial"], snap["serial"]
            holder.close()
            await wait_for(lambda: snapshot_serial_is(hub, "reading"), 30, interval=0.1,
                           what="the port reopened after it was freed")
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"gaze": {"serial_port": str(tmp_path / "no-such-tty")}}) as hub:
            await wait_for(lambda: snapshot_serial_is(hub, "error:"), 30, interval=0.1, what="the missing port reported")
            assert "does not exist" in (await snapshot(hub))["serial"]
    finally:
        holder.close()
        pty.close()
