"""Discovery benchmark: announce storm vs a bare paho subscriber, agent start → registry,
hub memory with 1,000 devices.

    .venv/bin/python benchmarks/discovery.py [--devices 1000] [--trials 7] [--agents 8] [--anonymous] [--json]

All traffic stays on 127.0.0.1. Figures are ratios against a baseline measured in the same run,
plus p50/p95: this machine is shared and has 2 cores.

The broker is authenticated as the hub's embedded one is (benchmarks/_common.py ``Broker``: no
anonymous clients, password file, ACL file from hub/trust.py): the hub logs in with the hub login
(readwrite ``sovereign/#``), the storm publisher with a login allowed to publish the devices'
topics, the bare subscriber with one allowed to read them, agents with device logins. Both sides
of the storm ratio pay the same login and ACL checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Broker, Login, emit, paho_client, pct, summary  # noqa: E402

from hub.agent.profiles import PROFILES  # noqa: E402
from hub.broker import free_port  # noqa: E402
from hub.capability import PROTOCOL_VERSION, Capability  # noqa: E402
from hub.config import parse_config  # noqa: E402
from hub.registry import DeviceChanged  # noqa: E402
from hub.runtime import DISCOVERY_QOS, Hub  # noqa: E402
from hub.trust import Role  # noqa: E402

#: The storm's two topic roots: the hub's, and one only the bare subscriber reads.
ROOTS = ("sovereign", "baseline")


def announcements(prefix: str, n: int) -> list[tuple[str, bytes]]:
    p = PROFILES["laptop"]
    out = []
    for i in range(n):
        device_id = f"{prefix}-{i:04d}"
        cap = Capability(v=PROTOCOL_VERSION, id=device_id, name=f"Bench laptop {i}", tier=p.tier,
                         hardware=p.hardware, power=p.power, models=list(p.models))
        out.append((f"sovereign/device/{device_id}/announce", cap.model_dump_json(exclude_none=True).encode()))
    return out


def client(port: int, name: str, login: Login) -> paho.Client:
    c = paho_client(port, name, login, unique=False, nodelay=False, max_inflight=65535, connect=False)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    return c


class Logins:
    """Who takes part, each with its own login (helper processes get theirs in the environment)."""

    def __init__(self, broker: Broker) -> None:
        self.hub = broker.hub
        # The storm publisher stands in for 1,000 devices: a client allowed to publish every
        # device's topics under both roots (role grants of a device would allow only its own).
        self.publisher = broker.login(Role.client, "bench-storm", publish=[f"{r}/device/#" for r in ROOTS])
        self.bare = broker.login(Role.client, "bench-bare", subscribe=[f"{ROOTS[1]}/device/#"])
        self.broker = broker

    def device(self, device_id: str) -> Login:
        return self.broker.login(Role.device, device_id)


def now() -> float:
    """CLOCK_MONOTONIC is system-wide on Linux: timestamps compare across processes."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def publish_all(port: int, login: Login, messages: list[tuple[str, bytes]], retain: bool = False) -> float:
    """Publish everything at QoS 1 as fast as the broker takes it; returns the start time."""
    pub = client(port, f"bench-pub-{os.getpid()}-{time.monotonic_ns()}", login)
    pub.loop_start()
    t0 = now()
    infos = [pub.publish(t, p, qos=1, retain=retain) for t, p in messages]
    for info in infos:
        info.wait_for_publish(30)
    pub.loop_stop()
    pub.disconnect()
    return t0


# Each party of the storm runs in its own process, as devices and the hub do in reality: the
# publisher, and either the bare subscriber or the hub. No GIL is shared between them.

def role_publish(port: int, prefix: str, n: int, root: str) -> None:
    msgs = [(t.replace("sovereign/", f"{root}/", 1), p) for t, p in announcements(prefix, n)]
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    print(publish_all(port, Login.from_env(), msgs), flush=True)


def role_bare(port: int, n: int, root: str) -> None:
    count = [0]
    sub = client(port, f"bench-bare-{os.getpid()}", Login.from_env())

    def on_message(c: paho.Client, _u: Any, _m: Any) -> None:
        count[0] += 1
        if count[0] == n:
            print(now(), flush=True)
            c.disconnect()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: print("ready", flush=True)
    sub.subscribe(f"{root}/device/#", qos=DISCOVERY_QOS)  # the same subscription as the hub's
    sub.loop_forever()


def spawn(role: str, login: Login, *args: object) -> subprocess.Popen[str]:
    """A helper process; its login goes in its environment, not on its command line."""
    proc = subprocess.Popen([sys.executable, __file__, "--role", role, *map(str, args)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=login.env())
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{role} process did not get ready")
    return proc


def go(pub: subprocess.Popen[str]) -> None:
    assert pub.stdin is not None
    pub.stdin.write("go\n")
    pub.stdin.flush()


def storm_bare(port: int, logins: Logins, prefix: str, n: int) -> float:
    sub = spawn("bare", logins.bare, port, n, ROOTS[1])
    pub = spawn("publish", logins.publisher, port, prefix, n, ROOTS[1])
    go(pub)
    t0 = float(pub.stdout.readline())  # type: ignore[union-attr]
    t_end = float(sub.stdout.readline())  # type: ignore[union-attr]
    pub.wait(30)
    sub.wait(30)
    return t_end - t0


async def storm_hub(hub: Hub, port: int, logins: Logins, prefix: str, n: int) -> float:
    done = asyncio.Event()
    count = [0]
    t_end = [0.0]

    def on_change(event: DeviceChanged) -> None:
        if event.added:
            count[0] += 1
            if count[0] == n:
                t_end[0] = now()
                done.set()

    unsubscribe = hub.bus.subscribe(DeviceChanged, on_change)
    pub = await asyncio.to_thread(spawn, "publish", logins.publisher, port, prefix, n, ROOTS[0])
    go(pub)
    try:
        await asyncio.wait_for(done.wait(), 60)
    except asyncio.TimeoutError:
        raise SystemExit(f"hub registered {count[0]}/{n}") from None
    finally:
        unsubscribe()
    t0 = float(await asyncio.to_thread(pub.stdout.readline))  # type: ignore[union-attr]
    await asyncio.to_thread(pub.wait, 30)
    return t_end[0] - t0


def hub_config(broker: Broker, data_dir: str, zeroconf: bool) -> Any:
    mqtt = {"url": broker.url}
    if broker.hub.username is not None:
        mqtt.update(username=broker.hub.username, password=broker.hub.password)
    # Pairing not required: the storm's devices are announced by one publisher, and a paired
    # device would never enter the registry through zeroconf alone (hub/registry.py HINT_SOURCES).
    # The cost per announcement is the same either way: the hub asks whether a device is paired
    # only when it rebuilds the router's fleet snapshot (at most once a second) and in the API.
    return parse_config({"data_dir": data_dir, "mqtt": mqtt, "http": {"port": 0}, "pairing": {"required": False},
                         "zeroconf": {"enabled": zeroconf, "interfaces": ["127.0.0.1"]}}, source="benchmark")


async def bench_storm(broker: Broker, logins: Logins, n: int, trials: int) -> dict[str, Any]:
    """Each trial: a fresh hub (empty registry, as after installing it) takes the storm, and a
    fresh bare subscriber receives the same payloads under a root the hub does not subscribe to.
    The order alternates so that drift on a shared machine hits both alike."""
    bare: list[float] = []
    hubbed: list[float] = []
    for t in range(trials):
        for which in (("bare", "hub") if t % 2 == 0 else ("hub", "bare")):
            if which == "bare":
                bare.append(await asyncio.to_thread(storm_bare, broker.port, logins, f"b{t}", n))
                continue
            with tempfile.TemporaryDirectory() as data_dir:
                async with Hub(hub_config(broker, data_dir, zeroconf=False)) as hub:
                    await hub.mqtt.wait_connected(10)  # type: ignore[union-attr]
                    hubbed.append(await storm_hub(hub, broker.port, logins, f"h{t}", n))
    ratios = [h / b for h, b in zip(hubbed, bare)]
    return {"devices": n, "trials": trials, "bare_s": summary(bare), "hub_s": summary(hubbed),
            "ratio_median": pct(hubbed, 0.5) / pct(bare, 0.5), "ratio_per_trial": ratios}


async def bench_agent_start(broker: Broker, logins: Logins, agents: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {"mqtt": [], "zeroconf": []}
    with tempfile.TemporaryDirectory() as data_dir:
        async with Hub(hub_config(broker, data_dir, zeroconf=True)) as hub:
            await hub.mqtt.wait_connected(10)  # type: ignore[union-attr]
            for path in ("mqtt", "zeroconf"):
                for i in range(agents):
                    device_id = f"bench-{path}-{i}-{os.getpid()}"
                    flags = ["--no-zeroconf"] if path == "mqtt" else ["--no-mqtt", "--zeroconf-interface", "127.0.0.1"]
                    argv = [sys.executable, "-m", "hub", "agent", "--profile", "watch", "--id", device_id,
                            "--broker", broker.url, "--http-host", "127.0.0.1", "--log-level", "warning", *flags]
                    # A device login (username and password in the environment, as `sovereign
                    # agent` reads them); the zeroconf-only agents never use it.
                    env = (logins.device(device_id) if path == "mqtt" else Login(None, None)).env()
                    t0 = time.perf_counter()
                    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True, env=env)
                    try:
                        deadline = t0 + 30
                        while True:
                            rec = hub.registry.get(device_id)
                            if rec is not None and rec.sources.get(path):
                                results[path].append(time.perf_counter() - t0)
                                break
                            if time.perf_counter() > deadline:
                                raise SystemExit(f"agent {device_id} not in the registry after 30 s")
                            await asyncio.sleep(0.002)
                    finally:
                        proc.terminate()
                        await asyncio.to_thread(proc.wait, 10)
    # What a spawn costs before any of our code runs: the interpreter alone, and the imports.
    interpreter, imports = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        interpreter.append(time.perf_counter() - t0)
        out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import hub.agent.agent; "
                              "print(time.perf_counter() - t)"], cwd=ROOT, check=True, capture_output=True, text=True)
        imports.append(float(out.stdout))
    return {"agents": agents, "mqtt_s": summary(results["mqtt"]), "zeroconf_s": summary(results["zeroconf"]),
            "python_interpreter_s": summary(interpreter), "agent_imports_s": summary(imports)}


def bench_memory(broker: Broker, logins: Logins, n: int) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "hub.toml"
        login = ""
        if broker.hub.username is not None:
            login = f'username = "{broker.hub.username}"\npassword = "{broker.hub.password}"\n'
        cfg.write_text(f'data_dir = "{d}/data"\nlog_level = "warning"\n[mqtt]\nurl = "{broker.url}"\n{login}'
                       f'[pairing]\nrequired = false\n[http]\nport = {port}\n[zeroconf]\nenabled = false\n')
        cfg.chmod(0o600)
        proc = subprocess.Popen([sys.executable, "-m", "hub", "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            health = f"http://127.0.0.1:{port}/api/health"

            def get() -> dict[str, Any] | None:
                try:
                    with urllib.request.urlopen(health, timeout=2) as r:
                        return json.load(r)
                except OSError:
                    return None

            deadline = time.monotonic() + 20
            while get() is None:
                if time.monotonic() > deadline:
                    raise SystemExit("hub did not answer")
                time.sleep(0.1)
            rss_idle = psutil.Process(proc.pid).memory_info().rss
            msgs = announcements("mem", n)
            msgs += [(t.replace("/announce", "/status"), b"online") for t, _ in msgs]
            publish_all(broker.port, logins.publisher, msgs, retain=True)
            deadline = time.monotonic() + 60
            while ((h := get()) or {}).get("devices", {}).get("online") != n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"hub has {h and h['devices']} after 60 s")
                time.sleep(0.2)
            time.sleep(1.0)  # let the registry flush
            rss_loaded = psutil.Process(proc.pid).memory_info().rss
        finally:
            proc.terminate()
            proc.wait(10)
    return {"devices": n, "rss_idle_mb": rss_idle / 2**20, "rss_loaded_mb": rss_loaded / 2**20}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--anonymous", action="store_true",
                    help="an anonymous broker without ACLs, as before authentication (for comparison)")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.role == "publish":
        return role_publish(int(rest[0]), rest[1], int(rest[2]), rest[3])
    if args.role == "bare":
        return role_bare(int(rest[0]), int(rest[1]), rest[2])
    print(f"$ {Path(sys.executable).name} benchmarks/discovery.py " + " ".join(sys.argv[1:]), file=sys.stderr)
    with Broker(auth=not args.anonymous) as broker:
        logins = Logins(broker)
        storm = await bench_storm(broker, logins, args.devices, args.trials)
        start = await bench_agent_start(broker, logins, args.agents)
        memory = bench_memory(broker, logins, args.devices)
    figures = {"announce_storm": storm, "agent_start": start, "memory": memory}
    if args.json:
        emit(figures, True)
        return
    ms = lambda s: f"p50 {s['p50'] * 1000:7.1f} ms  p95 {s['p95'] * 1000:7.1f} ms"  # noqa: E731
    print(f"announce storm, {storm['devices']} devices, {storm['trials']} trials (first publish → last in place)")
    print(f"  bare paho subscriber        {ms(storm['bare_s'])}")
    print(f"  hub registry                {ms(storm['hub_s'])}")
    print(f"  ratio hub/bare (median)     {storm['ratio_median']:.2f}   (target <= 1.5)")
    print(f"agent start → in the registry, {start['agents']} agents per path (process spawn → registry entry)")
    print(f"  over MQTT                   {ms(start['mqtt_s'])}")
    print(f"  over zeroconf               {ms(start['zeroconf_s'])}")
    print(f"  python interpreter alone    {ms(start['python_interpreter_s'])}")
    print(f"  agent's imports             {ms(start['agent_imports_s'])}")
    print("hub memory (RSS), separate process")
    print(f"  idle                        {memory['rss_idle_mb']:.1f} MB")
    print(f"  with {memory['devices']} devices           {memory['rss_loaded_mb']:.1f} MB   (target < 150 MB)")


if __name__ == "__main__":
    asyncio.run(main())
