"""Replay recorded grid carbon intensity and solar production as live energy inputs.

For offline use, the demo and simulation. The CSV formats are those of the bundled 2020 data
(``Time,Carbon Intensity`` in gCO2/kWh and ``Time,Solar MW``); the national solar curve is
scaled to the home's peak power. Replay time runs ``speed`` times faster than the clock; the
carbon forecast is the data ahead (a perfect forecast), mapped back onto the clock.

    [plugins.replay]
    speed = 720                      # 30 recorded minutes every 2.5 s
    start = "2020-06-21T00:00:00"    # default: today's date and time, in 2020
    solar_peak_w = 5000
    load_w = 600
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field, field_validator

from hub.plugin_api import ForecastPoint, Plugin, PluginConfig, PluginContext, Series

DATA = Path(__file__).resolve().parent / "data"


class ReplayConfig(PluginConfig):
    carbon_csv: Path | None = Field(default=DATA / "gb_ci_2020.csv")
    solar_csv: Path | None = Field(default=DATA / "gb_solar_2020.csv")
    #: Where in the data the replay starts; default: the current date and time of day in 2020.
    start: datetime | None = None
    speed: float = Field(default=1.0, gt=0, le=100_000)
    report_interval_s: float = Field(default=5.0, gt=0, le=3600)
    solar_peak_w: float = Field(default=5000, ge=0, le=100_000)
    #: A constant house load, so that surplus = PV − load (0: no load_w is reported).
    load_w: float = Field(default=600, ge=0, le=100_000)
    forecast_h: float = Field(default=48, gt=0, le=24 * 14)

    @field_validator("carbon_csv", "solar_csv")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v


def default_start(now: float) -> float:
    d = datetime.fromtimestamp(now, timezone.utc)
    try:
        return d.replace(year=2020).timestamp()
    except ValueError:  # 29 February exists in 2020, but be safe about other calendars
        return d.replace(year=2020, day=28).timestamp()


class Replay:
    """Maps the clock onto data time: data_t = start + (now − t0) × speed."""

    def __init__(self, cfg: ReplayConfig, t0: float) -> None:
        self.cfg = cfg
        self.t0 = t0
        self.start = cfg.start.replace(tzinfo=cfg.start.tzinfo or timezone.utc).timestamp() if cfg.start else default_start(t0)
        self.carbon = Series.load(cfg.carbon_csv, "Carbon Intensity") if cfg.carbon_csv else None
        self.solar = Series.load(cfg.solar_csv, "Solar MW") if cfg.solar_csv else None
        self.solar_max = max(self.solar.values) if self.solar else 0.0
        spans = [s for s in (self.carbon, self.solar) if s]
        self.data_end = min(s.times[-1] for s in spans) if spans else self.start

    def data_time(self, now: float) -> float:
        t = self.start + (now - self.t0) * self.cfg.speed
        if t > self.data_end:  # wrap around so a long demo keeps going
            first = min(s.times[0] for s in (self.carbon, self.solar) if s)
            t = first + (t - first) % (self.data_end - first)
        return t

    def clock_time(self, data_t: float, now: float) -> float:
        return now + (data_t - self.data_time(now)) / self.cfg.speed

    def pv_w(self, data_t: float) -> float | None:
        if self.solar is None or self.solar_max <= 0:
            return None
        return max(0.0, self.solar.at(data_t) / self.solar_max * self.cfg.solar_peak_w)

    def carbon_forecast(self, now: float) -> list[ForecastPoint]:
        if self.carbon is None:
            return []
        d0 = self.data_time(now)
        horizon = self.cfg.forecast_h * 3600
        return [ForecastPoint(self.clock_time(a, now), self.clock_time(b, now), v)
                for a, b, v in self.carbon.window(d0, d0 + horizon)]


async def _run(ctx: PluginContext[ReplayConfig], replay: Replay) -> None:
    last_forecast = -math.inf
    while True:
        now = time.time()
        data_t = replay.data_time(now)
        if replay.carbon is not None:
            ctx.energy.report("carbon_g_per_kwh", replay.carbon.at(data_t), now,
                              stale_after_s=3 * ctx.config.report_interval_s)
            # The forecast moves with the replay: refresh it every recorded half hour.
            if (now - last_forecast) * ctx.config.speed >= 1800 or now - last_forecast >= 300:
                ctx.energy.forecast("carbon_g_per_kwh", replay.carbon_forecast(now))
                last_forecast = now
        pv = replay.pv_w(data_t)
        if pv is not None:
            ctx.energy.report("pv_w", pv, now, stale_after_s=3 * ctx.config.report_interval_s)
            if ctx.config.load_w:
                ctx.energy.report("load_w", ctx.config.load_w, now, stale_after_s=3 * ctx.config.report_interval_s)
        await asyncio.sleep(ctx.config.report_interval_s)


async def setup(ctx: PluginContext[ReplayConfig]) -> None:
    replay = Replay(ctx.config, time.time())  # a bad CSV raises here: the plugin is marked failed, with why
    for name, series in (("carbon", replay.carbon), ("solar", replay.solar)):
        if series is not None and series.skipped:
            ctx.log.warning("%s CSV: %d unreadable rows skipped", name, series.skipped)
    ctx.log.info("replaying from %s at %g× speed",
                 datetime.fromtimestamp(replay.start, timezone.utc).isoformat(), ctx.config.speed)
    ctx.create_task(_run(ctx, replay), name="replay")


PLUGIN = Plugin(
    name="replay",
    version="0.1.0",
    description="Replays recorded grid carbon and solar curves (CSV) as live inputs",
    setup=setup,
    config_model=ReplayConfig,
    default_enabled=False,
)
