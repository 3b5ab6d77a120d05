"""An embedded Mosquitto, started and supervised by the hub when no broker is configured.

Mosquitto runs as a child process with persistence in the data directory, so that retained
announcements of sleeping devices survive a restart. Nobody connects anonymously: the password
and ACL files are rendered from the hub's trust store and re-read on SIGHUP when a device pairs
or is revoked. Off loopback the listener speaks TLS with a certificate from a CA the hub makes.
If the broker dies it is restarted on the same port with backoff; clients reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import re
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .children import spawn
from .config import BrokerUrl, EmbeddedBrokerConfig, TlsConfig
from .private_file import write_private
from .tls import ensure_broker_certificate

log = logging.getLogger(__name__)

_REFUSED_LOGIN = re.compile(r"Client (\S+) disconnected, not authori[sz]ed")
_DENIED = re.compile(r"Denied (PUBLISH|SUBSCRIBE) from (\S+) .*?'([^']*)'")
_CONNECTION_FROM = re.compile(r"New connection from (\S+) on port")


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


def mosquitto_conf(host: str, port: int, data_dir: Path | None, auth_dir: Path | None = None,
                   tls_dir: Path | None = None, log_denials: bool = False) -> str:
    """The embedded broker's configuration. With ``auth_dir`` (always, from the hub) nobody
    connects without a password from its ``passwd`` file and every identity is confined by its
    ``acl`` file; both are rendered from the trust store (hub/trust.py)."""
    lines = [f"listener {port} {host}"]
    if tls_dir is not None:
        lines += [f"cafile {tls_dir}/ca.pem", f"certfile {tls_dir}/server.pem", f"keyfile {tls_dir}/server.key",
                  "tls_version tlsv1.2"]
    if auth_dir is not None:
        lines += ["allow_anonymous false", f"password_file {auth_dir}/passwd", f"acl_file {auth_dir}/acl"]
    else:
        lines.append("allow_anonymous true")
    lines += [
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        # 'notice' carries refused logins ("... disconnected, not authorised."), counted by the hub.
        "log_type notice",
        # Announce storms and load tests: do not drop QoS 0 for a briefly slow subscriber.
        "max_queued_messages 100000",
        # Request/response traffic is many small packets: without this, Nagle's algorithm meets
        # the peer's delayed ACK and a round trip through the broker costs ~40-90 ms on loopback.
        "set_tcp_nodelay true",
        # Run as whoever runs the hub (mosquitto started as root would otherwise switch to a
        # 'mosquitto' user that cannot write the hub's data directory).
        f"user {getpass.getuser()}",
    ]
    if log_denials:
        lines.append("log_type debug")  # "Denied PUBLISH ..." is a debug line in Mosquitto 2.0
    if data_dir is not None:
        lines += ["persistence true", f"persistence_location {data_dir}/", "autosave_interval 30"]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class BrokerAuth:
    """What the embedded broker needs from the hub's trust store: the two files' contents (called
    again on every reload) and where to report refusals."""

    render: Callable[[], tuple[str, str]]  # → (password file, ACL file)
    on_refusal: Callable[[str, str], None]  # (who, why)


class EmbeddedBroker:
    """``async with EmbeddedBroker(cfg, data_dir) as broker: broker.url``."""

    def __init__(self, cfg: EmbeddedBrokerConfig, data_dir: Path | None, auth: BrokerAuth | None = None) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.auth = auth
        self.port = cfg.port
        self.restarts = 0
        self.reloads = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._conf_path: Path | None = None
        self._auth_dir: Path | None = None
        self.tls_dir: Path | None = None
        self._last_peer = "?"

    @property
    def connect_host(self) -> str:
        """Where the hub itself connects: its own loopback when the broker listens everywhere."""
        return "127.0.0.1" if self.cfg.host in ("0.0.0.0", "::", "") else self.cfg.host

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl(scheme="mqtts" if self.tls_dir else "mqtt", host=self.connect_host, port=self.port)

    def client_tls(self) -> TlsConfig | None:
        """The hub's own TLS settings for connecting to this broker (trusting the hub's CA)."""
        return TlsConfig(ca_file=self.tls_dir / "ca.pem") if self.tls_dir else None

    def ca_pem(self) -> str | None:
        return (self.tls_dir / "ca.pem").read_text() if self.tls_dir else None

    def write_auth(self) -> None:
        """(Re)write the password and ACL files from the trust store (mode 0600)."""
        if self.auth is None or self._auth_dir is None:
            return
        passwd, acl = self.auth.render()
        write_private(self._auth_dir / "passwd", passwd)
        write_private(self._auth_dir / "acl", acl)

    def reload(self) -> None:
        """Apply changed credentials now: Mosquitto re-reads both files on SIGHUP and drops
        connected clients whose login is no longer valid (a revoked device is cut off)."""
        self.write_auth()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)
            self.reloads += 1

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
        conf_dir.chmod(0o700)
        if self.auth is not None:
            self._auth_dir = conf_dir
            self.write_auth()
        if self.cfg.tls_enabled:
            self.tls_dir = conf_dir / "tls"
            await asyncio.to_thread(ensure_broker_certificate, self.tls_dir, self.cfg.host, self.cfg.tls_names)
        self._conf_path = conf_dir / "mosquitto.conf"
        self._conf_path.write_text(mosquitto_conf(self.cfg.host, self.port, state_dir, self._auth_dir, self.tls_dir,
                                                  self.cfg.log_denials))
        try:
            await self._start(binary)
        except BaseException:  # it did not come up, or the hub was stopped meanwhile: no orphan
            await self._terminate()
            raise
        self._supervisor = asyncio.create_task(self._supervise(binary), name="broker supervisor")
        return self

    async def _start(self, binary: str) -> None:
        # spawn: Mosquitto also gets SIGTERM if the hub is killed (hub/children.py).
        self._proc = await spawn(
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
            self._log_line(line.decode(errors="replace").rstrip())

    def _log_line(self, text: str) -> None:
        """Mosquitto's log: refusals become counted rejections, connection chatter (notice)
        stays at debug, anything else is a warning."""
        if m := _CONNECTION_FROM.search(text):
            self._last_peer = m.group(1)  # the refusal line that may follow names no address
        elif _REFUSED_LOGIN.search(text):
            if self.auth is not None:
                self.auth.on_refusal(f"mqtt client at {self._last_peer}", "login refused: unknown user or wrong password")
            return
        elif m := _DENIED.search(text):
            if self.auth is not None:
                self.auth.on_refusal(f"mqtt client {m.group(2)}", f"ACL denied {m.group(1)} on {m.group(3)!r}")
            return
        # Expected: the embedded broker deliberately runs as the hub's own user (see config).
        important = ("Error" in text or "Warning" in text) and "should not be run as root" not in text
        log.log(logging.WARNING if important else logging.DEBUG, "mosquitto: %s", text)

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self._terminate()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
