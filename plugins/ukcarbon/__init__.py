"""Grid carbon intensity for Great Britain from the UK Carbon Intensity API (National Grid ESO).

National: ``GET /intensity`` (the current half hour; ``actual`` when published, else
``forecast``) and ``GET /intensity/{from}/fw48h``. Regional (``region_id`` 1–17 or an outward
``postcode``): ``GET /regional/regionid/{id}`` or ``/regional/postcode/{pc}`` and
``GET /regional/intensity/{from}/fw48h/regionid/{id}`` (or ``/postcode/{pc}``), which only carry
forecasts. No key is needed.

    [plugins.ukcarbon]
    region_id = 13                     # optional: London; or postcode = "RG10"
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import aiohttp
from pydantic import Field, model_validator

from hub.plugin_api import ForecastPoint, Plugin, PluginConfig, PluginContext, Poller, SourceError

from .._http import get_json, number

METRIC = "carbon_g_per_kwh"


class UkCarbonConfig(PluginConfig):
    base_url: str = "https://api.carbonintensity.org.uk"
    region_id: int | None = Field(default=None, ge=1, le=17)
    postcode: str | None = Field(default=None, pattern=r"^[A-Za-z]{1,2}[0-9][A-Za-z0-9]?$")
    poll_interval_s: float = Field(default=900, ge=1, le=86400)
    timeout_s: float = Field(default=10, gt=0, le=120)
    retries: int = Field(default=2, ge=0, le=10)
    stale_after_s: float = Field(default=3600, gt=0)

    @model_validator(mode="after")
    def _one_location(self) -> "UkCarbonConfig":
        if self.region_id is not None and self.postcode is not None:
            raise ValueError("give region_id or postcode, not both")
        return self


def parse_time(value: Any, field: str) -> float:
    if not isinstance(value, str):
        raise SourceError(f"field {field} is not a time: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(f"field {field} is not a time: {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def periods(doc: Any, regional: bool) -> list[dict[str, Any]]:
    """The list of half-hour entries, wherever the endpoint nests it."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if regional:
        # /regional/regionid/{id}: data[0].data[]; /regional/intensity/.../fw48h/...: data.data[]
        region = data[0] if isinstance(data, list) and data else data
        data = region.get("data") if isinstance(region, dict) else None
    if not isinstance(data, list) or not data:
        raise SourceError("field data is missing or empty" if not regional else "field data[].data is missing or empty")
    return data


def intensity_now(entry: Any) -> float:
    """The measured intensity when published (national only), else the forecast."""
    intensity = entry.get("intensity") if isinstance(entry, dict) else None
    actual = intensity.get("actual") if isinstance(intensity, dict) else None
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return float(actual)
    return number(entry, "intensity.forecast")


def forecast_points(entries: list[dict[str, Any]]) -> list[ForecastPoint]:
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise SourceError(f"field data.{i} is not an object")
        out.append(ForecastPoint(parse_time(e.get("from"), f"data.{i}.from"), parse_time(e.get("to"), f"data.{i}.to"),
                                 number(e, "intensity.forecast")))
    return out


class UkCarbon:
    def __init__(self, ctx: PluginContext[UkCarbonConfig], session: aiohttp.ClientSession) -> None:
        self.ctx, self.cfg, self.session = ctx, ctx.config, session
        base = self.cfg.base_url.rstrip("/")
        where = (f"regionid/{self.cfg.region_id}" if self.cfg.region_id is not None
                 else f"postcode/{self.cfg.postcode}" if self.cfg.postcode else None)
        self.regional = where is not None
        self.now_url = f"{base}/regional/{where}" if where else f"{base}/intensity"
        self.fw_url = (lambda start: f"{base}/regional/intensity/{start}/fw48h/{where}") if where else \
            (lambda start: f"{base}/intensity/{start}/fw48h")

    async def fetch(self) -> None:
        now_doc = await get_json(self.session, self.now_url)
        entries = periods(now_doc, self.regional)
        value = intensity_now(entries[0])
        start = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        forecast = forecast_points(periods(await get_json(self.session, self.fw_url(start)), self.regional))
        self.ctx.energy.report(METRIC, value, time.time(), stale_after_s=self.cfg.stale_after_s)
        self.ctx.energy.forecast(METRIC, forecast)


async def setup(ctx: PluginContext[UkCarbonConfig]) -> None:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ctx.config.timeout_s),
                                    headers={"Accept": "application/json"})
    ctx.on_stop(session.close)
    source = UkCarbon(ctx, session)
    poller = Poller(source.fetch, lambda why: ctx.energy.fail([METRIC], why), ctx.config.poll_interval_s,
                    ctx.config.timeout_s * 2, ctx.config.retries, ctx.log)
    ctx.create_task(poller.run(), name="poll")


PLUGIN = Plugin(
    name="ukcarbon",
    version="0.1.0",
    description="Great Britain grid carbon intensity and 48 h forecast (UK Carbon Intensity API)",
    setup=setup,
    config_model=UkCarbonConfig,
    default_enabled=False,
)
