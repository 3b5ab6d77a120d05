"""Shared fixtures: a real Mosquitto per test, in-process hubs, real agent processes.

Everything listens on 127.0.0.1 on free ports; zeroconf is bound to 127.0.0.1 so multicast never
leaves the loopback interface. Each test uses its own device ids so that mDNS caches of one test
cannot leak into the next.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion

from hub.broker import free_port, port_in_use
from hub.config import parse_config
from hub.runtime import Hub

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@asynccontextmanager
async def serve_app(app: web.Application, shutdown_timeout: float = 60.0) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port (a stand-in for a service that cannot run here);
    yields its base URL, ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Mosquitto:
    """A real broker on a free loopback port. ``restart()`` keeps the port."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        listener = self.extra_conf if "listener" in self.extra_conf else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{self.extra_conf}"
        conf.write_text(f"{listener}\npersistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n"
                        f"max_queued_messages 100000\nuser {os.environ.get('USER') or 'root'}\n")
        self.log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 5
        while not port_in_use(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {(self.workdir / f'mosquitto-{self.port}.log').read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Any:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def hub_config(tmp_path: Path, broker_url: str | None, **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "hub-data"),
        # Tests act as a trusted local client; the auth tests ask for the default ("writes").
        "http": {"port": 0, "require_token": "remote"},
        # The `mosquitto` fixture is an anonymous broker, where nothing binds a device to its id;
        # tests of routing trust every device there. Pairing and the authenticated embedded
        # broker are tested with pairing required (tests/test_trust.py), as the demo runs.
        "pairing": {"required": False},
        "zeroconf": {"interfaces": ["127.0.0.1"]},
    }
    if broker_url:
        data["mqtt"] = {"url": broker_url}
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return parse_config(data, source="test")


@pytest.fixture
def make_hub(tmp_path: Path) -> Callable[..., Any]:
    """``async with make_hub(broker_url, discovery={...}) as hub: ...``"""

    @asynccontextmanager
    async def factory(broker_url: str | None, **overrides: Any) -> AsyncIterator[Hub]:
        async with Hub(hub_config(tmp_path, broker_url, **overrides)) as hub:
            if hub.mqtt is not None:
                await hub.mqtt.wait_connected(10)
            yield hub

    return factory


class AgentProc:
    def __init__(self, argv: list[str], device_id: str, env: dict[str, str] | None = None) -> None:
        self.device_id = device_id
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **env} if env else None, start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return (self.proc.stdout.read() if self.proc.stdout else b"").decode(errors="replace")


@pytest.fixture
def spawn_agent() -> Any:
    """Start a real ``sovereign agent`` process; all are stopped at teardown."""
    procs: list[AgentProc] = []

    def spawn(broker_url: str | None = "mqtt://127.0.0.1:1", profile: str = "laptop", device_id: str | None = None,
              *extra: str, env: dict[str, str] | None = None) -> AgentProc:
        """``broker_url`` None: the agent takes the broker from its pairing (``--pair``)."""
        device_id = device_id or f"t-{profile}-{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "hub", "agent", "--profile", profile, "--id", device_id,
                *(["--broker", broker_url] if broker_url else []),
                "--http-host", "127.0.0.1", "--zeroconf-interface", "127.0.0.1", "--log-level", "warning", *extra]
        proc = AgentProc(argv, device_id, env)
        procs.append(proc)
        return proc

    yield spawn
    for p in procs:
        p.terminate()


def reading(hub: Any, metric: str) -> float | None:
    """A metric's last good value: an input whose polls have only failed so far (a slow answer
    on a busy machine) has an entry, but no value."""
    v = hub.energy.inputs.get(metric)
    return None if v is None else v.value


async def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02,
                   what: str = "condition") -> Any:
    """The predicate's first true value, or AssertionError after ``timeout`` (a failure bound,
    not a wait: keep it generous). The predicate may be a coroutine function (an HTTP call)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def poll(predicate: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.02) -> Any:
    """``wait_for`` for code outside the event loop (threads, plain tests): the predicate's
    first true value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value


@pytest.fixture
def scratch() -> Any:
    d = Path(tempfile.mkdtemp(prefix="sovereign-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def retained_messages(port: int, topic_filter: str, timeout: float = 30.0) -> dict[str, bytes]:
    """The retained messages on ``topic_filter`` now, as a new subscriber gets them.

    No quiet period: once subscribed, the client publishes a marker to a topic of its own on the
    same connection. The broker handles a client's packets in order and sends a subscription's
    retained messages before it reads the next packet, so when the marker comes back every
    retained message is in (``timeout`` is only a failure bound)."""
    got: dict[str, bytes] = {}
    marker = f"sovereign-test/marker/{uuid.uuid4().hex}"
    subscribed, marked = threading.Event(), threading.Event()

    def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        if m.topic == marker:
            marked.set()
        elif m.retain:
            got[m.topic] = m.payload

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"retained-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    c.on_message = on_message
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.subscribe([(topic_filter, 1), (marker, 1)])
        if not subscribed.wait(timeout):
            raise AssertionError(f"no SUBACK for {topic_filter} within {timeout} s")
        c.publish(marker, b"end", qos=1)
        if not marked.wait(timeout):
            raise AssertionError(f"the marker after the retained messages of {topic_filter} never came back")
        return dict(got)
    finally:
        c.loop_stop()
        c.disconnect()


async def retained_until(port: int, topic_filter: str, predicate: Callable[[dict[str, bytes]], Any],
                         timeout: float = 30.0, what: str = "retained messages") -> dict[str, bytes]:
    """Read the retained messages on ``topic_filter`` again until ``predicate`` holds of them
    (e.g. that the hub has cleared some), off the event loop so that the hub keeps running."""
    deadline = time.monotonic() + timeout
    while not predicate(got := await asyncio.to_thread(retained_messages, port, topic_filter)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {sorted(got)}")
        await asyncio.sleep(0.05)
    return got


async def expect_error(ex: Any, c: Any, code: str, *fragments: str) -> Any:
    """An executor's refusal of call ``c``: the ExecError with ``code`` and every fragment in its
    message (the tests of the agent's runtimes)."""
    from hub.agent.executors.base import ExecError
    with pytest.raises(ExecError) as info:
        await ex.run(c)
    assert info.value.code == code, info.value.message
    for f in fragments:
        assert f in info.value.message, f"{f!r} not in {info.value.message!r}"
    return info.value
