"""Round trips of one small request, three ways, on one private Mosquitto, in one run:

  (a) direct     client → echo process (MQTT 5 response topic + correlation data) → client
  (b) relay      client → bare paho relay → echo process → relay → client: the hub's hops with
                 no work done, the physical floor of that topology
  (c) hub        client → hub (sovereign/cmd/infer: validate, route, dispatch, ledger) → agent's
                 echo executor → hub → client

Then sustained requests per second with 10 concurrent clients through (b) and (c), and the time
the hub takes to escalate after the chosen agent dies mid-request (SIGKILL: its last will) or
hangs (SIGSTOP: the attempt's timeout).

The broker is authenticated as the hub's embedded one is (benchmarks/_common.py ``Broker``: no
anonymous clients, password file, ACL file from hub/trust.py) and everyone logs in with its own
identity: the requester as a command client (answers on ``sovereign/reply/<its username>/…``),
the echo and relay processes with logins granting exactly the bench topics they use, the hub
with the hub login (readwrite ``sovereign/#``), the agents as paired devices. The relay path and
the hub path thus pay the same authentication and ACL checks at every hop.

    .venv/bin/python benchmarks/rpc.py [--requests 2000] [--rounds 10] [--seconds 5] [--anonymous] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, Broker, Login, emit, paho_client, summary  # noqa: E402
from hub.trust import Role  # noqa: E402

BODY = json.dumps({"task": "echo", "text": "ping"})
#: What the bench's own processes publish and read, outside the hub's topics.
ECHO_RPC, RELAY_CMD, RELAY_REPLY = "bench/echo/rpc", "bench/relay/cmd", "bench/relay/reply"
#: Command clients get their answers under their own namespace (hub/topics.py reply_root).
REPLIES = "sovereign/reply/+/#"


def client(port: int, name: str, login: Login) -> paho.Client:
    """MQTT 5, TCP_NODELAY like the hub's own connection (hub/mqtt.py), logged in as ``login``."""
    return paho_client(port, name, login)


def requester_login(broker: Broker, name: str = "bench") -> Login:
    """A command client (writes ``sovereign/cmd/#``, reads ``sovereign/reply/<user>/#``) that may
    also send the direct and relay paths' requests."""
    return broker.login(Role.client, name, publish=[ECHO_RPC, RELAY_CMD])


def helper_logins(broker: Broker) -> dict[str, Login]:
    """The echo and relay processes: exactly the bench topics each uses, nothing of the hub's
    (role ``hub`` without the hub's grant: a login whose ACL is only the extra filters)."""
    return {"echo": broker.login(Role.hub, "bench-echo", publish=[REPLIES, RELAY_REPLY], subscribe=[ECHO_RPC]),
            "relay": broker.login(Role.hub, "bench-relay", publish=[ECHO_RPC, REPLIES],
                                  subscribe=[RELAY_CMD, RELAY_REPLY])}


def reply_props(topic: str, corr: bytes) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = topic
    p.CorrelationData = corr
    return p


# -- helper processes ----------------------------------------------------------------------------

def role_echo(port: int) -> None:
    """Answers every request on bench/echo/rpc with its own payload."""
    c = client(port, "echo", Login.from_env())

    def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        c.publish(m.properties.ResponseTopic, m.payload, qos=1, properties=props)

    c.on_message = on_message
    c.subscribe(ECHO_RPC, qos=1)
    print("ready", flush=True)
    c.loop_forever()


def role_relay(port: int) -> None:
    """Forwards bench/relay/cmd to the echo process and the answer back: no parsing, no work."""
    c = client(port, "relay", Login.from_env())
    waiting: dict[bytes, tuple[str, bytes]] = {}
    n = 0

    def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        nonlocal n
        if m.topic == RELAY_CMD:
            n += 1
            corr = str(n).encode()
            waiting[corr] = (m.properties.ResponseTopic, m.properties.CorrelationData)
            c.publish(ECHO_RPC, m.payload, qos=1, properties=reply_props(RELAY_REPLY, corr))
        else:
            topic, corr = waiting.pop(m.properties.CorrelationData)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr
            c.publish(topic, m.payload, qos=1, properties=props)

    c.on_message = on_message
    c.subscribe([(RELAY_CMD, 1), (RELAY_REPLY, 1)])
    print("ready", flush=True)
    c.loop_forever()


def spawn(*argv: str, login: Login = Login(None, None)) -> subprocess.Popen[bytes]:
    """A helper process; its MQTT login goes in its environment, never on its command line."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=login.env())
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


def start_hub(broker: Broker, tmp: Path, hub_id: str = "bench-hub", pairing_required: bool = True,
              sections: str = "", **dispatch: Any) -> tuple[subprocess.Popen[bytes], str]:
    """A hub process on ``broker`` with the hub login. Its data directory gets a copy of the
    broker's trust store: every device login made before this call is a paired device (make
    agents' logins with ``device_login`` first). ``sections``: more TOML for its config."""
    conf = tmp / f"{hub_id}.toml"
    data_dir = tmp / hub_id
    data_dir.mkdir(parents=True, exist_ok=True)
    if broker.trust_file.is_file():
        shutil.copy2(broker.trust_file, data_dir / "trust.json")  # mode 0600 kept
    extra = "".join(f"{k} = {v}\n" for k, v in dispatch.items())
    login = ""
    if broker.hub.username is not None:
        login = f'username = "{broker.hub.username}"\npassword = "{broker.hub.password}"\n'
    # An anonymous broker (--anonymous) has no trust store: nobody is paired there.
    required = pairing_required and broker.auth
    conf.write_text(f'hub_id = "{hub_id}"\ndata_dir = "{data_dir}"\nlog_level = "error"\n'
                    f'[mqtt]\nurl = "{broker.url}"\n{login}'
                    f'[pairing]\nrequired = {"true" if required else "false"}\n'
                    f'[http]\nport = 0\nrequire_token = "remote"\n[zeroconf]\nenabled = false\n[dispatch]\n{extra}'
                    f'{sections}')
    conf.chmod(0o600)  # it holds a password
    proc = spawn("-m", "hub", "run", "--config", str(conf))
    m = re.search(r"API (http://\S+)", ready_line(proc, "API"))
    assert m
    return proc, m.group(1)


def device_login(broker: Broker, profile: str) -> tuple[str, Login]:
    """A device id and its login (hub/trust.py device grants): make it before ``start_hub`` so
    that the hub knows the device as paired."""
    device_id = f"bench-{profile}-{uuid.uuid4().hex[:4]}"
    return device_id, broker.login(Role.device, device_id)


def start_agent(broker: Broker, device: tuple[str, Login], profile: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    device_id, login = device
    # The agent reads its password from SOVEREIGN_MQTT_PASSWORD (and its username from
    # SOVEREIGN_MQTT_USERNAME, the default of --username): both are in the environment.
    proc = spawn("-m", "hub", "agent", "--profile", profile, "--id", device_id, "--broker", broker.url, "--no-zeroconf",
                 "--http-host", "127.0.0.1", "--log-level", "error", *extra, login=login)
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

    def __init__(self, port: int, login: Login) -> None:
        self.c = client(port, "bench", login)
        # Command replies go under the client's own namespace; the hub refuses any other topic.
        self.reply = f"sovereign/reply/{login.username or 'bench'}/{uuid.uuid4().hex[:6]}"
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


def throughput(port: int, login: Login, topic: str, clients: int, seconds: float) -> float:
    """Closed loop: each client sends its next request when the previous one is answered."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        r = Requester(port, login)  # one login, ten connections, ten reply topics
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
    devices = {profile: device_login(broker, profile) for profile in ("laptop", "gpu-box")}
    hub, api = start_hub(broker, tmp, f"esc-{how}", min_attempt_ms=1000)
    laptop, laptop_id = start_agent(broker, devices["laptop"], "laptop", "--seed", "1")
    gpu, gpu_id = start_agent(broker, devices["gpu-box"], "gpu-box", "--seed", "1")
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
            with urllib.request.urlopen(urllib.request.Request(f"{api}/api/infer", body, {"Content-Type": "application/json"}),
                                        timeout=30) as r:
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
    ap.add_argument("--anonymous", action="store_true",
                    help="an anonymous broker without ACLs, as before authentication (for comparison)")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "echo":
        return role_echo(args.port)
    if args.role == "relay":
        return role_relay(args.port)

    tmp = Path(tempfile.mkdtemp(prefix="sovereign-rpc-bench-"))
    with Broker(auth=not args.anonymous) as broker:
        logins = helper_logins(broker)
        me = requester_login(broker)
        watch = device_login(broker, "watch")
        helpers = [spawn(__file__, "--role", r, "--port", str(broker.port), login=logins[r]) for r in ("echo", "relay")]
        for h in helpers:
            ready_line(h)
        hub, api = start_hub(broker, tmp)
        agent, agent_id = start_agent(broker, watch, "watch", "--echo")
        try:
            wait_online(api, [agent_id])
            req = Requester(broker.port, me)
            paths = {"direct": ECHO_RPC, "relay": RELAY_CMD, "hub": "sovereign/cmd/infer"}
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
            rps = {name: throughput(broker.port, me, paths[name], 10, args.seconds) for name in ("relay", "hub")}
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
