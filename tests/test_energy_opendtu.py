"""OpenDTU over MQTT, with the real broker: OpenDTU's topic layout (docs/MQTT_Topics.md of the
OpenDTU project: <base>/ac/power, <base>/<serial>/0/power, <base>/<serial>/status/reachable),
published by a test client as OpenDTU would."""

from __future__ import annotations

from typing import Any

from .conftest import wait_for
from .test_discovery_mqtt import paho_client


async def test_total_and_per_inverter(mosquitto: Any, make_hub: Any) -> None:
    dtu = paho_client(mosquitto.port)

    def pub(topic: str, payload: str) -> None:
        dtu.publish(f"solar/{topic}", payload, qos=1).wait_for_publish()

    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"opendtu": {"broker": mosquitto.url}}) as hub:
        await wait_for(lambda: hub.plugins.statuses["opendtu"].state == "loaded", 30, what="plugin")
        await wait_for(lambda: (pub("ac/power", "812.4"), hub.energy.inputs.get("pv_w"))[1], 30, what="total")
        assert hub.energy.inputs["pv_w"].value == 812.4 and hub.energy.inputs["pv_w"].source == "opendtu"
        pub("ac/power", "NaN")
        pub("ac/power", "lots")
        await wait_for(lambda: "not a number" in hub.energy.inputs["pv_w"].error, 30, what="refusal")
        assert hub.energy.inputs["pv_w"].value == 812.4, "the last good value is kept"
        pub("ac/power", "640")
        await wait_for(lambda: hub.energy.inputs["pv_w"].value == 640, 30, what="recovery")

    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"opendtu": {"broker": mosquitto.url, "serials": ["114182912345", "114182967890"]}}) as hub:
        await wait_for(lambda: hub.plugins.statuses["opendtu"].state == "loaded", 30, what="plugin")

        def sent_and_seen(expected: float) -> bool:
            pv = hub.energy.inputs.get("pv_w")
            return pv is not None and pv.value == expected

        await wait_for(lambda: (pub("114182912345/0/power", "300.5"), sent_and_seen(300.5))[1], 30, what="one inverter")
        pub("114182967890/0/power", "210")
        pub("999999999999/0/power", "5000")  # not ours
        await wait_for(lambda: sent_and_seen(510.5), 30, what="sum of both")
        pub("114182967890/status/reachable", "0")
        await wait_for(lambda: sent_and_seen(300.5), 30, what="unreachable inverter left out")
    dtu.loop_stop()
    dtu.disconnect()
