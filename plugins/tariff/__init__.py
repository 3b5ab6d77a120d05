"""Electricity prices from the config: a fixed price, optionally overridden by time-of-use periods.

    [plugins.tariff]
    price_per_kwh = 0.245            # currency per kWh, the default rate
    export_price_per_kwh = 0.15      # feed-in
    timezone = "Europe/London"
    [[plugins.tariff.periods]]       # first matching period wins
    start = "00:30"
    end = "04:30"                    # may wrap past midnight ("23:00" → "06:00")
    price_per_kwh = 0.075
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

The price now and the schedule for the next 48 h (as a forecast) are reported every minute.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.plugin_api import ForecastPoint, Plugin, PluginConfig, PluginContext

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Period(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: dtime
    end: dtime
    price_per_kwh: float = Field(ge=-10, le=10)
    days: list[str] = Field(default_factory=lambda: list(DAYS))

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in DAYS]
        if bad:
            raise ValueError(f"unknown day(s) {bad}; use {', '.join(DAYS)}")
        return v

    @model_validator(mode="after")
    def _non_empty(self) -> "Period":
        if self.start == self.end:
            raise ValueError("start and end are equal: the period is empty")
        return self

    def covers(self, local: datetime) -> bool:
        t = local.time()
        if self.start < self.end:
            return DAYS[local.weekday()] in self.days and self.start <= t < self.end
        # Wraps past midnight: the part after midnight belongs to the previous day's period.
        if t >= self.start:
            return DAYS[local.weekday()] in self.days
        return t < self.end and DAYS[(local.weekday() - 1) % 7] in self.days


class TariffConfig(PluginConfig):
    price_per_kwh: float = Field(ge=-10, le=10)
    export_price_per_kwh: float | None = Field(default=None, ge=-10, le=10)
    timezone: str = "UTC"
    periods: list[Period] = Field(default_factory=list)
    horizon_h: float = Field(default=48, gt=0, le=24 * 14)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/London)") from None
        return v


def price_at(cfg: TariffConfig, when: float) -> float:
    local = datetime.fromtimestamp(when, ZoneInfo(cfg.timezone))
    for period in cfg.periods:
        if period.covers(local):
            return period.price_per_kwh
    return cfg.price_per_kwh


def schedule(cfg: TariffConfig, now: float) -> list[ForecastPoint]:
    """The price as intervals from the current minute to the horizon."""
    start = now - now % 60
    end = start + cfg.horizon_h * 3600
    points: list[ForecastPoint] = []
    seg_start, seg_price = start, price_at(cfg, start)
    t = start + 60
    while t < end:
        p = price_at(cfg, t)
        if p != seg_price:
            points.append(ForecastPoint(seg_start, t, seg_price))
            seg_start, seg_price = t, p
        t += 60
    points.append(ForecastPoint(seg_start, end, seg_price))
    return points


async def _run(ctx: PluginContext[TariffConfig]) -> None:
    while True:
        now = time.time()
        ctx.energy.report("price_per_kwh", price_at(ctx.config, now), now, stale_after_s=180)
        if ctx.config.export_price_per_kwh is not None:
            ctx.energy.report("export_price_per_kwh", ctx.config.export_price_per_kwh, now, stale_after_s=180)
        ctx.energy.forecast("price_per_kwh", schedule(ctx.config, now))
        await asyncio.sleep(60 - time.time() % 60 + 0.01)  # on the minute: period edges are on minutes


async def setup(ctx: PluginContext[TariffConfig]) -> None:
    ctx.create_task(_run(ctx), name="tariff")


PLUGIN = Plugin(
    name="tariff",
    version="0.1.0",
    description="Fixed and time-of-use electricity prices from the config",
    setup=setup,
    config_model=TariffConfig,
    default_enabled=False,
)

