"""PV, load, grid and home battery from a Fronius inverter or Datamanager (Solar API v1).

``GET /solar_api/v1/GetPowerFlowRealtimeData.fcgi``: ``Body.Data.Site`` carries ``P_PV``
(production, null at night), ``P_Load`` (negative while consuming), ``P_Grid`` (positive when
importing), ``P_Akku`` (positive when discharging); ``Body.Data.Inverters.*.SOC`` the battery's
state of charge. ``Head.Status.Code`` is 0 when the answer is valid.

    [plugins.fronius]
    url = "http://192.168.1.30"
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from pydantic import Field, field_validator

from hub.plugin_api import Plugin, PluginConfig, PluginContext, Poller, SourceError

from .._http import check_http_url, get_json, number

METRICS = ("pv_w", "load_w", "grid_w", "battery_w", "battery_soc_pct")
PATH = "/solar_api/v1/GetPowerFlowRealtimeData.fcgi"


class FroniusConfig(PluginConfig):
    url: str
    poll_interval_s: float = Field(default=10, ge=1, le=3600)
    timeout_s: float = Field(default=5, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    stale_after_s: float | None = Field(default=None, gt=0)

    _http = field_validator("url")(check_http_url)


def readings(doc: Any) -> dict[str, float]:
    """Our metrics from one power-flow answer (signs converted), or SourceError naming the field."""
    status = doc.get("Head", {}).get("Status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise SourceError("field Head.Status is missing")
    if status.get("Code") != 0:
        raise SourceError(f"Fronius Status.Code {status.get('Code')!r}: "
                          f"{status.get('UserMessage') or status.get('Reason') or 'no reason given'}")
    site = doc.get("Body", {}).get("Data", {}).get("Site") if isinstance(doc.get("Body"), dict) else None
    if not isinstance(site, dict):
        raise SourceError("field Body.Data.Site is missing")
    out: dict[str, float] = {}
    # null means "no such component" (no meter, no battery) or, for P_PV, night.
    out["pv_w"] = 0.0 if site.get("P_PV") is None else number(site, "P_PV")
    if site.get("P_Load") is not None:
        out["load_w"] = -number(site, "P_Load")
    if site.get("P_Grid") is not None:
        out["grid_w"] = number(site, "P_Grid")
    # No battery (or none connected now) means no battery power: say 0 rather than leave an old
    # charging figure counted as surplus until it goes stale.
    out["battery_w"] = 0.0 if site.get("P_Akku") is None else number(site, "P_Akku")
    inverters = doc["Body"]["Data"].get("Inverters")
    if isinstance(inverters, dict):
        socs = [number(inv, "SOC") for inv in inverters.values() if isinstance(inv, dict) and inv.get("SOC") is not None]
        if socs:
            out["battery_soc_pct"] = socs[0]
    return out


async def setup(ctx: PluginContext[FroniusConfig]) -> None:
    cfg = ctx.config
    stale = cfg.stale_after_s or 3 * cfg.poll_interval_s + cfg.timeout_s
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s))
    ctx.on_stop(session.close)

    async def fetch() -> None:
        values = readings(await get_json(session, cfg.url + PATH))
        now = time.time()
        for metric, value in values.items():
            ctx.energy.report(metric, value, now, stale_after_s=stale)

    poller = Poller(fetch, lambda why: ctx.energy.fail(METRICS, why), cfg.poll_interval_s, cfg.timeout_s,
                    cfg.retries, ctx.log)
    ctx.create_task(poller.run(), name="poll")


PLUGIN = Plugin(
    name="fronius",
    version="0.1.0",
    description="Fronius inverter / Datamanager power flow (Solar API v1)",
    setup=setup,
    config_model=FroniusConfig,
    default_enabled=False,
)
