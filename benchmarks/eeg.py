"""EEG feedback latency and cost, on BrainFlow's synthetic board (250 Hz, 16 EEG channels).

1. The floor: a bare loop polling BrainFlow's ring buffer every 1 ms, and at the session's own
   poll interval — newest sample's timestamp → the moment the sample is in our hands.
2. A hub process with an EEG session, while a requester sends 20 routed inference requests per
   second to an agent: newest sample's timestamp → feedback published (the hub's clock) and →
   feedback received by an MQTT subscriber.
3. CPU time per feedback update (filtering included), 16 channels, 1 s window.

    .venv/bin/python benchmarks/eeg.py [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import Broker, emit, paho_client, summary  # noqa: E402
from benchmarks.rpc import Requester, device_login, start_agent, start_hub, wait_online  # noqa: E402
from hub.trust import Role  # noqa: E402


def polling_floor(poll_s: float, seconds: float = 3.0) -> dict[str, float]:
    from brainflow.board_shim import BoardIds, BoardShim, BrainFlowInputParams
    BoardShim.disable_board_logger()
    board = BoardShim(BoardIds.SYNTHETIC_BOARD.value, BrainFlowInputParams())
    board.prepare_session()
    board.start_stream(45000)
    ts = BoardShim.get_timestamp_channel(BoardIds.SYNTHETIC_BOARD.value)
    lags = []
    try:
        time.sleep(0.5)
        board.get_board_data()
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(poll_s)
            data = board.get_board_data()
            if data.shape[1]:
                lags.append((time.time() - data[ts, -1]) * 1000)
    finally:
        board.stop_stream()
        board.release_session()
    return summary(lags)


def cpu_per_update(updates: int = 2000) -> dict[str, float]:
    from plugins.eeg.processing import FeedbackEngine, Protocol
    fs, ch = 250.0, 16
    engine = FeedbackEngine(fs, ch, Protocol("alpha"), baseline_s=1.0)
    rng = np.random.default_rng(0)
    n = (updates + 13) * engine.step
    t = np.arange(n) / fs
    x = 20 * np.sin(2 * np.pi * 10 * t) + rng.normal(0, 5, (ch, n))
    times = []
    for i in range(0, n, engine.step):
        c0 = time.process_time_ns()
        ups = engine.push(x[:, i:i + engine.step], t[i:i + engine.step])
        c1 = time.process_time_ns()
        if ups:
            times.append((c1 - c0) / 1e6)
    return summary(times)


def session_latency(seconds: float, load_rps: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sovereign-eeg-bench-"))
    with Broker() as broker:
        # Command clients may send sovereign/cmd/# and read sovereign/eeg/# (hub/trust.py).
        me = broker.login(Role.client, "eeg-bench")
        watch = device_login(broker, "watch")
        hub, api = start_hub(broker, tmp)
        agent, agent_id = start_agent(broker, watch, "watch", "--echo")
        received: list[tuple[float, dict[str, Any]]] = []
        c = paho_client(broker.port, "eeg-bench", me, nodelay=False, connect=False)
        c.on_message = lambda _c, _u, m: received.append((time.time(), json.loads(m.payload)))
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        c.subscribe("sovereign/eeg/+/feedback", qos=0)
        stop = threading.Event()
        routed = [0]
        try:
            wait_online(api, [agent_id])

            def load() -> None:
                r = Requester(broker.port, me)
                next_at = time.monotonic()
                while not stop.is_set():
                    r.round_trip("sovereign/cmd/infer")
                    routed[0] += 1
                    next_at += 1 / load_rps
                    time.sleep(max(0.0, next_at - time.monotonic()))
                r.close()

            loader = threading.Thread(target=load)
            loader.start()
            body = json.dumps({"board": "synthetic", "baseline_s": 2}).encode()
            req = urllib.request.Request(f"{api}/api/eeg/sessions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                sid = json.load(r)["session"]
            started = time.monotonic()
            time.sleep(seconds)
            with urllib.request.urlopen(urllib.request.Request(f"{api}/api/eeg/sessions/{sid}", method="DELETE")) as r:
                summ = json.load(r)
            elapsed = time.monotonic() - started
            stop.set()
            loader.join()
        finally:
            c.loop_stop()
            for p in (agent, hub):
                p.terminate()
                p.wait(10)
    msgs = [(recv, doc) for recv, doc in received if doc["phase"] == "feedback"]
    publish = [(doc["t"] - doc["newest_sample_t"]) * 1000 for _, doc in msgs]
    receive = [(recv - doc["newest_sample_t"]) * 1000 for recv, doc in msgs]
    return {"publish_ms": summary(publish), "receive_ms": summary(receive), "feedback_hz": len(received) / elapsed,
            "routed_rps": routed[0] / elapsed, "updates": summ["updates"], "samples": summ["samples"],
            "sample_rate_hz": summ["samples"] / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--load-rps", type=float, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures = {"floor_poll_1ms": polling_floor(0.001), "floor_poll_5ms": polling_floor(0.005),
               "session": session_latency(args.seconds, args.load_rps), "cpu_per_update_ms": cpu_per_update()}
    if args.json:
        return emit(figures, True)
    s = figures["session"]
    print("BrainFlow synthetic board, 250 Hz, 16 EEG channels")
    for key, label in (("floor_poll_1ms", "floor: poll every 1 ms"), ("floor_poll_5ms", "floor: poll every 5 ms")):
        f = figures[key]
        print(f"  {label:<34} sample → in hand   p50 {f['p50']:6.2f} ms  p95 {f['p95']:6.2f} ms")
    print(f"hub session, {args.seconds:.0f} s, while routing {s['routed_rps']:.1f} requests/s "
          f"({s['sample_rate_hz']:.0f} samples/s, feedback at {s['feedback_hz']:.1f} Hz)")
    print(f"  sample → feedback published        p50 {s['publish_ms']['p50']:6.2f} ms  p95 {s['publish_ms']['p95']:6.2f} ms"
          "   (target p95 ≤ 50 ms)")
    print(f"  sample → feedback received (MQTT)  p50 {s['receive_ms']['p50']:6.2f} ms  p95 {s['receive_ms']['p95']:6.2f} ms")
    c = figures["cpu_per_update_ms"]
    print(f"CPU per feedback update (filter + band powers + artifacts + score): p50 {c['p50']:.3f} ms  "
          f"p95 {c['p95']:.3f} ms   (target ≤ 5 ms)")


if __name__ == "__main__":
    main()
