"""MQTT username/password and TLS (CA + client certificate) against a real Mosquitto."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import Mosquitto, wait_for


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=sovereign-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)


@pytest.fixture
def secure_broker(tmp_path: Path) -> Any:
    make_pki(tmp_path)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "passwd"), "hubuser", "s3cret-pass"], check=True)
    broker = Mosquitto(tmp_path)
    broker.extra_conf = (f"listener {broker.port} 127.0.0.1\ncafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\n"
                         f"keyfile {tmp_path}/server.key\nrequire_certificate true\n"
                         f"password_file {tmp_path}/passwd\nallow_anonymous false\n")
    broker.start()
    yield broker
    broker.stop()


def _tls(d: Path) -> dict[str, str]:
    return {"ca_file": str(d / "ca.crt"), "cert_file": str(d / "client.crt"), "key_file": str(d / "client.key")}


async def test_tls_and_password(secure_broker: Any, tmp_path: Path, make_hub: Any, spawn_agent: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret-pass\n")
    url = f"mqtts://127.0.0.1:{secure_broker.port}"
    async with make_hub(url, zeroconf={"enabled": False},
                        mqtt={"username": "hubuser", "password_file": str(tmp_path / "mqtt-password"),
                              "tls": _tls(tmp_path)}) as hub:
        assert hub.broker_url == url
        # The start-up probe found that this broker refuses anonymous clients: no warning.
        assert not [w for w in hub.security_warnings if "anonymous" in w]
        monkeypatch.setenv("SOVEREIGN_MQTT_PASSWORD", "s3cret-pass")
        agent = spawn_agent(url, "watch", None, "--no-zeroconf", "--username", "hubuser",
                            "--ca-file", str(tmp_path / "ca.crt"), "--cert-file", str(tmp_path / "client.crt"),
                            "--key-file", str(tmp_path / "client.key"))
        await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online, 60, what="agent over TLS")


async def test_wrong_password_is_reported_not_fatal(secure_broker: Any, tmp_path: Path, make_hub: Any) -> None:
    from hub.config import parse_config
    from hub.runtime import Hub
    cfg = parse_config({"data_dir": str(tmp_path / "d"), "http": {"port": 0}, "zeroconf": {"enabled": False},
                        "mqtt": {"url": f"mqtts://127.0.0.1:{secure_broker.port}", "username": "hubuser",
                                 "password": "wrong", "tls": _tls(tmp_path)}})
    async with Hub(cfg) as hub:
        await wait_for(lambda: hub.mqtt.last_error, 30, what="an authentication error")
        assert not hub.mqtt.connected.is_set()
        assert "not authorized" in hub.mqtt.last_error.lower() or "bad user name" in hub.mqtt.last_error.lower()
