"""Trust (docs/security.md): the embedded broker refuses strangers and confines every login to its
own topics; devices join by pairing; pending devices are never routed to; an mDNS record is a
hint that never rewrites a paired device; TLS with the hub's CA off loopback.

Everything runs against real Mosquitto, real agent processes and real zeroconf on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from zeroconf.asyncio import AsyncServiceInfo

from hub.config import ConfigError, parse_config
from hub.mdns import SERVICE_TYPE, open_zeroconf
from hub.trust import Role, TrustStore, check_mosquitto_hash, mosquitto_hash

from .conftest import ROOT, serve_app, wait_for
from .payloads import capability_doc

SECURE = {"pairing": {"required": True}, "broker": {"port": 0}, "zeroconf": {"interfaces": ["127.0.0.1"]}}


def connect(port: int, login: tuple[str, str] | None = None, tls_ca: Path | None = None,
            will: tuple[str, bytes] | None = None) -> tuple[paho.Client, "queue.Queue[Any]", Any]:
    """A paho client; returns (client, received messages, CONNACK reason code)."""
    got: queue.Queue[Any] = queue.Queue()
    connack: queue.Queue[Any] = queue.Queue()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    if login:
        c.username_pw_set(*login)
    if tls_ca:
        c.tls_set(ca_certs=str(tls_ca))
    if will:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.on_message = lambda _c, _u, m: got.put(m)
    c.on_subscribe = lambda _c, _u, mid, reasons, _p: subacks.put(mid)
    c.user_data_set(subacks := queue.Queue())
    c.on_connect = lambda _c, _u, _f, reason, _p: connack.put(reason)
    c.on_disconnect = lambda _c, _u, _f, reason, _p: connack.put(reason)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got, connack.get(timeout=30)


def subscribe(c: paho.Client, topic: str) -> None:
    """Subscribe and wait for the SUBACK (granted or not), so that what follows is ordered after it."""
    _, mid = c.subscribe(topic, qos=1)
    subacks = c.user_data_get()
    while subacks.get(timeout=30) != mid:
        pass


def close(c: paho.Client) -> None:
    c.disconnect()
    c.loop_stop()


async def api(hub: Any, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, hub.http_url + path, json=body, headers=headers) as r:
            return r.status, await r.json()


def first_line_with(proc: subprocess.Popen[bytes], text: bytes) -> bytes:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        if text in line:
            return line
    return b""


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`sovereign ARGS` in a thread, so that the hub in this event loop can answer it."""
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", *args], capture_output=True,
                                   text=True, timeout=60, cwd=ROOT)


def test_password_hash_is_mosquittos_format(tmp_path: Path) -> None:
    """The hub writes what `mosquitto_passwd` writes ($7$, PBKDF2-SHA512), so Mosquitto checks it."""
    pw = tmp_path / "pw"
    pw.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "alice", "s3cret"], check=True)
    stored = pw.read_text().strip().split(":", 1)[1]
    assert check_mosquitto_hash("s3cret", stored) and not check_mosquitto_hash("wrong", stored)
    assert check_mosquitto_hash("x", mosquitto_hash("x")) and mosquitto_hash("x") != mosquitto_hash("x")


def test_trust_store_is_private_and_codes_are_one_time(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    code = store.new_code(600)
    issued = store.redeem(code.lower().replace("-", " "), "kitchen-tablet")  # typed loosely: still the code
    assert issued.username == "device-kitchen-tablet" and store.is_paired("kitchen-tablet")
    assert issued.password not in (tmp_path / "trust.json").read_text()  # only the hash is kept
    assert (tmp_path / "trust.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="unknown or expired"):
        store.redeem(code, "another")  # spent
    bound = store.new_code(600, device_id="watch")
    with pytest.raises(ValueError, match="pairs 'watch'"):
        store.redeem(bound, "phone")
    with pytest.raises(ValueError, match="unknown or expired"):
        store.redeem(bound, "watch")  # a refused attempt spends the code too
    assert TrustStore(tmp_path / "trust.json").paired_devices() == ["kitchen-tablet"]  # survives a restart
    (tmp_path / "trust.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        TrustStore(tmp_path / "trust.json")


def test_plain_mqtt_off_loopback_is_refused_by_config() -> None:
    with pytest.raises(ConfigError, match="broker.*not loopback: the broker needs TLS"):
        parse_config({"broker": {"host": "0.0.0.0", "tls": "off"}})
    assert parse_config({"broker": {"host": "0.0.0.0"}}).broker.tls_enabled


async def test_embedded_broker_refuses_strangers_and_counts_them(make_hub: Any) -> None:
    async with make_hub(None, **SECURE) as hub:
        port = hub.embedded_broker.port
        for login in (None, ("device-ghost", "guess"), (f"hub-{hub.config.hub_id}", "guess")):
            c, _, reason = connect(port, login)
            close(c)
            assert reason.is_failure and "authori" in str(reason).lower(), (login, reason)
        await wait_for(lambda: hub.state.counters["mqtt_refused"] >= 3, 30, what="refused logins counted")
        status, health = await api(hub, "GET", "/api/health")
        assert any("login refused" in str(r["reason"]) for r in hub.rejections.last)
        # The files the broker reads hold hashes only, and only the hub's user may read them.
        auth_dir = hub.data_dir / "mosquitto"
        for name in ("passwd", "acl"):
            assert (auth_dir / name).stat().st_mode & 0o777 == 0o600
        assert "allow_anonymous false" in (auth_dir / "mosquitto.conf").read_text()


async def test_a_paired_device_is_confined_to_its_own_topics(make_hub: Any) -> None:
    async with make_hub(None, **SECURE) as hub:
        port = hub.embedded_broker.port
        a, b = hub.pairing.pair_device("conf-a"), hub.pairing.pair_device("conf-b")
        b_client, _, reason = connect(port, (b.username, b.password))
        assert not reason.is_failure
        b_client.publish("sovereign/device/conf-b/announce", json.dumps(capability_doc("conf-b")), qos=1,
                         retain=True).wait_for_publish(30)
        rec_b = await wait_for(lambda: hub.registry.get("conf-b"), 30, what="conf-b announced")
        models_b = rec_b.capability.models
        a_client, a_got, reason = connect(port, (a.username, a.password))
        assert not reason.is_failure
        subscribe(a_client, "sovereign/device/conf-b/rpc")  # another device's requests
        subscribe(a_client, "sovereign/reply/#")            # command answers
        forged = capability_doc("conf-b", models=[{**capability_doc("x")["models"][0], "name": "forged"}])
        a_client.publish("sovereign/device/conf-b/announce", json.dumps(forged), qos=1, retain=True).wait_for_publish(30)
        a_client.publish("sovereign/device/conf-b/status", b"offline", qos=1, retain=True).wait_for_publish(30)
        a_client.publish("sovereign/cmd/infer", json.dumps({"task": "echo", "text": "x"}), qos=1).wait_for_publish(30)
        # Its own topics work: proof that the broker delivered what it allowed.
        a_client.publish("sovereign/device/conf-a/announce", json.dumps(capability_doc("conf-a")), qos=1,
                         retain=True).wait_for_publish(30)
        # One connection's messages arrive in order: once conf-a's own announcement is here, the
        # broker has already refused everything it sent before it.
        await wait_for(lambda: hub.registry.get("conf-a"), 30, what="conf-a's own announcement")
        assert hub.registry.get("conf-b").capability.models == models_b and hub.registry.get("conf-b").online
        assert not hub.state.counters.get("rejected_commands")  # the command never reached the hub
        assert a_got.empty()
        close(a_client)
        close(b_client)


async def test_command_replies_go_only_to_the_reply_namespace(make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(None, **SECURE) as hub:
        port = hub.embedded_broker.port
        device = hub.pairing.pair_device("echo-ns")
        spawn_agent(hub.broker_url, "laptop", "echo-ns", "--echo", "--no-zeroconf", "--username", device.username,
                    env={"SOVEREIGN_MQTT_PASSWORD": device.password})
        await wait_for(lambda: (r := hub.registry.get("echo-ns")) and r.online, 60, what="echo device online")
        hub.refresh_fleet()  # route on the fleet as it is now
        me, other = hub.pairing.add_client(Role.client, "me", [], []), hub.pairing.add_client(Role.client, "other", [], [])
        c, got, _ = connect(port, (me.username, me.password))
        o, other_got, _ = connect(port, (other.username, other.password))
        subscribe(c, f"sovereign/reply/{me.username}/#")
        subscribe(c, f"sovereign/reply/{other.username}/#")  # not its own: never delivered
        subscribe(o, f"sovereign/reply/{other.username}/#")

        def ask(reply: str, corr: bytes) -> None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = reply, corr
            c.publish("sovereign/cmd/infer", json.dumps({"task": "echo", "text": "hi"}), qos=1,
                      properties=props).wait_for_publish(30)

        before = hub.state.counters["rejected_commands"]
        ask("sovereign/device/echo-ns/announce", b"1")  # onto a device's announcement: refused
        ask("sovereign/hub/status", b"2")
        ask("sovereign/reply/#", b"3")
        await wait_for(lambda: hub.state.counters["rejected_commands"] >= before + 3, 30, what="three refusals")
        assert hub.registry.get("echo-ns").capability.name != "hi"
        ask(f"sovereign/reply/{me.username}/answers", b"ok")
        msg = await asyncio.to_thread(got.get, True, 30)
        assert msg.topic == f"sovereign/reply/{me.username}/answers" and json.loads(msg.payload)["ok"]
        # An answer aimed at another client's namespace reaches only that client.
        ask(f"sovereign/reply/{other.username}/x", b"cross")
        await asyncio.to_thread(other_got.get, True, 30)
        assert got.empty()
        close(c)
        close(o)


async def test_pairing_with_a_code_end_to_end(make_hub: Any, tmp_path: Path, spawn_agent: Any) -> None:
    async with make_hub(None, **SECURE) as hub:
        status, listing = await api(hub, "GET", "/api/pairing")
        assert status == 200 and listing["required"] and listing["credentials"] == []
        # `sovereign pair` against the running hub (loopback writes are allowed in these tests).
        out = await cli("pair", "--url", hub.http_url, "--device-id", "paired-1", "--json")
        assert out.returncode == 0, out.stderr
        code = json.loads(out.stdout)["code"]
        creds = tmp_path / "creds.json"
        spawn_agent(None, "laptop", "paired-1", "--echo", "--no-zeroconf", "--hub", hub.http_url, "--pair", code,
                    "--credentials", str(creds))
        await wait_for(lambda: (r := hub.registry.get("paired-1")) and r.online and r, 60,
                       what="paired agent online")
        hub.refresh_fleet()  # route on the fleet as it is now
        assert json.loads(creds.read_text())["username"] == "device-paired-1"
        assert creds.stat().st_mode & 0o777 == 0o600
        status, answer = await api(hub, "POST", "/api/infer", {"task": "echo", "text": "paired"})
        assert status == 200 and answer["served_by"]["device"] == "paired-1", answer
        status, doc = await api(hub, "GET", "/api/devices/paired-1")
        assert doc["paired"] and doc["state"] == "online"
        # The code is spent; wrong codes are refused, counted and then rate-limited.
        for attempt in range(hub.config.pairing.max_failures_per_minute):
            status, body = await api(hub, "POST", "/api/pair", {"code": code if attempt == 0 else "AAAA-BBBB-CCCC",
                                                                "device_id": "intruder"})
            assert status == 403 and body["error"]["code"] == "pairing_refused"
        status, body = await api(hub, "POST", "/api/pair", {"code": "AAAA-BBBB-CCCC", "device_id": "intruder"})
        assert status == 429
        assert hub.state.counters["pairing_refused"] == hub.config.pairing.max_failures_per_minute
        assert not hub.trust.is_paired("intruder")
        # Unpairing revokes the login at the broker: the running agent is cut off and stays out.
        out = await cli("devices", "unpair", "paired-1", "--url", hub.http_url)
        assert out.returncode == 0 and "login revoked" in out.stdout, out.stderr
        assert hub.registry.get("paired-1") is None
        await wait_for(lambda: hub.state.counters["mqtt_refused"] >= 1, 30, what="revoked agent refused")
        # It stays out: refused again at its next reconnect, and still not back in the registry.
        refused = hub.state.counters["mqtt_refused"]
        await wait_for(lambda: hub.state.counters["mqtt_refused"] > refused, 30, what="refused again")
        assert hub.registry.get("paired-1") is None
        status, answer = await api(hub, "POST", "/api/infer", {"task": "echo", "text": "after"})
        assert status == 503, answer


async def test_an_unpaired_device_is_pending_and_never_routed(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """On an external broker that lets anyone announce, the hub still routes only to paired ids,
    and says loudly at start that the broker is open."""
    async with make_hub(mosquitto.url, pairing={"required": True}) as hub:
        assert any("anonymous" in w for w in hub.security_warnings)
        status, health = await api(hub, "GET", "/api/health")
        assert any("anonymous" in w for w in health["security_warnings"])
        agent = spawn_agent(mosquitto.url, "laptop", None, "--echo", "--no-zeroconf")
        await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online, 60, what="announcement")
        status, doc = await api(hub, "GET", f"/api/devices/{agent.device_id}")
        assert doc["state"] == "pending" and not doc["paired"]
        assert hub.state.counters["pending_announcements"] >= 1
        status, answer = await api(hub, "POST", "/api/infer", {"task": "echo", "text": "x"})
        assert status == 503 and answer["error"]["code"] == "no_route", answer
        out = await cli("devices", "--url", hub.http_url)
        assert "pending" in out.stdout
        hub.pairing.pair_device(agent.device_id)
        status, answer = await api(hub, "POST", "/api/infer", {"task": "echo", "text": "now"})
        assert status == 200 and answer["served_by"]["device"] == agent.device_id


async def test_a_forged_mdns_record_cannot_rewrite_a_paired_device(make_hub: Any) -> None:
    async with make_hub(None, **SECURE) as hub:
        device_id = f"zc-{uuid.uuid4().hex[:6]}"
        issued = hub.pairing.pair_device(device_id)
        c, _, _ = connect(hub.embedded_broker.port, (issued.username, issued.password))
        c.publish(f"sovereign/device/{device_id}/announce", json.dumps(capability_doc(device_id)), qos=1,
                  retain=True).wait_for_publish(30)
        rec = await wait_for(lambda: hub.registry.get(device_id), 30, what="announced over MQTT")
        real = rec.capability
        forged = capability_doc(device_id, name="forged", models=[{**capability_doc("y")["models"][0], "name": "evil"}])

        from aiohttp import web

        async def capability(request: web.Request) -> web.Response:
            return web.json_response(forged)

        app = web.Application()
        app.router.add_get("/capability", capability)
        async with serve_app(app) as url:
            port = int(url.rsplit(":", 1)[1])
            azc = open_zeroconf(["127.0.0.1"])

            def record(instance: str) -> AsyncServiceInfo:
                return AsyncServiceInfo(SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}",
                                        addresses=[socket.inet_aton("127.0.0.1")], port=port,
                                        properties={"id": device_id, "tier": "small", "v": "1", "http_port": str(port)},
                                        server=f"{instance}.local.")

            # Another instance name claiming the paired id: refused and counted.
            impostor = record(f"impostor-{device_id}")
            await (await azc.async_register_service(impostor))
            await wait_for(lambda: hub.state.counters.get("zeroconf_refused"), 60, what="the impostor refused")
            assert "zeroconf" not in rec.sources
            # The device's own instance name: a hint only — nothing rewritten …
            same_name = record(device_id)
            await (await azc.async_register_service(same_name))
            await wait_for(lambda: "zeroconf" in rec.sources, 60, what="the record seen as a hint")
            assert hub.registry.get(device_id).capability == real
            # … and it does not hold the device up once its MQTT identity says it is gone.
            c.publish(f"sovereign/device/{device_id}/status", b"offline", qos=1, retain=True).wait_for_publish(30)
            await wait_for(lambda: not hub.registry.get(device_id).online, 30, what="offline despite the record")
            close(c)
            for info in (impostor, same_name):
                await (await azc.async_unregister_service(info))
            await azc.async_close()
        assert hub.registry.get(device_id).capability == real


async def test_tls_listener_with_the_hubs_ca(make_hub: Any, tmp_path: Path, spawn_agent: Any) -> None:
    async with make_hub(None, **{**SECURE, "broker": {"port": 0, "tls": "on"}}) as hub:
        broker = hub.embedded_broker
        assert hub.broker_url.startswith("mqtts://127.0.0.1:")
        ca = broker.tls_dir / "ca.pem"
        # Plain MQTT gets nowhere; TLS with the hub's CA and a login does.
        with socket.create_connection(("127.0.0.1", broker.port), 5) as raw:
            raw.sendall(b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x00\x00")  # a CONNECT in clear
            raw.settimeout(5)
            try:
                assert raw.recv(16) == b""  # closed without a CONNACK …
            except ConnectionResetError:
                pass  # … or reset: either way no MQTT in clear
        with pytest.raises(ssl.SSLError):
            connect(broker.port, None, tls_ca=Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"))
        status, code = await api(hub, "POST", "/api/pair/codes", {"device_id": "tls-dev"})
        assert status == 201
        creds = tmp_path / "tls-creds.json"
        spawn_agent(None, "laptop", "tls-dev", "--echo", "--no-zeroconf", "--hub", hub.http_url, "--pair", code["code"],
                    "--credentials", str(creds))
        await wait_for(lambda: (r := hub.registry.get("tls-dev")) and r.online, 60, what="agent over TLS")
        saved = json.loads(creds.read_text())
        assert saved["broker_url"].startswith("mqtts://") and Path(saved["ca_file"]).read_text() == ca.read_text()


async def test_the_readmes_lan_setup_pairs_over_tls(tmp_path: Path) -> None:
    """The README's LAN example as written — broker and API on 0.0.0.0, a token, `sovereign pair`,
    `sovereign agent --hub … --pair CODE` — inside a network namespace this test makes, whose only
    interface is its own loopback: listening on every interface reaches nothing beyond it."""
    ns = f"sov-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("needs root for `ip netns add`")
    procs: list[subprocess.Popen[bytes]] = []

    def in_ns(*argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "hub", *argv], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
        procs.append(proc)
        return proc

    def run_in_ns(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "hub", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        token = uuid.uuid4().hex
        conf = tmp_path / "hub.toml"
        conf.write_text(f'data_dir = "{tmp_path / "data"}"\n[broker]\nhost = "0.0.0.0"\nport = 18883\n'
                        f'[http]\nhost = "0.0.0.0"\nport = 18700\ntoken = "{token}"\n[zeroconf]\nenabled = false\n')
        hub_proc = in_ns("run", "--config", str(conf))
        line = await asyncio.to_thread(first_line_with, hub_proc, b"API")
        assert b"broker mqtts://" in line, line  # TLS turned itself on off loopback
        env = {**os.environ, "SOVEREIGN_TOKEN": token}
        no_token = run_in_ns("pair", "--url", "http://127.0.0.1:18700", env={**env, "SOVEREIGN_TOKEN": ""})
        assert no_token.returncode == 1 and "admin token" in no_token.stderr
        paired = await asyncio.to_thread(run_in_ns, "pair", "--url", "http://127.0.0.1:18700", "--json", env=env)
        assert paired.returncode == 0, paired.stderr
        code = json.loads(paired.stdout)["code"]
        creds = tmp_path / "laptop.json"
        in_ns("agent", "--hub", "http://127.0.0.1:18700", "--pair", code, "--id", "lan-laptop", "--echo",
              "--no-zeroconf", "--credentials", str(creds), "--http-host", "127.0.0.1")
        for _ in range(150):
            answer = await asyncio.to_thread(run_in_ns, "infer", "--task", "echo", "over the LAN", "--url",
                                             "http://127.0.0.1:18700", env=env)
            if answer.returncode == 0:
                break
            await asyncio.sleep(0.2)  # between polls
        assert answer.stdout.strip() == "over the LAN" and "lan-laptop" in answer.stderr, answer.stderr
        saved = json.loads(creds.read_text())
        assert saved["broker_url"] == "mqtts://127.0.0.1:18883" and Path(saved["ca_file"]).is_file()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
