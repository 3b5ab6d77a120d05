"""Grid carbon intensity from Electricity Maps (API v3): latest and forecast for a zone.

``GET /v3/carbon-intensity/latest?zone=Z`` and ``GET /v3/carbon-intensity/forecast?zone=Z``,
authenticated with the ``auth-token`` header.

    [plugins.electricitymaps]
    zone = "DE"
    token = "…"                        # or the ELECTRICITYMAPS_TOKEN environment variable
"""

from __future__ import annotations

import os
import time
from urllib.parse import quote

import aiohttp
from pydantic import Field, model_validator

from hub.plugin_api import ForecastPoint, Plugin, PluginConfig, PluginContext, Poller, SourceError

from .._http import get_json, number
from ..ukcarbon import parse_time

METRIC = "carbon_g_per_kwh"


class ElectricityMapsConfig(PluginConfig):
    base_url: str = "https://api.electricitymap.org"
    zone: str = Field(min_length=1, max_length=32)
    token: str | None = None
    poll_interval_s: float = Field(default=900, ge=1, le=86400)
    timeout_s: float = Field(default=10, gt=0, le=120)
    retries: int = Field(default=2, ge=0, le=10)
    stale_after_s: float = Field(default=3600, gt=0)

    @model_validator(mode="after")
    def _token(self) -> "ElectricityMapsConfig":
        if not self.token:
            self.token = os.environ.get("ELECTRICITYMAPS_TOKEN") or None
        if not self.token:
            raise ValueError("token is required (or set ELECTRICITYMAPS_TOKEN)")
        return self


def forecast_points(doc: object) -> list[ForecastPoint]:
    items = doc.get("forecast") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise SourceError("field forecast is missing or not a list")
    starts = [parse_time(it.get("datetime") if isinstance(it, dict) else None, f"forecast.{i}.datetime")
              for i, it in enumerate(items)]
    out = []
    for i, item in enumerate(items):
        # Hourly points: each lasts until the next one (an hour for the last).
        end = starts[i + 1] if i + 1 < len(starts) and starts[i + 1] > starts[i] else starts[i] + 3600
        out.append(ForecastPoint(starts[i], end, number(item, "carbonIntensity")))
    return out


async def setup(ctx: PluginContext[ElectricityMapsConfig]) -> None:
    cfg = ctx.config
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                                    headers={"auth-token": cfg.token or ""})
    ctx.on_stop(session.close)
    base, zone = cfg.base_url.rstrip("/"), quote(cfg.zone)

    async def fetch() -> None:
        latest = await get_json(session, f"{base}/v3/carbon-intensity/latest?zone={zone}")
        value = number(latest, "carbonIntensity")
        forecast = forecast_points(await get_json(session, f"{base}/v3/carbon-intensity/forecast?zone={zone}"))
        ctx.energy.report(METRIC, value, time.time(), stale_after_s=cfg.stale_after_s)
        ctx.energy.forecast(METRIC, forecast)

    poller = Poller(fetch, lambda why: ctx.energy.fail([METRIC], why), cfg.poll_interval_s, cfg.timeout_s * 2,
                    cfg.retries, ctx.log)
    ctx.create_task(poller.run(), name="poll")


PLUGIN = Plugin(
    name="electricitymaps",
    version="0.1.0",
    description="Grid carbon intensity and forecast for a zone (Electricity Maps API v3)",
    setup=setup,
    config_model=ElectricityMapsConfig,
    default_enabled=False,
)
