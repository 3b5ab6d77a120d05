"""Round trips of one small request, three ways, on one private Mosquitto, in one run:

  (a) direct     client → echo process (MQTT 5 response topic + correlation data) → client
  (b) relay      client → bare paho relay → echo process → relay → client: the hub's hops with
                 no work done, the physical floor of that topology
  (c) hub        client → hub (sovereign/cmd/infer: validate, route, dispatch, ledger) → agent's
                 echo executor → hub → client

Then sustained requests per second with 10 concurrent clients through (b) and (c), and the time
the hub takes to escalate after the chosen agent dies mid-request (SIGKILL: its last will) or
hangs (SIGSTOP: the attempt's timeout).

    .venv/bin/python benchmarks/rpc.py [--requests 2000] [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, Broker, emit, summary  # noqa: E402

BODY = json.dumps({"task": "echo", "text": "ping"})


def client(port: int, name: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    # As the hub's own connection does (hub/mqtt.py): no Nagle delay on small packets.
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def reply_props(topic: str, corr: bytes) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = topic
    p.CorrelationData = corr
    return p


# -- helper processes ----------------------------------------------------------------------------

def role_echo(port: int) -> None:
    """Answers every request on bench/echo/rpc with its own payload."""
    c = client(port, "echo")

    def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        c.publish(m.properties.ResponseTopic, m.payload, qos=1, properties=props)

    c.on_message = on_message
    c.subscribe("bench/echo/rpc", qos=1)
    print("ready", flush=True)
    c.loop_forever()


def role_relay(port: int) -> None:
    """Forwards bench/relay/cmd to the echo process and the answer back: no parsing, no work."""
    c = client(port, "relay")
    waiting: dict[bytes, tuple[str, bytes]] = {}
    n = 0

    def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        nonlocal n
        if m.topic == "bench/relay/cmd":
            n += 1
            corr = str(n).encode()
            waiting[corr] = (m.properties.ResponseTopic, m.properties.CorrelationData)
            c.publish("bench/echo/rpc", m.payload, qos=1, properties=reply_props("bench/relay/reply", corr))
        else:
            topic, corr = waiting.pop(m.properties.CorrelationData)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr
            c.publish(topic, m.payload, qos=1, properties=props)

    c.on_message = on_message
    c.subscribe([("bench/relay/cmd", 1), ("bench/relay/reply", 1)])
    print("ready", flush=True)
    c.loop_forever()


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc


def ready_line(proc: subprocess.Popen[bytes], pattern: str = "ready") -> str:
    """The first output line containing ``pattern`` (log lines may come first)."""
    assert proc.stdout is not None
    seen = []
    for _ in range(50):
        line = proc.stdout.readline().decode()
        if pattern in line:
            return line
        seen.append(line)
        if not line:
            break
    raise SystemExit(f"helper did not start: {''.join(seen)!r}")


def start_hub(broker: Broker, tmp: Path, hub_id: str = "bench-hub", **dispatch: Any) -> tuple[subprocess.Popen[bytes], str]:
    conf = tmp / f"{hub_id}.toml"
    extra = "".join(f"{k} = {v}\n" for k, v in dispatch.items())
    conf.write_text(f'hub_id = "{hub_id}"\ndata_dir = "{tmp / hub_id}"\nlog_level = "error"\n[mqtt]\nurl = "{broker.url}"\n'
                    f'[http]\nport = 0\nrequire_token = "remote"\n[zeroconf]\nenabled = false\n[dispatch]\n{extra}')
    proc = spawn("-m", "hub", "run", "--config", str(conf))
    m = re.search(r"API (http://\S+)", ready_line(proc, "API"))
    assert m
    return proc, m.group(1)


def start_agent(broker: Broker, profile: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    device_id = f"bench-{profile}-{uuid.uuid4().hex[:4]}"
    proc = spawn("-m", "hub", "agent", "--profile", profile, "--id", device_id, "--broker", broker.url, "--no-zeroconf",
                 "--http-host", "127.0.0.1", "--log-level", "error", *extra)
    ready_line(proc, "agent")
    return proc, device_id


def wait_online(api: str, device_ids: list[str], timeout: float = 20) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    for d in device_ids:
        while True:
            try:
                with urllib.request.urlopen(f"{api}/api/devices/{d}", timeout=2) as r:
                    if json.load(r)["online"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{d} never came online")
            time.sleep(0.05)
    time.sleep(1.1)  # the hub rebuilds its fleet snapshot at most once a second


# -- the requester -------------------------------------------------------------------------------

class Requester:
    """Sequential request/response over one MQTT 5 connection, timing each round trip."""

    def __init__(self, port: int) -> None:
        self.c = client(port, "bench")
        self.reply = f"sovereign/bench/{uuid.uuid4().hex[:6]}"
        self._answer = threading.Event()
        self._last: bytes = b""
        self.c.on_message = self._on_message
        self.c.loop_start()
        self.c.subscribe(self.reply, qos=1)
        time.sleep(0.2)
        self._n = 0

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        self._last = m.payload
        self._answer.set()

    def round_trip(self, topic: str, body: str = BODY, timeout: float = 10) -> float:
        self._n += 1
        self._answer.clear()
        t0 = time.perf_counter()
        self.c.publish(topic, body, qos=1, properties=reply_props(self.reply, str(self._n).encode()))
        if not self._answer.wait(timeout):
            raise SystemExit(f"no answer on {topic}")
        return (time.perf_counter() - t0) * 1000

    @property
    def last(self) -> dict[str, Any]:
        return json.loads(self._last)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def throughput(port: int, topic: str, clients: int, seconds: float) -> float:
    """Closed loop: each client sends its next request when the previous one is answered."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        r = Requester(port)
        try:
            while time.monotonic() < stop:
                r.round_trip(topic)
                done[i] += 1
        finally:
            r.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def escalation(broker: Broker, tmp: Path, how: str) -> dict[str, float]:
    """Time from the chosen agent's death (or hang) to the hub giving up on it, from the hub's
    own attempt record: first attempt's duration minus the time between sending and the kill."""
    hub, api = start_hub(broker, tmp, f"esc-{how}", min_attempt_ms=1000)
    laptop, laptop_id = start_agent(broker, "laptop", "--seed", "1")
    gpu, gpu_id = start_agent(broker, "gpu-box", "--seed", "1")
    try:
        wait_online(api, [laptop_id, gpu_id])
        import urllib.request
        body = json.dumps({"task": "summarize", "text": "a note", "budget_ms": 20000}).encode()
        req = urllib.request.Request(f"{api}/api/route", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            chosen = json.load(r)["chosen"]
        victim = laptop if chosen["device"] == laptop_id else gpu
        result: dict[str, Any] = {}

        def call() -> None:
            with urllib.request.urlopen(urllib.request.Request(f"{api}/api/infer", body), timeout=30) as r:
                result.update(json.load(r))

        t = threading.Thread(target=call)
        t0 = time.perf_counter()
        t.start()
        time.sleep(0.15)
        victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        killed = (time.perf_counter() - t0) * 1000
        t.join()
        first = result["attempts"][0]
        assert not first["ok"] and result["ok"], result
        timeout_ms = max(1000, chosen["p95_ms"] * 3)
        return {"escalate_ms": first["latency_ms"] - killed, "attempt_ms": first["latency_ms"],
                "attempt_timeout_ms": timeout_ms, "error": first["error"]}
    finally:
        for p in (laptop, gpu, hub):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="round trips per path")
    ap.add_argument("--rounds", type=int, default=10, help="the paths alternate in this many rounds")
    ap.add_argument("--seconds", type=float, default=5, help="per throughput measurement")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "echo":
        return role_echo(args.port)
    if args.role == "relay":
        return role_relay(args.port)

    tmp = Path(tempfile.mkdtemp(prefix="sovereign-rpc-bench-"))
    with Broker() as broker:
        helpers = [spawn(__file__, "--role", r, "--port", str(broker.port)) for r in ("echo", "relay")]
        for h in helpers:
            ready_line(h)
        hub, api = start_hub(broker, tmp)
        agent, agent_id = start_agent(broker, "watch", "--echo")
        try:
            wait_online(api, [agent_id])
            req = Requester(broker.port)
            paths = {"direct": "bench/echo/rpc", "relay": "bench/relay/cmd", "hub": "sovereign/cmd/infer"}
            for topic in paths.values():  # warm up every path
                for _ in range(200):
                    req.round_trip(topic)
            assert req.last["ok"] and req.last["result"]["output"] == "ping", req.last
            times: dict[str, list[float]] = {k: [] for k in paths}
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for name, topic in paths.items():
                    times[name] += [req.round_trip(topic) for _ in range(per_round)]
            req.close()
            rps = {name: throughput(broker.port, paths[name], 10, args.seconds) for name in ("relay", "hub")}
        finally:
            for p in (*helpers, agent, hub):
                p.terminate()
                p.wait(10)
        esc = {how: escalation(broker, tmp, how) for how in ("kill", "hang")}

    figures = {name: summary(v) for name, v in times.items()}
    figures["hub_minus_relay_ms"] = {"p50": figures["hub"]["p50"] - figures["relay"]["p50"],
                                     "p95": figures["hub"]["p95"] - figures["relay"]["p95"]}
    figures["throughput_rps_10_clients"] = rps
    figures["escalation"] = esc
    if args.json:
        return emit(figures, True)
    print(f"round trip of one small request, {per_round * args.rounds} per path in {args.rounds} alternating rounds")
    for name, label in (("direct", "(a) direct paho echo"), ("relay", "(b) bare paho relay"),
                        ("hub", "(c) hub → agent echo")):
        f = figures[name]
        print(f"  {label:<24} p50 {f['p50']:7.3f} ms  p95 {f['p95']:7.3f} ms")
    d = figures["hub_minus_relay_ms"]
    print(f"  hub − relay              p50 {d['p50']:+7.3f} ms  p95 {d['p95']:+7.3f} ms   (target ≤ +1 / ≤ +3 ms)")
    print(f"sustained, 10 concurrent closed-loop clients, {args.seconds:.0f} s each")
    for name in ("relay", "hub"):
        print(f"  {name:<24} {rps[name]:8.0f} requests/s")
    print(f"  ratio hub/relay          {rps['hub'] / rps['relay']:8.2f}")
    print("escalation after the chosen agent fails 150 ms into a request (target: the attempt ends ≤ timeout + 50 ms)")
    for how, label in (("kill", "SIGKILL (last will)"), ("hang", "SIGSTOP (no answer)")):
        e = esc[how]
        print(f"  {label:<24} gave up {e['escalate_ms']:7.1f} ms after the failure; attempt {e['attempt_ms']:7.1f} ms, "
              f"timeout {e['attempt_timeout_ms']:.0f} ms ({e['attempt_ms'] - e['attempt_timeout_ms']:+.1f})")
        print(f"  {'':<24} {e['error'][:90]}")


if __name__ == "__main__":
    main()
