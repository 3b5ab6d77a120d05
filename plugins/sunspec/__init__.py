"""PV production from a SunSpec inverter over Modbus TCP.

    [plugins.sunspec]
    enabled = true
    host = "192.168.1.30"
    port = 502              # Modbus TCP
    unit_id = 1
    base_address = 40000    # where the "SunS" marker is; 0 and 50000 are tried too
    poll_interval_s = 10
    timeout_s = 5
    retries = 2
    stale_after_s = 120

On the first poll (and again after any failure) the plugin finds the ``SunS`` marker, walks the
model chain to the end marker (0xFFFF) and logs the manufacturer, model and serial number from the
common model (1). Every poll then reads the inverter model (101/102/103 integer with scale factor,
or 111/112/113 float) and reports its AC power as ``pv_w``; when the multiple-MPPT extension
(model 160) is present the summed DC power of its modules is logged too. Modbus exceptions,
refused connections, timeouts, a missing marker, "not implemented" values and absurd scale factors
mark ``pv_w`` with the reason (the last good value is kept).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pydantic import Field, field_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from hub.plugin_api import Plugin, PluginConfig, PluginContext, Poller, SourceError

from . import registers as R

EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "server device failure", 5: "acknowledge", 6: "server device busy",
                   10: "gateway path unavailable", 11: "gateway target device failed to respond"}
MAX_MODELS = 100


class SunSpecConfig(PluginConfig):
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    base_address: int = Field(default=40000, ge=0, le=65535)
    poll_interval_s: float = Field(default=10, gt=0, le=3600)
    timeout_s: float = Field(default=5, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    stale_after_s: float = Field(default=120, gt=0, le=86400)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must name the inverter (IP address or host name)")
        return v


class ModbusExceptionResponse(SourceError):
    """The device answered with a Modbus exception (e.g. an address it does not map)."""


def _unit_keyword() -> str:
    """pymodbus renamed ``slave=`` to ``device_id=`` in 3.10; accept either."""
    params = inspect.signature(AsyncModbusTcpClient.read_holding_registers).parameters
    return "device_id" if "device_id" in params else "slave"


class SunSpecReader:
    """One inverter: a Modbus TCP connection, the discovered layout, and readings."""

    def __init__(self, cfg: SunSpecConfig, log: logging.Logger) -> None:
        self.cfg = cfg
        self.log = log
        self.client: AsyncModbusTcpClient | None = None
        self.layout: R.Layout | None = None
        self.info: dict[str, str] = {}
        self.ac_w: float | None = None
        self.dc_w: float | None = None
        self._unit_kw = _unit_keyword()
        self._announced = False

    # -- connection -------------------------------------------------------------------------

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None

    def reset(self) -> None:
        """Forget the connection and the layout: the next poll reconnects and rediscovers (the
        inverter may have rebooted with another map)."""
        self.close()
        self.layout = None

    async def _connect(self) -> AsyncModbusTcpClient:
        if self.client is not None and self.client.connected:
            return self.client
        self.close()
        # retries=0 and no automatic reconnect: the Poller does retries with backoff.
        client = AsyncModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0,
                                      reconnect_delay=0)
        if not await client.connect():
            client.close()
            raise SourceError(f"cannot connect to {self.cfg.host}:{self.cfg.port} (refused or unreachable)")
        self.client = client
        return client

    async def read(self, address: int, count: int) -> list[int]:
        """``count`` holding registers from ``address``, in reads of at most 125."""
        client = await self._connect()
        out: list[int] = []
        while count > 0:
            n = min(count, R.MAX_READ)
            if address + n - 1 > 0xFFFF:
                raise SourceError(f"register range {address}..{address + n - 1} is past the 16-bit address space")
            try:
                rr: Any = await client.read_holding_registers(address, count=n, **{self._unit_kw: self.cfg.unit_id})
            except ModbusException as exc:
                raise SourceError(f"reading {n} registers at {address}: {exc}") from exc
            if rr.isError():
                code = getattr(rr, "exception_code", None)
                raise ModbusExceptionResponse(
                    f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) reading {n} registers at "
                    f"{address} from unit {self.cfg.unit_id}")
            regs = list(rr.registers)
            if len(regs) < n:
                raise SourceError(f"asked for {n} registers at {address}, got {len(regs)}")
            out += regs[:n]
            address += n
            count -= n
        return out

    # -- discovery --------------------------------------------------------------------------

    async def find_base(self) -> int:
        bases = [self.cfg.base_address] + [b for b in R.BASE_ADDRESSES if b != self.cfg.base_address]
        seen = []
        for base in bases:
            try:
                marker = await self.read(base, 2)
            except ModbusExceptionResponse as exc:
                seen.append(f"{base}: {exc}")
                continue
            if tuple(marker) == R.SUNS_MARKER:
                return base
            seen.append(f"{base}: 0x{marker[0]:04x}{marker[1]:04x}")
        raise SourceError("no SunSpec marker 'SunS' (0x53756e53) at base address " + "; ".join(seen)
                          + " — is this a SunSpec device, with Modbus TCP / SunSpec enabled, and the right unit id?")

    async def discover(self) -> R.Layout:
        base = await self.find_base()
        layout = R.Layout(base)
        addr = base + 2
        for _ in range(MAX_MODELS):
            try:
                model_id, length = await self.read(addr, 2)
            except ModbusExceptionResponse as exc:
                if layout.inverter is not None:  # some devices simply stop where the end marker should be
                    self.log.warning("SunSpec chain at %s ends without the end marker (%s)", addr, exc)
                    break
                raise SourceError(f"reading the model header at {addr}: {exc}") from exc
            if model_id == R.END_MODEL_ID:
                break
            layout.models.append(R.ModelRef(model_id, addr + 2, length))
            addr += 2 + length
        else:
            raise SourceError(f"no SunSpec end marker within {MAX_MODELS} models from {base}")
        ids = [m.id for m in layout.models]
        if not ids or ids[0] != R.COMMON:
            self.log.warning("SunSpec chain at %s does not start with the common model 1: %s", base, ids)
        inverter = layout.inverter
        if inverter is None:
            raise SourceError(f"no inverter model (101-103 or 111-113) in the SunSpec chain at {base}; models: {ids}")
        R.check_length(inverter)
        common = layout.first(R.COMMON)
        if common is not None:
            self.info = R.parse_common(await self.read(common.address, min(common.length, R.COMMON_LEN)))
        self.log.info("SunSpec device at %s:%s unit %s, base %s: manufacturer %r, model %r, serial %r, version %r; "
                      "models %s", self.cfg.host, self.cfg.port, self.cfg.unit_id, base, self.info.get("Mn"),
                      self.info.get("Md"), self.info.get("SN"), self.info.get("Vr"), ids)
        self._announced = False
        return layout

    # -- readings ---------------------------------------------------------------------------

    async def poll(self) -> float:
        """AC power in W (the inverter's own sign: negative is its standby draw)."""
        if self.layout is None:
            self.layout = await self.discover()
        inverter = self.layout.inverter
        assert inverter is not None
        needed = R.INV_LEN if inverter.id in R.INVERTER_INT else R.INV_FLOAT_LEN
        body = await self.read(inverter.address, needed)
        ac_w = R.inverter_ac_w(inverter.id, body)
        state = R.inverter_state(inverter.id, body)
        dc_w, modules = None, []
        mppt = self.layout.first(R.MPPT)
        if mppt is not None:
            try:
                dc_w, modules = R.mppt_dc_w(await self.read(mppt.address, mppt.length))
            except ModbusExceptionResponse as exc:
                self.log.warning("MPPT model 160 unreadable: %s", exc)
            except SourceError as exc:  # an unused input reporting 'not implemented'; AC power is still good
                self.log.warning("MPPT model 160: %s", exc)
        self.ac_w, self.dc_w = ac_w, dc_w
        level = logging.DEBUG if self._announced else logging.INFO
        self.log.log(level, "SunSpec %s: AC %.1f W, state %s%s", self.info.get("SN") or self.cfg.host, ac_w, state,
                     "" if dc_w is None else f", DC {dc_w:.1f} W from {len(modules)} MPPT modules "
                     f"({', '.join(f'{w:.1f}' for w in modules)} W)")
        self._announced = True
        return ac_w


async def setup(ctx: PluginContext[SunSpecConfig]) -> None:
    cfg = ctx.config
    reader = SunSpecReader(cfg, ctx.log)
    where = f"SunSpec inverter at {cfg.host}:{cfg.port} unit {cfg.unit_id}"

    async def fetch() -> None:
        try:
            ac_w = await reader.poll()
        except BaseException:  # includes the Poller's timeout (cancellation): start afresh next time
            reader.reset()
            raise
        # pv_w is production: an inverter's negative W (its night-time standby draw) produces 0.
        ctx.energy.report("pv_w", max(ac_w, 0.0), stale_after_s=cfg.stale_after_s)

    def on_failure(reason: str) -> None:
        ctx.energy.fail(["pv_w"], f"{where}: {reason}")

    async def stop() -> None:
        reader.close()

    poller = Poller(fetch, on_failure, interval_s=cfg.poll_interval_s, timeout_s=cfg.timeout_s,
                    retries=cfg.retries, log=ctx.log)
    ctx.on_stop(stop)
    ctx.create_task(poller.run(), name="poll")


PLUGIN = Plugin(
    name="sunspec",
    version="0.1.0",
    description="PV production (pv_w) from a SunSpec inverter over Modbus TCP",
    setup=setup,
    config_model=SunSpecConfig,
    default_enabled=False,
)
