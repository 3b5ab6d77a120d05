"""Helpers shared by the benchmark scripts: a private Mosquitto, percentiles, output."""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from hub.broker import free_port, port_in_use
from hub.private_file import write_private
from hub.trust import Role, TrustStore, mosquitto_hash

ROOT = Path(__file__).resolve().parent.parent

#: The hub's login on a benchmark broker: like the hub's own on its embedded broker, readwrite
#: ``sovereign/#`` (and the Home Assistant prefix, since Home Assistant discovery is on by default).
HUB_USERNAME = "hub-bench"
TOPIC_ROOT = "sovereign"
HA_PREFIX = "homeassistant"
#: Where helper processes find their login (never on the command line, where `ps` shows it).
ENV_USERNAME, ENV_PASSWORD = "SOVEREIGN_MQTT_USERNAME", "SOVEREIGN_MQTT_PASSWORD"


class Login(NamedTuple):
    """An MQTT login; both None on an anonymous broker."""

    username: str | None
    password: str | None

    def env(self) -> dict[str, str]:
        """The environment for a helper process (``sovereign agent`` reads the same variables)."""
        env = {k: v for k, v in os.environ.items() if k not in (ENV_USERNAME, ENV_PASSWORD)}
        if self.username is not None and self.password is not None:
            env[ENV_USERNAME], env[ENV_PASSWORD] = self.username, self.password
        return env

    @classmethod
    def from_env(cls) -> "Login":
        return cls(os.environ.get(ENV_USERNAME), os.environ.get(ENV_PASSWORD))


class Broker:
    """Mosquitto on a free loopback port, with queue limits raised for load.

    With ``auth`` (the default) it is set up as the hub sets up its embedded broker: no anonymous
    clients, a ``password_file`` of Mosquitto ``$7$`` hashes and an ``acl_file`` rendered by
    hub/trust.py from a TrustStore in the broker's temporary directory, so that every identity
    may publish and read only its own topics. ``login()`` makes an identity; logins made after
    the start are applied with SIGHUP (Mosquitto re-reads both files)."""

    def __init__(self, auth: bool = True) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sovereign-bench-"))
        self.dir.chmod(0o700)
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.trust = TrustStore(self.dir / "trust.json") if auth else None
        if auth:
            # Made anew for each broker and never stored, as the hub does for its own login.
            self.hub = Login(HUB_USERNAME, secrets.token_urlsafe(32))
            self._hub_hash = mosquitto_hash(self.hub.password or "")
        else:
            self.hub = Login(None, None)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def trust_file(self) -> Path:
        """The trust store with every login made so far: copied into a hub's data directory, it
        makes the hub treat those devices as paired."""
        return self.dir / "trust.json"

    def login(self, role: Role | str, name: str, publish: list[str] | None = None,
              subscribe: list[str] | None = None) -> Login:
        """A new identity with its role's grants (hub/trust.py ``role_grants``) plus ``publish``
        and ``subscribe`` filters; effective at once. ``Role.hub`` identities get only the extra
        filters (the role's grants are the hub's own login, which is ``self.hub``)."""
        return self.logins(role, [name], publish, subscribe)[0]

    def logins(self, role: Role | str, names: list[str], publish: list[str] | None = None,
               subscribe: list[str] | None = None) -> list[Login]:
        """Many identities of one kind at once (one reload of the broker's files)."""
        if self.trust is None:
            return [Login(None, None) for _ in names]
        issued = [self.trust.issue(Role(role), name, publish, subscribe, persist=i == len(names) - 1)
                  for i, name in enumerate(names)]
        if self.proc is not None and issued:
            self._write_auth()
            self.proc.send_signal(signal.SIGHUP)
            self._wait_accepted(issued[-1].username, issued[-1].password)
        return [Login(i.username, i.password) for i in issued]

    def _write_auth(self) -> None:
        assert self.trust is not None
        passwd = self.trust.passwd_text({HUB_USERNAME: self._hub_hash})
        acl = self.trust.acl_text(TOPIC_ROOT, HUB_USERNAME, HA_PREFIX)
        write_private(self.dir / "passwd", passwd)
        write_private(self.dir / "acl", acl)

    def _wait_accepted(self, username: str, password: str, timeout: float = 5.0) -> None:
        """SIGHUP is handled in Mosquitto's main loop: wait until the new login is accepted."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        deadline = time.monotonic() + timeout
        while True:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{uuid.uuid4().hex[:6]}",
                            protocol=paho.MQTTv5)
            c.username_pw_set(username, password)
            ok = False
            try:
                c.connect("127.0.0.1", self.port)
                c.loop_start()
                for _ in range(100):
                    if c.is_connected():
                        ok = True
                        break
                    time.sleep(0.01)
            except OSError:
                pass
            finally:
                c.disconnect()
                c.loop_stop()
            if ok:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"mosquitto did not accept the new login {username}")
            time.sleep(0.05)

    def __enter__(self) -> "Broker":
        conf = self.dir / "mosquitto.conf"
        if self.auth:
            self._write_auth()
            access = f"allow_anonymous false\npassword_file {self.dir / 'passwd'}\nacl_file {self.dir / 'acl'}\n"
        else:
            access = "allow_anonymous true\n"
        conf.write_text(f"listener {self.port} 127.0.0.1\n{access}persistence false\n"
                        f"log_dest stderr\nlog_type error\nmax_queued_messages 1000000\n"
                        f"max_inflight_messages 0\nset_tcp_nodelay true\nuser {getpass.getuser()}\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while not port_in_use("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def paho_client(port: int, name: str, login: Login, *, unique: bool = True, nodelay: bool = True,
                max_inflight: int = 1000, connect: bool = True) -> Any:
    """A paho MQTT 5 client logged in as ``login`` (connected unless ``connect`` is false)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    client_id = f"{name}-{uuid.uuid4().hex[:6]}" if unique else name
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(max_inflight)
    if login.username is not None:
        c.username_pw_set(login.username, login.password)
    if connect:
        c.connect("127.0.0.1", port)
        if nodelay:
            # As the hub's own connection does (hub/mqtt.py): no Nagle delay on small packets.
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 0.5), "p95": pct(values, 0.95),
            "mean": statistics.fmean(values) if values else float("nan")}


def emit(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        json.dump(figures, sys.stdout, indent=2)
        print()
