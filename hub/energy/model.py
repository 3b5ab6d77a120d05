"""Energy data: the inputs plugins report, and the snapshot the hub derives from them.

Inputs are named metrics with a unit and a plausible range; every reading is checked against
it at the edge (``EnergyStore.report``). The snapshot is an immutable value computed by a pure
function (``hub.energy.snapshot.compute_snapshot``) so that the live hub and the simulator
derive energy modes with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class MetricSpec:
    unit: str
    low: float
    high: float
    description: str


#: Site metrics a plugin may report. The range rejects what no home installation produces
#: (a negative state of charge, 10 MW from a rooftop inverter); ``energy.max_site_power_w``
#: narrows the power ranges further.
METRICS: dict[str, MetricSpec] = {
    "pv_w": MetricSpec("W", 0, 1_000_000, "PV production"),
    "load_w": MetricSpec("W", 0, 1_000_000, "house consumption"),
    "grid_w": MetricSpec("W", -1_000_000, 1_000_000, "grid power, import positive, export negative"),
    "battery_w": MetricSpec("W", -1_000_000, 1_000_000, "home battery power, discharge positive"),
    "battery_soc_pct": MetricSpec("%", 0, 100, "home battery state of charge"),
    "carbon_g_per_kwh": MetricSpec("gCO2/kWh", 0, 2_000, "grid carbon intensity"),
    "price_per_kwh": MetricSpec("currency/kWh", -10, 10, "import price"),
    "export_price_per_kwh": MetricSpec("currency/kWh", -10, 10, "feed-in price"),
}
POWER_METRICS = ("pv_w", "load_w", "grid_w", "battery_w")


class InputStatus(StrEnum):
    ok = "ok"
    stale = "stale"  # the last good value, older than its source's staleness limit
    invalid = "invalid"  # the last reading was refused; the last good value (if any) is kept
    missing = "missing"  # never had a good value


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    start: float  # Unix seconds
    end: float
    value: float


@dataclass(frozen=True, slots=True)
class InputValue:
    """The current state of one metric: the last good value and what happened since."""

    metric: str
    value: float | None
    source: str
    measured_at: float | None
    stale_after_s: float
    error: str = ""  # the latest refusal or failure, kept until a good reading arrives
    error_at: float | None = None

    def status(self, now: float) -> InputStatus:
        if self.value is None or self.measured_at is None:
            return InputStatus.missing
        if self.error and self.error_at is not None and self.error_at >= self.measured_at:
            return InputStatus.stale if now - self.measured_at > self.stale_after_s else InputStatus.invalid
        return InputStatus.stale if now - self.measured_at > self.stale_after_s else InputStatus.ok

    def usable(self, now: float) -> float | None:
        """The value when it may still be relied on (not stale), else None."""
        return self.value if self.status(now) in (InputStatus.ok, InputStatus.invalid) else None


class EnergyMode(StrEnum):
    tiny_only = "tiny_only"  # a device on battery below the low threshold
    prefer_small = "prefer_small"  # a device on battery below the medium threshold
    solar_peak = "solar_peak"  # surplus PV: medium tier and batch work allowed
    clean_grid = "clean_grid"  # low-carbon grid: large (cloud) allowed
    prefer_local = "prefer_local"  # otherwise


class ModeThresholds(BaseModel):
    """When the modes apply. Every threshold is configurable (``[energy.thresholds]``)."""

    model_config = ConfigDict(extra="forbid")
    battery_tiny_only_pct: float = Field(default=20, ge=0, le=100)
    battery_prefer_small_pct: float = Field(default=50, ge=0, le=100)
    solar_peak_surplus_w: float = Field(default=1500, ge=0)
    clean_grid_g_per_kwh: float = Field(default=100, ge=0)
    #: Operational carbon of electricity from one's own panels (0: the sun is already shining;
    #: set ~41 for the IPCC AR5 life-cycle median of rooftop PV).
    pv_g_per_kwh: float = Field(default=0, ge=0)
    #: Round-trip losses charged to energy drawn from a device battery.
    battery_efficiency: float = Field(default=0.9, gt=0, le=1)


class ForecastOut(BaseModel):
    start: float
    end: float
    value: float


class InputOut(BaseModel):
    value: float | None
    unit: str
    source: str
    status: InputStatus
    age_s: float | None
    error: str | None = None


class DevicePower(BaseModel):
    source: str
    battery_pct: float | None = None
    charging: bool | None = None
    on_mains: bool
    mode: EnergyMode
    mode_reasons: list[str]
    #: What one more kWh drawn by this device costs now, in carbon and money.
    marginal_g_per_kwh: float | None
    marginal_price_per_kwh: float | None
    report_age_s: float | None


class EnergySnapshot(BaseModel):
    """``GET /api/energy`` and ``<root>/energy/site``."""

    model_config = ConfigDict(frozen=True)
    now: float
    mode: EnergyMode
    mode_reasons: list[str]
    carbon_g_per_kwh: float | None
    carbon_forecast: list[ForecastOut]
    #: The site's PV production ahead (W), when a source forecasts it: deferral counts the hours
    #: the panels will cover as clean.
    pv_forecast: list[ForecastOut] = []
    price_per_kwh: float | None
    price_forecast: list[ForecastOut]
    export_price_per_kwh: float | None
    pv_w: float | None
    load_w: float | None
    grid_w: float | None
    battery_soc_pct: float | None
    solar_surplus_w: float | None
    #: Marginal carbon and price of the site's electricity now (PV surplus first, then grid).
    site_marginal_g_per_kwh: float | None
    site_marginal_price_per_kwh: float | None
    devices: dict[str, DevicePower]
    inputs: dict[str, InputOut]
