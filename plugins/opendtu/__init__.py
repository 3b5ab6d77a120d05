"""PV production from OpenDTU (Hoymiles micro-inverters) over MQTT.

OpenDTU publishes under a base topic (default ``solar``): ``<base>/ac/power`` is the total AC
power of all inverters; ``<base>/<serial>/0/power`` the AC power of one inverter (channel 0 is
AC; 1–6 are its DC inputs); ``<base>/<serial>/status/reachable`` is 1 or 0. The plugin reports
``pv_w`` from the total, or — when only some inverters are wanted (``serials``) or the total is
not published — from the sum of the reachable inverters' AC power.

    [plugins.opendtu]
    broker = "mqtt://192.168.1.10:1883"   # where OpenDTU publishes (often the hub's own broker)
    prefix = "solar"
"""

from __future__ import annotations

import math
import re
import time


from pydantic import Field, field_validator

from hub.plugin_api import BrokerUrl, Message, MqttLink, MqttOptions, Plugin, PluginConfig, PluginContext


class OpenDtuConfig(PluginConfig):
    broker: str
    username: str | None = None
    password: str | None = None
    prefix: str = Field(default="solar", pattern=r"^[^#+]+$")
    #: Only these inverters (serial numbers); default: all, using the published total.
    serials: list[str] = Field(default_factory=list)
    stale_after_s: float = Field(default=60, gt=0)

    @field_validator("broker")
    @classmethod
    def _url(cls, v: str) -> str:
        BrokerUrl.parse(v)
        return v


class OpenDtu:
    def __init__(self, ctx: PluginContext[OpenDtuConfig]) -> None:
        self.ctx = ctx
        self.prefix = ctx.config.prefix.rstrip("/")
        self.ac_power: dict[str, float] = {}
        self.reachable: dict[str, bool] = {}
        self._inverter = re.compile(rf"^{re.escape(self.prefix)}/([^/]+)/(0/power|status/reachable)$")

    def topics(self) -> list[tuple[str, int]]:
        return [(f"{self.prefix}/ac/power", 0), (f"{self.prefix}/+/0/power", 0), (f"{self.prefix}/+/status/reachable", 0)]

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            value = float(payload.decode("ascii").strip())
            if not math.isfinite(value):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            self.ctx.log.warning("ignoring %s: not a number: %r", topic, payload[:40])
            self.ctx.energy.fail(["pv_w"], f"{topic}: not a number: {payload[:40]!r}")
            return
        serials = self.ctx.config.serials
        if topic == f"{self.prefix}/ac/power":
            if not serials:
                self.report(value)
            return
        m = self._inverter.match(topic)
        if m is None:
            return
        serial, kind = m.groups()
        if serials and serial not in serials:
            return
        if kind == "status/reachable":
            self.reachable[serial] = value >= 1
        else:
            self.ac_power[serial] = value
        if serials:
            self.report(sum(p for s, p in self.ac_power.items() if self.reachable.get(s, True)))

    def report(self, watts: float) -> None:
        self.ctx.energy.report("pv_w", max(0.0, watts), time.time(), stale_after_s=self.ctx.config.stale_after_s)


async def setup(ctx: PluginContext[OpenDtuConfig]) -> None:
    cfg = ctx.config
    dtu = OpenDtu(ctx)

    def on_message(message: Message) -> None:
        dtu.handle(message.topic, message.payload)

    link = MqttLink(MqttOptions(url=BrokerUrl.parse(cfg.broker), client_id=f"sovereign-opendtu-{id(dtu):x}",
                                username=cfg.username, password=cfg.password, subscriptions=dtu.topics()),
                    on_message)
    await link.__aenter__()

    async def stop() -> None:
        await link.__aexit__(None, None, None)

    ctx.on_stop(stop)


PLUGIN = Plugin(
    name="opendtu",
    version="0.1.0",
    description="PV production from OpenDTU over MQTT",
    setup=setup,
    config_model=OpenDtuConfig,
    default_enabled=False,
)

