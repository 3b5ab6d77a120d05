"""EEG biofeedback: the causal processing, and sessions on BrainFlow's real synthetic and playback
boards through HTTP, MQTT and the CLI, with their recordings."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import paho.mqtt.client as paho
import pytest
from brainflow.data_filter import DataFilter
from paho.mqtt.enums import CallbackAPIVersion

from plugins.eeg.processing import ArtifactLimits, FeedbackEngine, Protocol

from .conftest import wait_for

FS = 250.0


def tones(seconds: float, freqs: list[float], amp: float = 20.0, channels: int = 4,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    x = sum(amp * np.sin(2 * np.pi * f * t) for f in freqs) + rng.normal(0, 1.0, (channels, t.size))
    return np.asarray(x), 1_700_000_000.0 + t


def run(engine: FeedbackEngine, x: np.ndarray, t: np.ndarray, chunk: int) -> list[Any]:
    out = []
    for i in range(0, x.shape[1], chunk):
        out += engine.push(x[:, i:i + chunk], t[i:i + chunk])
    return out


# -- processing ----------------------------------------------------------------------------------

def test_band_powers_follow_the_rhythm() -> None:
    x, t = tones(4, [10.0])
    ups = run(FeedbackEngine(FS, 4, Protocol("alpha"), baseline_s=1), x, t, 7)
    assert ups and ups[-1].relative["alpha"] > 0.8, ups[-1].relative
    x, t = tones(4, [20.0])
    ups = run(FeedbackEngine(FS, 4, Protocol("focus"), baseline_s=1), x, t, 7)
    assert ups[-1].relative["beta"] > 0.8 and ups[-1].metric > 5


def test_processing_is_causal_and_chunking_does_not_matter() -> None:
    """An update uses only samples that had arrived: appending the future changes nothing
    already computed, however the data were chunked."""
    x, t = tones(6, [10.0, 21.0], seed=3)
    a = run(FeedbackEngine(FS, 4, Protocol("alpha"), baseline_s=2), x[:, :1000], t[:1000], 1)
    b = run(FeedbackEngine(FS, 4, Protocol("alpha"), baseline_s=2), x, t, 37)
    assert len(a) > 10
    for u, v in zip(a, b):
        assert u.t_sample == v.t_sample
        assert u.band_powers == pytest.approx(v.band_powers, rel=1e-9)


def test_updates_rate_and_baseline_calibration() -> None:
    x, t = tones(4, [10.0])
    ups = run(FeedbackEngine(FS, 4, Protocol("alpha"), baseline_s=1.0, update_hz=12.5), x, t, 5)
    # 4 s at 12.5 Hz, the first after a full 1 s window.
    assert 36 <= len(ups) <= 39
    assert {u.phase for u in ups[:10]} == {"baseline"} and all(u.score == 0.5 for u in ups[:10])
    assert ups[-1].phase == "feedback" and 0.0 <= ups[-1].score <= 1.0
    # More alpha than at baseline scores above 0.5; less scores below.
    def mix(alpha_amp: float, seed: int) -> np.ndarray:
        t = np.arange(int(2 * FS)) / FS
        rng = np.random.default_rng(seed)
        return alpha_amp * np.sin(2 * np.pi * 10 * t) + 10 * np.sin(2 * np.pi * 20 * t) + rng.normal(0, 1, (4, t.size))

    for alpha_amp, check in ((20.0, lambda s: s > 0.9), (5.0, lambda s: s < 0.1)):
        engine = FeedbackEngine(FS, 4, Protocol("alpha"), baseline_s=1.0)
        run(engine, mix(10.0, 0), 1_700_000_000.0 + np.arange(500) / FS, 25)  # baseline: alpha = beta
        ups = run(engine, mix(alpha_amp, 1), 1_700_000_002.0 + np.arange(500) / FS, 25)
        assert check(ups[-1].score), (alpha_amp, ups[-1].score)


def test_artifacts_railed_flat_high_and_nonfinite() -> None:
    x, t = tones(2, [10.0])
    x[1] = 187_500.0  # railed (and, being constant, flat)
    x[2, 200:210] = 900.0  # a blink-sized jump
    x[3, 300:305] = np.nan
    engine = FeedbackEngine(FS, 4, Protocol("alpha"), baseline_s=0.5, limits=ArtifactLimits())
    ups = run(engine, x, t, 10)
    flags = ups[3].artifacts  # the window ending at sample 330 holds all three
    assert 1 in flags["railed"] and 1 in flags["flat"]
    assert 2 in flags["high_amplitude"] and 3 in flags["invalid"]
    assert 0 not in set().union(*map(set, flags.values()))
    assert engine.nonfinite_samples == 5
    assert ups[0].artifacts["invalid"] == [], "not before the NaN arrived"
    assert ups[-1].clean_channels >= 1 and all(np.isfinite(list(u.band_powers.values())).all() for u in ups)
    # Once the NaN has left the window, the channel is clean again: the filter state survived.
    later = run(engine, *tones(2, [10.0], seed=5), 10)
    assert 3 not in later[-1].artifacts["invalid"] and 0 in range(later[-1].clean_channels)


# -- sessions on real boards ---------------------------------------------------------------------

def feedback_listener(port: int, topic: str) -> tuple[paho.Client, "queue.Queue[dict[str, Any]]"]:
    q: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"eeg-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
    c.on_message = lambda _c, _u, m: q.put({"topic": m.topic, **json.loads(m.payload)})
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos=0)
    assert subscribed.wait(30), "no SUBACK"
    return c, q


async def api(hub: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, hub.http_url + path, json=body) as r:
            return r.status, await r.json()


async def session_when(hub: Any, sid: str, predicate: Any, what: str, timeout: float = 60) -> dict[str, Any]:
    """The session's document (GET /api/eeg/sessions/<id>) once ``predicate`` holds of it."""
    async def check() -> dict[str, Any] | None:
        status, doc = await api(hub, "GET", f"/api/eeg/sessions/{sid}")
        assert status == 200, doc
        return doc if predicate(doc) else None
    return await wait_for(check, timeout, interval=0.05, what=what)


async def feedback_before_marker(hub: Any, q: "queue.Queue[dict[str, Any]]") -> list[dict[str, Any]]:
    """The feedback messages the listener got before a marker published now on the hub's own
    connection: the broker delivers one client's messages in order, so when the marker arrives,
    everything the hub published before it has arrived too."""
    marker = uuid.uuid4().hex
    assert await hub.mqtt.publish("sovereign/eeg/marker/feedback", json.dumps({"marker": marker}), qos=0)
    before: list[dict[str, Any]] = []
    while (m := await asyncio.to_thread(q.get, True, 30)).get("marker") != marker:
        before.append(m)
    return before


EEG = {"plugins": {"eeg": {"state_model": False}}, "zeroconf": {"enabled": False}}


async def test_synthetic_session_over_http_publishes_feedback_and_records(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, **EEG) as hub:
        c, q = feedback_listener(mosquitto.port, "sovereign/eeg/+/feedback")
        status, s = await api(hub, "POST", "/api/eeg/sessions", {"board": "synthetic", "baseline_s": 1})
        assert status == 201, s
        sid = s["session"]
        assert s["sampling_rate"] == 250 and len(s["channels"]) == 16 and s["channels"][0] == "Fz"
        msgs: list[dict[str, Any]] = []

        def feedback_for_2_s() -> bool:
            while not q.empty():
                msgs.append(q.get_nowait())
            fb = [m for m in msgs if m["phase"] == "feedback"]
            return len(fb) > 1 and fb[-1]["t"] - fb[0]["t"] >= 2.0

        await wait_for(feedback_for_2_s, 60, what="2 s of feedback after the 1 s baseline")
        fb = [m for m in msgs if m["phase"] == "feedback"]
        rate = (len(fb) - 1) / (fb[-1]["t"] - fb[0]["t"])
        assert rate >= 10, f"{rate:.1f} feedback messages a second over {fb[-1]['t'] - fb[0]['t']:.1f} s (want ≥ 10 Hz)"
        last = msgs[-1]
        assert last["topic"] == f"sovereign/eeg/{sid}/feedback" and last["phase"] == "feedback"
        assert 0 <= last["score"] <= 1 and last["t"] >= last["newest_sample_t"] > time.time() - 5
        status, paused = await api(hub, "POST", f"/api/eeg/sessions/{sid}/pause")
        assert status == 200 and paused["state"] == "paused"
        # Paused, the session still records: once a second of samples has come in since the pause,
        # the poll that was emitting when it came has ended. What it published is flushed out
        # with a marker; then, over another second of samples, nothing more may come.
        await session_when(hub, sid, lambda d: d["samples"] >= paused["samples"] + 250, "recording while paused")
        await feedback_before_marker(hub, q)
        before = await session_when(hub, sid, bool, "the session")
        await session_when(hub, sid, lambda d: d["samples"] >= before["samples"] + 250, "a second more while paused")
        assert await feedback_before_marker(hub, q) == [], "no feedback while paused"
        assert (await session_when(hub, sid, bool, "the session"))["updates"] == before["updates"]
        await api(hub, "POST", f"/api/eeg/sessions/{sid}/resume")
        await wait_for(lambda: not q.empty(), 30, what="feedback after resuming")
        status, summary = await api(hub, "DELETE", f"/api/eeg/sessions/{sid}")
        assert status == 200 and summary["state"] == "stopped" and summary["baseline"]["done"]
        print(f"sample → feedback latency p95 {summary['latency_ms']['p95']:.0f} ms")
        assert summary["latency_ms"]["p95"] < 100
        raw = DataFilter.read_file(summary["files"]["raw"])
        assert raw.shape[0] == 32 and abs(raw.shape[1] - summary["samples"]) <= 2
        lines = Path(summary["files"]["features"]).read_text().splitlines()
        assert len(lines) == summary["updates"] and json.loads(lines[-1])["session"] == sid
        status, rep = await api(hub, "POST", f"/api/eeg/sessions/{sid}/report")
        assert status == 200 and Path(rep["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        history = hub.history.query("eeg.rel_alpha", time.time() - 60, time.time() + 1, 1.0)
        assert len(history) >= 2
        c.loop_stop()


async def test_a_recording_replays_to_the_same_band_powers(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, **EEG) as hub:
        _, s = await api(hub, "POST", "/api/eeg/sessions", {"board": "synthetic", "baseline_s": 0})
        await session_when(hub, s["session"], lambda d: d["updates"] >= 12, "a recording with 12 updates")
        _, original = await api(hub, "DELETE", f"/api/eeg/sessions/{s['session']}")
        status, p = await api(hub, "POST", "/api/eeg/sessions", {"board": "playback", "file": original["files"]["raw"],
                                                                  "master_board": "synthetic", "baseline_s": 0})
        assert status == 201, p
        await session_when(hub, p["session"], lambda d: d["updates"] >= 8, "8 updates from the playback")
        _, replay = await api(hub, "DELETE", f"/api/eeg/sessions/{p['session']}")
    first = [json.loads(x)["band_powers"] for x in Path(original["files"]["features"]).read_text().splitlines()]
    again = [json.loads(x)["band_powers"] for x in Path(replay["files"]["features"]).read_text().splitlines()]
    n = min(len(first), len(again), 8)
    assert n >= 5
    for a, b in zip(first[:n], again[:n]):
        assert a == pytest.approx(b, rel=1e-3)


async def test_bad_sessions_are_refused_clearly(mosquitto: Any, make_hub: Any, tmp_path: Path) -> None:
    async with make_hub(mosquitto.url, **EEG) as hub:
        cases = [({"board": "telepathy-9000"}, 400, "unknown board"),
                 ({"board": "cyton", "serial_port": "/dev/does-not-exist"}, 400, "does not exist"),
                 ({"board": "cyton"}, 400, "needs serial_port"),
                 ({"board": "playback", "file": str(tmp_path / "none.csv")}, 400, "not found"),
                 ({"board": "synthetic", "baseline_s": -1}, 400, "baseline_s"),
                 ({"board": "synthetic", "colour": "red"}, 400, "colour")]
        for body, want, text in cases:
            status, out = await api(hub, "POST", "/api/eeg/sessions", body)
            assert status == want and text in out["error"]["message"], (body, out)
        status, s = await api(hub, "POST", "/api/eeg/sessions", {"board": "synthetic"})
        assert status == 201
        status, out = await api(hub, "POST", "/api/eeg/sessions", {"board": "synthetic"})
        assert status == 409 and out["error"]["code"] == "board_busy" and s["session"] in out["error"]["message"]
        status, out = await api(hub, "DELETE", "/api/eeg/sessions/nope")
        assert status == 404
        # A serial port that is there but is not a Cyton: BrainFlow's error, reported.
        pty = tmp_path / "fake-cyton"
        socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={pty}", f"pty,raw,echo=0,link={tmp_path / 'other'}"],
                                 stderr=subprocess.DEVNULL)
        try:
            await wait_for(pty.exists, 30)
            status, out = await api(hub, "POST", "/api/eeg/sessions", {"board": "cyton", "serial_port": str(pty)})
            assert status == 400 and out["error"]["code"] == "board_error" and "BrainFlow" in out["error"]["message"]
        finally:
            socat.terminate()
        status, listing = await api(hub, "GET", "/api/eeg/sessions")
        assert [x["session"] for x in listing["sessions"]] == [s["session"]], "the good session is untouched"


async def test_stopping_the_hub_mid_session_keeps_the_recording(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, **EEG) as hub:
        _, s = await api(hub, "POST", "/api/eeg/sessions", {"board": "synthetic", "baseline_s": 0})
        await session_when(hub, s["session"], lambda d: d["samples"] >= 300 and d["updates"] > 0,
                           "300 samples and an update")
        directory = hub.data_dir / "plugins" / "eeg" / "sessions" / s["session"]
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["state"] == "stopped" and summary["stop_reason"] == "hub stopping"
    raw = DataFilter.read_file(str(directory / "raw.csv"))
    assert raw.shape[1] >= 300 and abs(raw.shape[1] - summary["samples"]) <= 2
    assert len((directory / "features.jsonl").read_text().splitlines()) == summary["updates"] > 0


async def test_sessions_over_mqtt_and_the_cli(mosquitto: Any, make_hub: Any) -> None:
    from .test_http_cli import _cli
    async with make_hub(mosquitto.url, **EEG) as hub:
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5", "-t", "sovereign/cmd/eeg",
            "-e", "sovereign/reply/eeg-test/reply", "-m", json.dumps({"action": "start", "board": "synthetic",
                                                                "protocol": "focus", "baseline_s": 0}), "-W", "30",
            stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        started = json.loads(out)
        assert started["ok"] and started["result"]["protocol"] == "focus"
        sid = started["result"]["session"]
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5", "-t", "sovereign/cmd/eeg",
            "-e", "sovereign/reply/eeg-test/reply", "-m", json.dumps({"action": "stop"}), "-W", "30", stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        refused = json.loads(out)
        assert not refused["ok"] and "needs session" in refused["error"]["message"]
        res = await asyncio.to_thread(_cli, "eeg", "list", "--url", hub.http_url)
        assert res.returncode == 0 and sid in res.stdout
        # The report is drawn from the features file, which the session flushes every 0.5 s.
        features = Path((await session_when(hub, sid, bool, "the session"))["files"]["features"])
        await wait_for(lambda: features.exists() and len(features.read_text().splitlines()) >= 10, 60,
                       what="10 updates in the features file")
        res = await asyncio.to_thread(_cli, "eeg", "report", sid, "--url", hub.http_url)
        assert res.returncode == 0 and res.stdout.strip().endswith("report.png"), res.stderr
        res = await asyncio.to_thread(_cli, "eeg", "stop", sid, "--url", hub.http_url)
        assert res.returncode == 0 and "stopped" in res.stdout
        res = await asyncio.to_thread(_cli, "eeg", "start", "--board", "nonsense", "--url", hub.http_url)
        assert res.returncode == 1 and "unknown board" in res.stderr


async def test_the_fleet_classifies_the_brain_state(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """The state model is a routable ``eeg`` task: here the watch's LiteRT model answers it."""
    from .test_dispatch import fleet
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"eeg": {"state_model": True, "baseline_s": 0}}) as hub:
        [watch] = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ()))
        _, s = await api(hub, "POST", "/api/eeg/sessions", {"board": "synthetic"})
        await session_when(hub, s["session"], lambda d: sum(d["states"].values()) >= 2, "two states classified")
        _, summary = await api(hub, "DELETE", f"/api/eeg/sessions/{s['session']}")
        assert sum(summary["states"].values()) >= 2, summary
        assert set(summary["states"]) <= {"relaxed", "focused", "drowsy", "artifact"}
        hub.ledger.flush()
        assert hub.ledger.periods()["today"]["by_device"][watch.device_id]["count"] >= 2


async def test_a_railed_channel_on_a_real_playback_board_is_flagged(mosquitto: Any, make_hub: Any,
                                                                    tmp_path: Path) -> None:
    """A recording whose third EEG channel sits at the amplifier's rail, played back through
    BrainFlow's playback board: that channel is flagged and left out, the others carry on."""
    from brainflow.board_shim import BoardIds, BoardShim, BrainFlowInputParams
    BoardShim.disable_board_logger()
    board = BoardShim(BoardIds.SYNTHETIC_BOARD.value, BrainFlowInputParams())
    board.prepare_session()
    board.start_stream(45000)
    await wait_for(lambda: board.get_board_data_count() >= 500, 30, what="2 s of samples")
    data = board.get_board_data()
    board.stop_stream()
    board.release_session()
    data[3] = 187_500.0  # EEG rows start at 1: row 3 is the third EEG channel (index 2)
    recording = tmp_path / "railed.csv"
    DataFilter.write_file(data, str(recording), "w")
    async with make_hub(mosquitto.url, **EEG) as hub:
        status, s = await api(hub, "POST", "/api/eeg/sessions", {"board": "playback", "file": str(recording),
                                                                  "baseline_s": 0})
        assert status == 201, s
        doc = await session_when(hub, s["session"], lambda d: d["last"] and d["last"]["score"] is not None,
                                 "a scored update")
        last = doc["last"]
        assert 2 in last["artifacts"]["railed"] and last["clean_channels"] == 15 and last["score"] is not None
        await api(hub, "DELETE", f"/api/eeg/sessions/{s['session']}")
