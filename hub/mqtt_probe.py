"""Does a broker let strangers publish? Asked once at start when the broker is not the hub's own.

A client with no credentials connects (MQTT 5) and publishes one QoS 1 message to a probe topic:
a refused connection or a PUBACK with a failure reason code (Mosquitto 2 answers "not
authorized" for an ACL denial) is a refusal. Runs in a worker thread with paho's own loop: it
happens once, before the hub's connection exists.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from .config import BrokerUrl, TlsConfig
from .mqtt import _tls_context


def _probe(url: BrokerUrl, tls: TlsConfig | None, topic: str, timeout_s: float) -> bool | None:
    done = threading.Event()
    verdict: list[bool | None] = [None]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"sovereign-probe-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)
    ctx = _tls_context(tls, url.scheme)
    if ctx is not None:
        client.tls_set_context(ctx)

    def on_connect(c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            verdict[0] = False
            done.set()
        else:
            c.publish(topic, b"probe", qos=1)

    def on_publish(_c: paho.Client, _u: object, _mid: int, reason: ReasonCode, _p: object) -> None:
        verdict[0] = not reason.is_failure
        done.set()

    def on_disconnect(_c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if verdict[0] is None and reason.is_failure:
            verdict[0] = False  # refused at CONNACK (some brokers just close the socket)
        done.set()

    client.on_connect, client.on_publish, client.on_disconnect = on_connect, on_publish, on_disconnect
    try:
        client.connect(url.host, url.port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return verdict[0]


async def anonymous_publish_allowed(url: BrokerUrl, tls: TlsConfig | None, topic: str,
                                    timeout_s: float = 3.0) -> bool | None:
    """True: anyone may publish; False: refused; None: could not tell (unreachable, timed out)."""
    return await asyncio.to_thread(_probe, url, tls, topic, timeout_s)
