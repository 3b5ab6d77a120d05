"""The Mosquitto the hub starts and supervises when no broker is configured."""

from __future__ import annotations

import json
import signal
import socket
from typing import Any

import pytest

from hub.broker import BrokerError

from .conftest import wait_for
from .test_discovery_mqtt import paho_client
from .payloads import capability_doc


async def test_embedded_broker_is_supervised(make_hub: Any) -> None:
    async with make_hub(None, broker={"port": 0}, zeroconf={"enabled": False}) as hub:
        broker = hub.embedded_broker
        assert broker is not None and hub.broker_url == f"mqtt://127.0.0.1:{broker.port}"
        e1, e2 = hub.pairing.pair_device("e1"), hub.pairing.pair_device("e2")  # the embedded broker refuses strangers
        c = paho_client(broker.port, login=(e1.username, e1.password))
        c.publish("sovereign/device/e1/announce", json.dumps(capability_doc("e1")), qos=1, retain=True).wait_for_publish()
        await wait_for(lambda: hub.registry.get("e1"), 30, what="device via the embedded broker")
        c.loop_stop()
        c.disconnect()
        broker._proc.send_signal(signal.SIGKILL)  # the broker crashes
        await wait_for(lambda: broker.restarts == 1, 30, what="broker restarted")
        await wait_for(lambda: hub.mqtt.connected.is_set() and hub.mqtt.connect_count >= 2, 60, what="hub reconnected")
        # Persistence in the data dir: the retained announcement survived the crash's restart
        # up to the last autosave; a fresh one always works.
        c = paho_client(broker.port, login=(e2.username, e2.password))
        c.publish("sovereign/device/e2/announce", json.dumps(capability_doc("e2")), qos=1).wait_for_publish()
        await wait_for(lambda: hub.registry.get("e2"), 30, what="device after the restart")
        c.loop_stop()
        c.disconnect()


async def test_port_in_use_is_a_clear_error(make_hub: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=rf"127.0.0.1:{port} is already in use: .*mqtt.url"):
            async with make_hub(None, broker={"port": port}):
                pass


async def test_missing_mosquitto_is_a_clear_error(make_hub: Any) -> None:
    with pytest.raises(BrokerError, match="no MQTT broker configured and 'no-such-mosquitto' is not installed"):
        async with make_hub(None, broker={"port": 0, "binary": "no-such-mosquitto"}):
            pass


async def test_http_port_in_use_is_a_clear_error(mosquitto: Any, make_hub: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"cannot listen on http://127.0.0.1:{port}"):
            async with make_hub(mosquitto.url, http={"port": port}, zeroconf={"enabled": False}):
                pass
