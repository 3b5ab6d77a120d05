"""An embedded Mosquitto, started and supervised by the hub when no broker is configured.

Mosquitto runs as a child process listening on loopback only, with persistence in the data
directory so that retained announcements of sleeping devices survive a restart. If it dies
it is restarted on the same port with backoff; clients reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import shutil
import socket
from pathlib import Path

from .config import BrokerUrl, EmbeddedBrokerConfig

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def mosquitto_conf(host: str, port: int, data_dir: Path | None) -> str:
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        # Announce storms and load tests: do not drop QoS 0 for a briefly slow subscriber.
        "max_queued_messages 100000",
        # Request/response traffic is many small packets: without this, Nagle's algorithm meets
        # the peer's delayed ACK and a round trip through the broker costs ~40-90 ms on loopback.
        "set_tcp_nodelay true",
        # Run as whoever runs the hub (mosquitto started as root would otherwise switch to a
        # 'mosquitto' user that cannot write the hub's data directory).
        f"user {getpass.getuser()}",
    ]
    if data_dir is not None:
        lines += ["persistence true", f"persistence_location {data_dir}/", "autosave_interval 30"]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"


class EmbeddedBroker:
    """``async with EmbeddedBroker(cfg, data_dir) as broker: broker.url``."""

    def __init__(self, cfg: EmbeddedBrokerConfig, data_dir: Path | None) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.port = cfg.port
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._conf_path: Path | None = None

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl(scheme="mqtt", host=self.cfg.host, port=self.port)

    async def __aenter__(self) -> "EmbeddedBroker":
        binary = shutil.which(self.cfg.binary)
        if binary is None:
            raise BrokerError(
                f"no MQTT broker configured and {self.cfg.binary!r} is not installed: "
                "install Mosquitto (Debian: apt-get install mosquitto) or set mqtt.url"
            )
        if self.port == 0:
            self.port = free_port(self.cfg.host)
        elif port_in_use(self.cfg.host, self.port):
            raise BrokerError(
                f"port {self.cfg.host}:{self.port} is already in use: if a broker runs there, set "
                f"mqtt.url = \"mqtt://{self.cfg.host}:{self.port}\"; otherwise set broker.port = 0"
            )
        state_dir = None
        if self.data_dir is not None:
            state_dir = self.data_dir / "mosquitto"
            state_dir.mkdir(parents=True, exist_ok=True)
            conf_dir = state_dir
        else:
            import tempfile
            conf_dir = Path(tempfile.mkdtemp(prefix="sovereign-broker-"))
        self._conf_path = conf_dir / "mosquitto.conf"
        self._conf_path.write_text(mosquitto_conf(self.cfg.host, self.port, state_dir))
        await self._start(binary)
        self._supervisor = asyncio.create_task(self._supervise(binary), name="broker supervisor")
        return self

    async def _start(self, binary: str) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            binary, "-c", str(self._conf_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            # Own process group: a Ctrl-C aimed at the hub must not kill the broker under it;
            # the hub stops the broker itself, after its clients have said goodbye.
            start_new_session=True,
        )
        for _ in range(100):
            if port_in_use(self.cfg.host, self.port):
                log.info("embedded broker listening on %s (pid %d)", self.url, self._proc.pid)
                return
            if self._proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        err = b""
        if self._proc.stderr is not None and self._proc.returncode is not None:
            err = await self._proc.stderr.read()
        raise BrokerError(f"embedded Mosquitto did not start on {self.url}: {err.decode(errors='replace').strip()}")

    async def _supervise(self, binary: str) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._proc is not None
            if self._proc.stderr is not None:
                asyncio.create_task(self._drain(self._proc.stderr))
            code = await self._proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.error("embedded broker exited with %s; restarting in %.1f s", code, backoff)
            await asyncio.sleep(backoff)
            try:
                await self._start(binary)
                backoff = 0.5
            except BrokerError as exc:
                log.error("%s", exc)
                backoff = min(backoff * 2, self.cfg.restart_backoff_max_s)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            text = line.decode(errors="replace").rstrip()
            # Expected: the embedded broker deliberately runs as the hub's own user (see config).
            level = logging.DEBUG if "should not be run as root" in text else logging.WARNING
            log.log(level, "mosquitto: %s", text)

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
