"""The simulator's input files, validated before a replay starts: the fleet (TOML), the trace of
tasks (JSON lines), and whether the energy series cover the trace.

Every problem is reported as ``<file>:<line>: <what>: <why>``, one a line, all of a file's at
once where the checks allow (a rule across devices runs once each device is valid), in a
:class:`SimInputError` that ``sovereign simulate`` prints and exits 2 on. tomllib keeps no
positions, so the fleet's lines are found again by :class:`TomlLines`.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError,
                      field_validator, model_validator)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from ..capability import KNOWN_TASKS, PowerSource, Tier, is_valid_device_id
from ..config import ConfigError
from ..energy.series import Series
from ..router.request import InferRequest
from ..router.route import CloudPrice, RouterConfig
from .toml_lines import Loc, TomlLines


#: At most this many problems of a file are listed (a trace of thousands of bad lines would
#: otherwise bury the first, which is usually the one to fix).
MAX_PROBLEMS = 50


class SimInputError(ConfigError):
    """Bad simulator input. The message is ready to print: one problem a line, each line
    ``<file>:<line>: ...``."""


# -- the rules that pydantic's field constraints do not say --------------------------------------

def _known_task(task: str) -> str:
    if task not in KNOWN_TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(KNOWN_TASKS)})")
    return task


KnownTask = Annotated[str, AfterValidator(_known_task)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Hour = Annotated[int, Field(ge=0, le=24)]


def _problems(title: str, found: Iterable[tuple[Loc, str, object]]) -> None:
    """Raise every (loc, why, value) found as one validation error, each located at its own
    field (a model validator's ValueError would point at the whole model, one problem only)."""
    details = [InitErrorDetails(type=PydanticCustomError("sim_input", "{why}", {"why": why}), loc=loc, input=value)
               for loc, why, value in found]
    if details:
        raise ValidationError.from_exception_data(title, details)


def _is_cloud(device: SimDevice, model: SimModel) -> bool:
    # The router's own test (hub/router/model.py): a cloud runtime, or a device of the cloud tier.
    return model.runtime == "cloud" or device.tier is Tier.large


# -- the fleet file ------------------------------------------------------------------------------

class SimModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    runtime: str
    tasks: list[KnownTask]
    p50_ms: float = Field(gt=0)
    p95_ms: float = Field(gt=0)
    joules: float = Field(default=0, ge=0, description="per call (local models)")
    j_per_token: float | None = Field(default=None, ge=0, description="language models: per generated token, "
                                                                       "instead of per call")
    quality: float = Field(ge=0, le=1)
    #: Per task where a published benchmark for that task differs from the general figure.
    task_quality: dict[str, Fraction] | None = None
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    max_concurrency: int = Field(default=1, ge=1)

    @field_validator("tasks")
    @classmethod
    def _some_task(cls, tasks: list[str]) -> list[str]:
        if not tasks:
            raise ValueError("a model needs at least one task")
        return tasks

    @model_validator(mode="after")
    def _consistent(self) -> SimModel:
        found: list[tuple[Loc, str, object]] = []
        if self.p95_ms < self.p50_ms:
            found.append((("p95_ms",), f"p95_ms {self.p95_ms:g} is below p50_ms {self.p50_ms:g}", self.p95_ms))
        for task in self.task_quality or {}:
            if task not in self.tasks:
                found.append((("task_quality", task), f"{task!r} is not one of this model's tasks "
                                                      f"({', '.join(self.tasks)})", task))
        _problems("SimModel", found)
        return self


class SimDevice(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    id: str
    tier: Tier
    power_source: PowerSource = PowerSource.mains
    battery_wh: float | None = Field(default=None, gt=0)
    battery_pct: float | None = Field(default=None, ge=0, le=100)
    battery_floor_pct: float = Field(default=20, ge=0, le=100)
    idle_w: float = Field(default=0, ge=0)
    active_w: float = Field(default=0, ge=0)
    charge_w: float = Field(default=0, ge=0)
    #: Local hours [start, end) when the device is plugged in (may wrap past midnight).
    plugged_hours: list[tuple[Hour, Hour]] = Field(default_factory=list)
    models: list[SimModel]
    #: Power states (hub/power): how the hub can wake it (none: it never sleeps), what it draws
    #: asleep, how long a wake takes and costs, and the idle time it waits before it may sleep.
    wake: Literal["wol", "ha_switch", "none"] = "none"
    sleep_w: float = Field(default=0, ge=0)
    wake_ms: float = Field(default=15_000, ge=0)
    wake_j: float | None = Field(default=None, ge=0)
    allow_sleep_after_s: float = Field(default=300, ge=0)
    #: Share of wake signals it never answers (a lost packet, a plug switched off at the wall).
    wake_failure_rate: float = Field(default=0, ge=0, le=1)

    @field_validator("id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        if not is_valid_device_id(value):
            raise ValueError(f"{value!r} is not a valid device id: 1 to 64 letters, digits, '_', '.' or '-', "
                             "starting with a letter or digit (it becomes an MQTT topic level)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SimDevice:
        found: list[tuple[Loc, str, object]] = []
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.name in seen:
                found.append((("models", i, "name"), f"duplicate model name {m.name!r} "
                                                     f"(models.{seen[m.name]} has it already)", m.name))
            seen.setdefault(m.name, i)
        if self.power_source is PowerSource.battery:
            if self.battery_wh is None:
                found.append((("battery_wh",), "a battery device needs battery_wh (its capacity in Wh)", None))
        else:
            for key in ("battery_wh", "battery_pct"):
                value = getattr(self, key)
                if value is not None:
                    found.append(((key,), f"only a battery device (power_source = \"battery\") has {key}; "
                                          f"this one's power_source is {self.power_source.value!r}", value))
        if self.wake != "none" and self.sleep_w > self.idle_w:
            found.append((("sleep_w",), f"sleep_w {self.sleep_w} is above idle_w {self.idle_w}: asleep draws "
                                        "less than idle", self.sleep_w))
        for i, (start, end) in enumerate(self.plugged_hours):
            if start == end:
                found.append((("plugged_hours", i), f"[{start}, {end}] is no time at all: start and end hours "
                                                    "must differ", [start, end]))
        _problems("SimDevice", found)
        return self


class SimSite(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    solar_peak_w: float = Field(default=4000, ge=0)
    load_w: float = Field(default=400, ge=0)
    price_per_kwh: float = Field(default=0.25, ge=0)
    export_price_per_kwh: float = Field(default=0.05, ge=0)


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    site: SimSite = Field(default_factory=SimSite)
    # A default so that a file without devices gets the message below, not "Field required".
    devices: list[SimDevice] = Field(default_factory=list, validate_default=True)
    cloud_prices: dict[str, CloudPrice] = Field(default_factory=dict)
    cloud_g_per_kwh: float = Field(default=300, ge=0)
    cloud_j_per_token: float = Field(default=1.0, ge=0)

    @field_validator("devices")
    @classmethod
    def _some_device(cls, devices: list[SimDevice]) -> list[SimDevice]:
        if not devices:
            raise ValueError("no devices: a fleet needs at least one [[devices]] table")
        return devices

    @model_validator(mode="after")
    def _consistent(self) -> FleetFile:
        found: list[tuple[Loc, str, object]] = []
        seen: dict[str, int] = {}
        for i, d in enumerate(self.devices):
            if d.id in seen:
                found.append((("devices", i, "id"), f"duplicate device id {d.id!r} (devices.{seen[d.id]} has it "
                                                    "already)", d.id))
            seen.setdefault(d.id, i)
        # Price every cloud model the way the router will (the fleet's price, its "*", then the
        # built-in list), so an unpriced one is refused here rather than costing nothing in the
        # results; and refuse a price for no model, most likely a misspelt name.
        router = RouterConfig(cloud_prices=self.cloud_prices)
        cloud_models = set()
        for i, d in enumerate(self.devices):
            for j, m in enumerate(d.models):
                if not _is_cloud(d, m):
                    continue
                cloud_models.add(m.name)
                if router.cloud_price(m.name)[0] is None:
                    found.append((("devices", i, "models", j, "name"),
                                  f"cloud model {m.name!r} has no price: add [cloud_prices.{m.name}] with "
                                  "input_per_mtok and output_per_mtok (it is not in the built-in price list)", m.name))
        for name in self.cloud_prices:
            if name != "*" and name not in cloud_models:
                known = ", ".join(sorted(cloud_models)) or "none"
                found.append((("cloud_prices", name), f"prices {name!r}, which is no cloud model of the fleet "
                                                      f"(cloud models: {known})", name))
        _problems("FleetFile", found)
        return self

    def tasks_served(self) -> set[str]:
        return {t for d in self.devices for m in d.models for t in m.tasks}


def load_fleet(path: Path) -> FleetFile:
    """The fleet file, valid, or :class:`SimInputError` listing every problem with its line."""
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SimInputError(f"{path}:{_toml_error_line(str(exc), text)}: invalid TOML: {exc}") from None
    try:
        return FleetFile.model_validate(data)
    except ValidationError as exc:
        where = TomlLines(text)
        problems = sorted(((where.line_of(_loc(e)), _describe(e)) for e in exc.errors()), key=lambda p: p[0])
        raise SimInputError(_report(path, problems)) from None


def _toml_error_line(message: str, text: str) -> int:
    # tomllib says "(at line 3, column 8)", or "(at end of document)".
    m = re.search(r"at line (\d+)", message)
    return int(m.group(1)) if m else max(text.count("\n") + (not text.endswith("\n")), 1)


# -- the trace -----------------------------------------------------------------------------------

class TraceTask(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    t: float = Field(ge=0, description="seconds from the start of the replay")
    task: KnownTask
    text: str | None = None
    ref: str | None = Field(default=None, description="input held elsewhere (an audio clip, an EEG window)")
    input_size: int | None = Field(default=None, ge=0, description="bytes of a ref's input")
    budget_ms: float = Field(default=5000, gt=0)
    quality_floor: float = Field(default=0.0, ge=0, le=1)
    local_only: bool = False
    deadline_s: float | None = Field(default=None, gt=0, description="seconds after t")
    requester: str | None = None
    #: Where the task was read, for messages about it later (coverage of the energy data).
    _origin: tuple[Path, int] | None = PrivateAttr(default=None)

    @property
    def origin(self) -> tuple[Path, int] | None:
        """(trace file, line) the task was read from; None for a task made in code."""
        return self._origin

    def request(self, request_id: str, start: float) -> InferRequest:
        """The request a client would send for it, the replay starting at ``start`` (Unix s)."""
        return InferRequest(id=request_id, task=self.task, text=self.text, ref=self.ref, input_size=self.input_size,
                            budget_ms=self.budget_ms, quality_floor=self.quality_floor, local_only=self.local_only,
                            requester=self.requester,
                            deadline=start + self.t + self.deadline_s if self.deadline_s else None)


def load_trace(path: Path, fleet: FleetFile) -> list[TraceTask]:
    """The trace's tasks, sorted by ``t`` (stable), each knowing its line; or
    :class:`SimInputError` listing every bad line: not a JSON object, a field out of range, a
    task no model of ``fleet`` serves, a requester that is not one of its devices."""
    served = fleet.tasks_served()
    devices = [d.id for d in fleet.devices]
    tasks: list[TraceTask] = []
    problems: list[tuple[int, str]] = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            problems.append((n, f"not JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            problems.append((n, f"a JSON {_json_type(value)}, not an object: each line is one task, "
                                '{"t": ..., "task": ...}'))
            continue
        try:
            task = TraceTask.model_validate(value)
        except ValidationError as exc:
            problems += [(n, _describe(e)) for e in exc.errors()]
            continue
        if task.task not in served:
            problems.append((n, f"task: no model of the fleet does {task.task!r} "
                                f"(the fleet does: {', '.join(sorted(served))})"))
        if task.requester is not None and task.requester not in devices:
            problems.append((n, f"requester: {task.requester!r} is not a device of the fleet "
                                f"(devices: {', '.join(devices)})"))
        task._origin = (path, n)
        tasks.append(task)
    if not tasks and not problems:
        problems.append((1, "no tasks: the trace is empty (one JSON object a line)"))
    if problems:
        raise SimInputError(_report(path, problems))
    return sorted(tasks, key=lambda t: t.t)


def _json_type(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


# -- the energy data under the trace -------------------------------------------------------------

def check_coverage(trace: Sequence[TraceTask], start_ts: float, series: list[tuple[str, Series]], wrap: bool) -> None:
    """Refuse a trace that, started at ``start_ts``, reads a series outside its data (where
    :meth:`Series.at` would repeat the first or last value for days), unless ``wrap``: the
    simulator then reads the series round (:meth:`Series.wrapped`). One line per series and end,
    at the trace line furthest outside."""
    if wrap or not trace:
        return
    first = min(trace, key=lambda t: (t.t, _line(t)))
    last = max(trace, key=lambda t: (t.t, _line(t)))
    problems: list[tuple[Path | str, int, str]] = []
    for name, s in series:
        lo, hi = s.covered()
        covers = f"the data covers {_iso(lo)} to {_iso(hi)}"
        # The starts, in whole minutes, that would fit the whole trace in the data: the first
        # task at or after lo, the last strictly before hi.
        earliest = math.ceil((lo - first.t) / 60) * 60
        latest = math.ceil((hi - last.t) / 60) * 60 - 60
        fix = (f"pass --wrap to read the series round, or a --start from {_iso(earliest)} to {_iso(latest)}"
               if earliest <= latest else
               f"pass --wrap to read the series round (the trace spans {(last.t - first.t) / 86400:.1f} days, "
               "more than the data)")
        after = sum(start_ts + t.t >= hi for t in trace)
        if after:
            problems.append((*_where(last), f"the trace runs past the end of the {name} series: this task is at "
                                            f"{_iso(start_ts + last.t)}, {covers} ({after} tasks past its end); {fix}"))
        before = sum(start_ts + t.t < lo for t in trace)
        if before:
            problems.append((*_where(first), f"the trace starts before the {name} series: this task is at "
                                             f"{_iso(start_ts + first.t)}, {covers} ({before} tasks before its start); "
                                             f"{fix}"))
    if problems:
        raise SimInputError("\n".join(f"{p}:{n}: {why}" for p, n, why in problems))


def _line(task: TraceTask) -> int:
    return task.origin[1] if task.origin else 0


def _where(task: TraceTask) -> tuple[Path | str, int]:
    return task.origin if task.origin else ("<trace>", 1)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


# -- messages ------------------------------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SimInputError(f"{path}:1: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SimInputError(f"{path}:1: cannot read: {exc.strerror or exc}") from None


def _loc(err: ErrorDetails) -> Loc:
    return tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))


def _describe(err: ErrorDetails) -> str:
    """``devices.0.tier: Input should be 'tiny', ... (got 'huge')``: the key, why, and the value
    when it is short and the message does not already quote it."""
    where = ".".join(str(p) for p in _loc(err)) or "<root>"
    why = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    # Our own messages (sim_input, value_error) quote the value already where it helps.
    if err["type"] not in ("sim_input", "value_error", "missing") and got is not None \
            and not isinstance(got, (dict, list, tuple)):
        text = repr(got)
        why += f" (got {text if len(text) <= 60 else text[:60] + '…'})"
    return f"{where}: {why}"


def _report(path: Path, problems: list[tuple[int, str]]) -> str:
    lines = [f"{path}:{n}: {why}" for n, why in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        n = problems[MAX_PROBLEMS][0]
        lines.append(f"{path}:{n}: and {len(problems) - MAX_PROBLEMS} more problems from this line on")
    return "\n".join(lines)
