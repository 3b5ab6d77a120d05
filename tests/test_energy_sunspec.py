"""The SunSpec plugin against pymodbus's own Modbus TCP server.

A real inverter cannot be attached here, so each test runs pymodbus's async TCP server on a free
loopback port holding a register image built by ``tests/sunspec_image.py``; the image follows the
SunSpec model definitions (models 1, 103/113 and 160 from github.com/sunspec/models). The plugin
talks to it over real Modbus TCP, exactly as it would to an inverter.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hub.broker import free_port
from hub.config import ConfigError
from hub.energy.model import InputStatus
from hub.plugin_api import SourceError
from plugins.sunspec import SunSpecReader
from plugins.sunspec import registers as R

from .conftest import wait_for
from .sunspec_image import Image, build_image, u16

UNIT = 1


class InverterSim:
    """A Modbus TCP server (pymodbus) holding a SunSpec image; registers can change while it runs."""

    def __init__(self, image: Image, port: int | None = None) -> None:
        self.image = image
        self.port = port or free_port()
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        device = SimDevice(id=UNIT, simdata=[SimData(self.image.base, values=list(self.image.registers),
                                                     datatype=DataType.REGISTERS)])
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def set(self, address: int, *values: int) -> None:
        assert self.server is not None
        await self.server.async_setValues(UNIT, 16, address, list(values))  # as a write-multiple (0x10) would

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


@pytest.fixture
async def inverters() -> Any:
    started: list[InverterSim] = []

    async def start(image: Image, port: int | None = None) -> InverterSim:
        sim = InverterSim(image, port)
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


def plugin_cfg(port: int, **extra: Any) -> dict[str, Any]:
    return {"sunspec": {"enabled": True, "host": "127.0.0.1", "port": port, "unit_id": UNIT,
                        "poll_interval_s": 0.2, "timeout_s": 2, "retries": 1, **extra}}


def pv(hub: Any) -> Any:
    return hub.energy.inputs.get("pv_w")


def value_is(hub: Any, expected: float) -> bool:
    v = pv(hub)
    return v is not None and v.value == pytest.approx(expected) and not v.error


def error_has(hub: Any, text: str) -> bool:
    v = pv(hub)
    return v is not None and text in v.error


async def test_pv_w_with_scale_factor_follows_the_registers(mosquitto: Any, make_hub: Any, inverters: Any,
                                                            caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="plugins.sunspec")
    sim = await inverters(build_image(w=4235, w_sf=0, mppt_dcw=[2100, 2240]))
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins=plugin_cfg(sim.port)) as hub:
        await wait_for(lambda: value_is(hub, 4235.0), 30, what="pv_w = 4235 W from model 103")
        assert pv(hub).source == "sunspec" and pv(hub).status(time.time()) == InputStatus.ok
        # The common model and the MPPT extension are logged.
        text = caplog.text
        assert "'Sovereign Solar'" in text and "'SS-3P-5000'" in text and "'SN2024-000042'" in text
        assert "models [1, 103, 160]" in text
        assert "DC 4340.0 W from 2 MPPT modules" in text

        # Changing registers in the running server changes the reading; W_SF is applied.
        await sim.set(sim.image.at("W"), 12345, u16(-1))  # W, W_SF: 1234.5 W
        await wait_for(lambda: value_is(hub, 1234.5), 30, what="1234.5 W (W_SF = -1)")
        await sim.set(sim.image.at("W"), 423, 1)  # 4230 W (W_SF = +1)
        await wait_for(lambda: value_is(hub, 4230.0), 30, what="4230 W (W_SF = +1)")
        await sim.set(sim.image.at("W"), u16(-7), 0)  # night: the inverter draws 7 W
        await wait_for(lambda: value_is(hub, 0.0), 30, what="standby draw reported as 0 W production")

        # W 'not implemented' (0x8000): an error, the last good value kept.
        await sim.set(sim.image.at("W"), 1500, 0)
        await wait_for(lambda: value_is(hub, 1500.0), 30, what="1500 W")
        await sim.set(sim.image.at("W"), 0x8000)
        await wait_for(lambda: error_has(hub, "not implemented (0x8000)"), 30, what="not-implemented error")
        v = pv(hub)
        assert v.value == 1500.0 and v.status(time.time()) == InputStatus.invalid
        assert "SunSpec inverter at 127.0.0.1" in v.error

        # An absurd scale factor, then a 'not implemented' one: errors too.
        await sim.set(sim.image.at("W"), 1500, 20)
        await wait_for(lambda: error_has(hub, "W_SF = 20 is absurd"), 30, what="absurd scale factor")
        await sim.set(sim.image.at("W_SF"), 0x8000)
        await wait_for(lambda: error_has(hub, "W_SF is not implemented"), 30, what="unimplemented scale factor")
        assert pv(hub).value == 1500.0

        # Good registers again: the input recovers.
        await sim.set(sim.image.at("W"), 3100, 0)
        await wait_for(lambda: value_is(hub, 3100.0), 30, what="recovery to 3100 W")
        assert pv(hub).status(time.time()) == InputStatus.ok


async def test_no_suns_marker_is_a_clear_error(mosquitto: Any, make_hub: Any, inverters: Any) -> None:
    sim = await inverters(build_image(marker=False))
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins=plugin_cfg(sim.port)) as hub:
        await wait_for(lambda: error_has(hub, "no SunSpec marker 'SunS'"), 30, what="missing-marker error")
        v = pv(hub)
        assert v.value is None and v.status(time.time()) == InputStatus.missing
        # Every candidate base address was tried: 40000 holds zeros, 0 and 50000 are not mapped.
        assert "40000: 0x00000000" in v.error
        assert "0: Modbus exception 2 (illegal data address)" in v.error and "50000: Modbus exception 2" in v.error


async def test_other_base_address_is_found(mosquitto: Any, make_hub: Any, inverters: Any) -> None:
    sim = await inverters(build_image(base=0, w=2750))
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins=plugin_cfg(sim.port)) as hub:
        await wait_for(lambda: value_is(hub, 2750.0), 30, what="pv_w from a map at base 0")


async def test_float_inverter_model(mosquitto: Any, make_hub: Any, inverters: Any) -> None:
    sim = await inverters(build_image(inverter_model=113, w_float=3812.5))
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins=plugin_cfg(sim.port)) as hub:
        await wait_for(lambda: value_is(hub, 3812.5), 30, what="pv_w from float model 113")
        await sim.set(sim.image.at("W"), 0x7FC0, 0x0000)  # NaN: not implemented
        await wait_for(lambda: error_has(hub, "not implemented (NaN)"), 30, what="NaN error")
        assert pv(hub).value == 3812.5


async def test_server_stopped_fails_after_retries_then_recovers(mosquitto: Any, make_hub: Any,
                                                                 inverters: Any, monkeypatch: Any) -> None:
    refused: list[float] = []  # when a connection attempt failed
    connect = SunSpecReader._connect

    async def counting_connect(self: SunSpecReader) -> Any:
        try:
            return await connect(self)
        except SourceError:
            refused.append(time.monotonic())
            raise

    monkeypatch.setattr(SunSpecReader, "_connect", counting_connect)
    sim = await inverters(build_image(w=2000))
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins=plugin_cfg(sim.port)) as hub:
        await wait_for(lambda: value_is(hub, 2000.0), 30, what="first reading")
        await sim.stop()
        await wait_for(lambda: error_has(hub, "cannot connect to 127.0.0.1"), 60, what="connection error")
        v = pv(hub)
        assert v.value == 2000.0 and "refused or unreachable" in v.error
        # The input was marked only after the attempt and its retry (retries = 1) had both failed.
        assert len(refused) >= 2
        # The poller is still alive: the same inverter back on the same port is read again.
        back = await inverters(build_image(w=2500), port=sim.port)
        assert back.port == sim.port
        await wait_for(lambda: value_is(hub, 2500.0), 60, what="reading after the server came back")


async def test_modbus_exception_reading_past_the_image(mosquitto: Any, make_hub: Any, inverters: Any) -> None:
    # Model 103's header says 50 registers but the image stops after 20: reading W is an exception.
    sim = await inverters(build_image(truncate_inverter_to=20))
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins=plugin_cfg(sim.port)) as hub:
        await wait_for(lambda: error_has(hub, "Modbus exception 2 (illegal data address)"), 30,
                       what="Modbus exception error")
        assert pv(hub).value is None


async def test_bad_config_names_the_key(mosquitto: Any, make_hub: Any) -> None:
    for section, key in (({"host": "127.0.0.1", "port": 70000}, "plugins.sunspec.port"),
                         ({}, "plugins.sunspec.host"),
                         ({"host": "127.0.0.1", "unit_id": -1}, "plugins.sunspec.unit_id")):
        with pytest.raises(ConfigError, match=key):
            async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                                plugins={"sunspec": {"enabled": True, **section}}):
                pass


def test_decoding_rules() -> None:
    assert R.scaled(12345, -1) == 1234.5 and R.scaled(423, 1) == 4230.0 and R.scaled(4235, 0) == 4235.0
    assert R.int16(0xFFF9) == -7
    assert R.scale_factor(u16(-2), "X") == -2
    with pytest.raises(SourceError, match="not implemented"):
        R.scale_factor(0x8000, "X")
    with pytest.raises(SourceError, match="absurd"):
        R.scale_factor(u16(-11), "X")
    img = build_image(w=4235, mppt_dcw=[1000, 1500, 2000], dcw_sf=-1)
    regs = img.registers
    assert regs[:2] == list(R.SUNS_MARKER) and regs[-2:] == [0xFFFF, 0]
    assert regs[2:4] == [1, 66] and R.parse_common(regs[4:70])["SN"] == "SN2024-000042"
    assert regs[70:72] == [103, 50] and R.inverter_ac_w(103, regs[72:122]) == 4235.0
    assert regs[122:124] == [160, 8 + 3 * 20]
    assert R.mppt_dc_w(regs[124:124 + 68]) == (450.0, [100.0, 150.0, 200.0])
