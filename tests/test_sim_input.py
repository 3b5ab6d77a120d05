"""The simulator's input files (hub/sim/files.py): every rule ends in a message naming the file,
the line and the reason, never a traceback; and a series read round past its data's ends."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hub.config import ConfigError
from hub.energy.series import Series
from hub.sim.files import (MAX_PROBLEMS, FleetFile, SimInputError, TraceTask, check_coverage, load_fleet,
                           load_trace)

from .conftest import ROOT

EXAMPLES = ROOT / "examples"
DATA = ROOT / "plugins" / "replay" / "data"

FLEET = """\
# a small fleet: {braces} and [brackets] in a comment must not confuse the line finder
cloud_g_per_kwh = 300

[site]
load_w = 400

[[devices]]
id = "phone"
tier = "tiny"
power_source = "battery"
battery_wh = 13
plugged_hours = [[23, 7]]
models = [
  # intent on the phone
  { name = "intent-tiny", runtime = "tflite", tasks = ["intent"], p50_ms = 1, p95_ms = 3, quality = 0.8 },
]

[[devices]]
id = "box"
tier = "medium"
models = [
  { name = "llama", runtime = "ollama", tasks = ["qa", "summarize"], p50_ms = 1000, p95_ms = 4000, quality = 0.7 },
  { name = "whisper", runtime = "ollama", tasks = ["transcribe"], p50_ms = 500, p95_ms = 1200, quality = 0.88 },
]
"""


def line_of(text: str, marker: str, nth: int = 1) -> int:
    """The line of the nth occurrence of marker in text."""
    at = -1
    for _ in range(nth):
        at = text.index(marker, at + 1)
    return text.count("\n", 0, at) + 1


def fleet_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(SimInputError) as info:
        load_fleet(path)
    message = str(info.value)
    assert all(line.startswith(f"{path}:") for line in message.splitlines()), message
    return path, message


def expect(message: str, path: Path, line: int, *words: str) -> None:
    """Some line of the message is at path:line and says every word."""
    for row in message.splitlines():
        if row.startswith(f"{path}:{line}: ") and all(w in row for w in words):
            return
    raise AssertionError(f"no line {path}:{line}: with {words!r} in:\n{message}")


# -- the fleet file ------------------------------------------------------------------------------

def test_the_base_fleet_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    fleet = load_fleet(path)
    assert [d.id for d in fleet.devices] == ["phone", "box"]
    assert fleet.tasks_served() == {"intent", "qa", "summarize", "transcribe"}


def test_the_error_is_a_config_error(tmp_path: Path) -> None:
    fleet_error(tmp_path, FLEET.replace('tier = "medium"', 'tier = "huge"'))
    with pytest.raises(ConfigError):
        load_fleet(tmp_path / "fleet.toml")
    assert issubclass(SimInputError, ConfigError)


def test_unknown_key(tmp_path: Path) -> None:
    text = FLEET.replace('tier = "medium"', 'tier = "medium"\ncolour = "blue"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "colour"), "devices.1.colour", "Extra inputs are not permitted")


def test_unknown_key_in_a_model_and_at_the_top(tmp_path: Path) -> None:
    text = FLEET.replace("p50_ms = 500,", "p50_ms = 500, colour = 1,").replace("cloud_g_per_kwh", "cloud_g_per_kwhr")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "colour"), "devices.1.models.1.colour", "Extra inputs")
    expect(message, path, 2, "cloud_g_per_kwhr", "Extra inputs")


def test_wrong_type(tmp_path: Path) -> None:
    text = FLEET.replace("p50_ms = 1000", 'p50_ms = "fast"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, '"fast"'), "devices.1.models.0.p50_ms", "valid number", "'fast'")


def test_tier_must_be_a_tier(tmp_path: Path) -> None:
    text = FLEET.replace('tier = "medium"', 'tier = "huge"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "huge"), "devices.1.tier", "'tiny', 'small', 'medium' or 'large'", "'huge'")


def test_power_source_must_be_a_power_source(tmp_path: Path) -> None:
    text = FLEET.replace('power_source = "battery"\nbattery_wh = 13', 'power_source = "solr"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "solr"), "devices.0.power_source", "'battery', 'mains', 'solar' or 'ups'",
           "'solr'")


def test_duplicate_device_id(tmp_path: Path) -> None:
    text = FLEET.replace('id = "box"', 'id = "phone"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, 'id = "phone"', 2), "devices.1.id", "duplicate device id 'phone'")


def test_duplicate_model_name(tmp_path: Path) -> None:
    text = FLEET.replace('name = "whisper"', 'name = "llama"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, 'name = "llama"', 2), "devices.1.models.1.name", "duplicate model name 'llama'")


def test_invalid_device_id(tmp_path: Path) -> None:
    text = FLEET.replace('id = "box"', 'id = "my box/1"')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "my box"), "devices.1.id", "'my box/1' is not a valid device id")


def test_p95_below_p50(tmp_path: Path) -> None:
    text = FLEET.replace("p95_ms = 1200", "p95_ms = 400")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "p95_ms = 400,"), "devices.1.models.1.p95_ms", "p95_ms 400 is below p50_ms 500")


@pytest.mark.parametrize("field", ["p50_ms", "p95_ms"])
def test_latencies_must_be_positive(tmp_path: Path, field: str) -> None:
    text = FLEET.replace("p50_ms = 1, p95_ms = 3", "p50_ms = 0, p95_ms = 0")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "p50_ms = 0"), f"devices.0.models.0.{field}", "greater than 0")


def test_unknown_task(tmp_path: Path) -> None:
    text = FLEET.replace('tasks = ["qa", "summarize"]', 'tasks = ["qa", "sumarize"]')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "sumarize"), "devices.1.models.0.tasks.1", "unknown task 'sumarize'", "known:")


def test_model_without_tasks(tmp_path: Path) -> None:
    text = FLEET.replace('tasks = ["transcribe"]', "tasks = []")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "tasks = []"), "devices.1.models.1.tasks", "at least one task")


def test_task_quality_key_not_a_task_of_the_model(tmp_path: Path) -> None:
    text = FLEET.replace("quality = 0.7 }", "quality = 0.7, task_quality = { qa = 0.8, code = 0.9 } }")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "code = 0.9"), "devices.1.models.0.task_quality.code",
           "'code' is not one of this model's tasks (qa, summarize)")
    assert "task_quality.qa" not in message


def test_task_quality_value_out_of_range(tmp_path: Path) -> None:
    text = FLEET.replace("quality = 0.7 }", "quality = 0.7, task_quality = { qa = 1.5 } }")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "qa = 1.5"), "devices.1.models.0.task_quality.qa", "less than or equal to 1")


def test_battery_device_needs_battery_wh(tmp_path: Path) -> None:
    text = FLEET.replace("battery_wh = 13\n", "")
    path, message = fleet_error(tmp_path, text)
    # The key is missing: the device's table header is the line to look at.
    expect(message, path, line_of(text, "[[devices]]"), "devices.0.battery_wh", "a battery device needs battery_wh")


@pytest.mark.parametrize("key", ["battery_wh", "battery_pct"])
def test_only_battery_devices_have_a_battery(tmp_path: Path, key: str) -> None:
    text = FLEET.replace('tier = "medium"', f'tier = "medium"\n{key} = 50')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, f"{key} = 50"), f"devices.1.{key}", "only a battery device",
           "power_source is 'mains'")


def test_plugged_hours_in_a_day(tmp_path: Path) -> None:
    text = FLEET.replace("plugged_hours = [[23, 7]]", "plugged_hours = [\n  [23, 25],\n  [-1, 3],\n]")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "[23, 25]"), "devices.0.plugged_hours.0.1", "less than or equal to 24")
    expect(message, path, line_of(text, "[-1, 3]"), "devices.0.plugged_hours.1.0", "greater than or equal to 0")


def test_plugged_hours_start_is_not_end(tmp_path: Path) -> None:
    text = FLEET.replace("plugged_hours = [[23, 7]]", "plugged_hours = [[23, 7], [9, 9]]")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "plugged_hours"), "devices.0.plugged_hours.1",
           "start and end hours must differ")


CLOUD = """
[[devices]]
id = "cloud"
tier = "large"
models = [
  { name = "claude-haiku", runtime = "cloud", tasks = ["qa"], p50_ms = 1200, p95_ms = 3000, quality = 0.8 },
]
"""


def test_cloud_model_needs_a_price(tmp_path: Path) -> None:
    text = FLEET + CLOUD
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "claude-haiku"), "devices.2.models.0.name", "cloud model 'claude-haiku' has no "
           "price", "[cloud_prices.claude-haiku]")


def test_cloud_prices_name_fleet_models(tmp_path: Path) -> None:
    priced = '[cloud_prices.claude-haiku]\ninput_per_mtok = 0.8\noutput_per_mtok = 4\n'
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET + CLOUD + priced)
    assert load_fleet(path).cloud_prices["claude-haiku"].output_per_mtok == 4
    # "*" prices any cloud model; a model of the built-in price list needs no price at all.
    path.write_text(FLEET + CLOUD + '[cloud_prices."*"]\ninput_per_mtok = 1\noutput_per_mtok = 5\n')
    load_fleet(path)
    path.write_text(FLEET + CLOUD.replace("claude-haiku", "claude-3-5-haiku-latest"))
    load_fleet(path)
    # A price for no model of the fleet is most likely a misspelt name.
    text = FLEET + CLOUD + priced + '[cloud_prices.claude-haku]\ninput_per_mtok = 0.8\noutput_per_mtok = 4\n'
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "[cloud_prices.claude-haku]"), "cloud_prices.claude-haku",
           "no cloud model of the fleet (cloud models: claude-haiku)")


def test_cloud_price_fields(tmp_path: Path) -> None:
    text = FLEET + CLOUD + '[cloud_prices.claude-haiku]\ninput_per_mtok = 0.8\n'
    path, message = fleet_error(tmp_path, text)
    # The key is missing: its table's header is the line.
    expect(message, path, line_of(text, "[cloud_prices.claude-haiku]"), "cloud_prices.claude-haiku.output_per_mtok",
           "Field required")


def test_at_least_one_device(tmp_path: Path) -> None:
    path, message = fleet_error(tmp_path, "cloud_g_per_kwh = 300\n")
    expect(message, path, 1, "devices", "no devices")
    text = "cloud_g_per_kwh = 300\ndevices = []\n"
    path, message = fleet_error(tmp_path, text)
    expect(message, path, 2, "devices", "no devices")


def test_missing_key_points_at_the_table(tmp_path: Path) -> None:
    text = FLEET.replace('tier = "medium"\n', "")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "[[devices]]", 2), "devices.1.tier", "Field required")


def test_toml_syntax_error_keeps_its_line(tmp_path: Path) -> None:
    text = FLEET.replace("load_w = 400", "load_w = = 400")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "load_w"), "invalid TOML", "line 5")


def test_every_problem_of_a_file_in_line_order(tmp_path: Path) -> None:
    text = (FLEET.replace('tier = "medium"', 'tier = "huge"').replace("p95_ms = 3", "p95_ms = 0.5")
            .replace("load_w = 400", "load_w = -1"))
    path, message = fleet_error(tmp_path, text)
    lines = [int(row.split(":")[1]) for row in message.splitlines()]
    assert len(lines) == 3 and lines == sorted(lines)
    expect(message, path, line_of(text, "load_w"), "site.load_w")
    expect(message, path, line_of(text, "p95_ms = 0.5"), "devices.0.models.0.p95_ms", "below p50_ms")
    expect(message, path, line_of(text, "huge"), "devices.1.tier")


def test_models_as_arrays_of_tables(tmp_path: Path) -> None:
    text = """\
[[devices]]
id = "box"
tier = "medium"

[[devices.models]]
name = "a"
runtime = "ollama"
tasks = ["qa"]
p50_ms = 10
p95_ms = 20
quality = 0.5

[[devices.models]]
name = "b"
runtime = "ollama"
tasks = ["qa"]
p50_ms = 10
p95_ms = 5  # the wrong one
quality = 0.5
"""
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "p95_ms = 5"), "devices.0.models.1.p95_ms", "below p50_ms")


def test_strings_with_brackets_and_quoted_keys(tmp_path: Path) -> None:
    text = FLEET.replace('runtime = "ollama", tasks = ["qa"', 'runtime = "oll{a}[m]a, \\"x\\"", tasks = ["qa"')
    text = text.replace("[site]\nload_w = 400", '[site]\n"load_w" = -4')
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, '"load_w"'), "site.load_w")
    text = FLEET.replace('runtime = "ollama", tasks = ["transcribe"], p50_ms = 500, p95_ms = 1200',
                         "runtime = '''multi\n]}line''', tasks = [\"transcribe\"], p50_ms = 500, p95_ms = 100")
    path, message = fleet_error(tmp_path, text)
    expect(message, path, line_of(text, "p95_ms = 100"), "devices.1.models.1.p95_ms", "below p50_ms")


def test_the_shipped_fleet_loads() -> None:
    fleet = load_fleet(EXAMPLES / "fleet.toml")
    assert isinstance(fleet, FleetFile)
    assert {d.id for d in fleet.devices} == {"watch", "phone", "laptop", "gpu-box", "cloud"}


# -- the trace -----------------------------------------------------------------------------------

@pytest.fixture
def fleet(tmp_path: Path) -> FleetFile:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return load_fleet(path)


def trace_error(tmp_path: Path, fleet: FleetFile, lines: list[str]) -> tuple[Path, str]:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SimInputError) as info:
        load_trace(path, fleet)
    message = str(info.value)
    assert all(line.startswith(f"{path}:") for line in message.splitlines()), message
    return path, message


GOOD = '{"t": 10, "task": "qa", "text": "why?", "requester": "phone"}'


def test_trace_loads_sorted_with_lines(tmp_path: Path, fleet: FleetFile) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"t": 20, "task": "qa", "text": "b"}\n\n  \n{"t": 5, "task": "intent", "text": "a"}\n'
                    '{"t": 20, "task": "qa", "text": "c"}\n')
    tasks = load_trace(path, fleet)
    assert [(t.t, t.text, t.origin) for t in tasks] == [(5, "a", (path, 4)), (20, "b", (path, 1)), (20, "c", (path, 5))]


def test_not_json(tmp_path: Path, fleet: FleetFile) -> None:
    path, message = trace_error(tmp_path, fleet, [GOOD, "", '{"t": 1, "task": "qa",'])
    expect(message, path, 3, "not JSON")


@pytest.mark.parametrize("value,kind", [("[1, 2]", "array"), ('"qa"', "string"), ("3", "number"), ("null", "null")])
def test_not_an_object(tmp_path: Path, fleet: FleetFile, value: str, kind: str) -> None:
    path, message = trace_error(tmp_path, fleet, [GOOD, value])
    expect(message, path, 2, f"a JSON {kind}, not an object")


def test_trace_unknown_task(tmp_path: Path, fleet: FleetFile) -> None:
    path, message = trace_error(tmp_path, fleet, [GOOD, GOOD.replace('"qa"', '"qna"')])
    expect(message, path, 2, "task", "unknown task 'qna'")
    assert "no model of the fleet" not in message


def test_trace_task_no_model_serves(tmp_path: Path, fleet: FleetFile) -> None:
    path, message = trace_error(tmp_path, fleet, [GOOD, GOOD, GOOD.replace('"qa"', '"code"')])
    expect(message, path, 3, "task", "no model of the fleet does 'code'", "intent, qa, summarize, transcribe")


@pytest.mark.parametrize("field,value,why", [
    ("budget_ms", 0, "greater than 0"), ("budget_ms", -5, "greater than 0"), ("deadline_s", 0, "greater than 0"),
    ("quality_floor", 1.2, "less than or equal to 1"), ("quality_floor", -0.1, "greater than or equal to 0"),
    ("t", -1, "greater than or equal to 0")])
def test_trace_fields_in_range(tmp_path: Path, fleet: FleetFile, field: str, value: float, why: str) -> None:
    bad = json.dumps({**json.loads(GOOD), field: value})
    path, message = trace_error(tmp_path, fleet, [GOOD, bad])
    expect(message, path, 2, f"{field}: ", why, f"(got {value})")


def test_trace_requester_is_a_fleet_device(tmp_path: Path, fleet: FleetFile) -> None:
    path, message = trace_error(tmp_path, fleet, [GOOD, GOOD.replace('"phone"', '"tablet"')])
    expect(message, path, 2, "requester", "'tablet' is not a device of the fleet (devices: phone, box)")


def test_trace_unknown_key(tmp_path: Path, fleet: FleetFile) -> None:
    path, message = trace_error(tmp_path, fleet, [GOOD.replace('"t"', '"time"')])
    expect(message, path, 1, "time", "Extra inputs are not permitted")
    expect(message, path, 1, "t: Field required")


def test_trace_blank_lines_count(tmp_path: Path, fleet: FleetFile) -> None:
    path, message = trace_error(tmp_path, fleet, ["", GOOD, "   ", "", GOOD.replace('"qa"', '"qna"'), ""])
    expect(message, path, 5, "unknown task 'qna'")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_trace(tmp_path: Path, fleet: FleetFile, content: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(content)
    with pytest.raises(SimInputError) as info:
        load_trace(path, fleet)
    expect(str(info.value), path, 1, "no tasks", "empty")


def test_every_bad_line_up_to_a_limit(tmp_path: Path, fleet: FleetFile) -> None:
    lines = [GOOD.replace('"qa"', '"qna"')] * (MAX_PROBLEMS + 7)
    path, message = trace_error(tmp_path, fleet, lines)
    rows = message.splitlines()
    assert len(rows) == MAX_PROBLEMS + 1
    expect(message, path, 1, "unknown task")
    expect(message, path, MAX_PROBLEMS, "unknown task")
    expect(message, path, MAX_PROBLEMS + 1, "and 7 more problems")


def test_unreadable_file(tmp_path: Path, fleet: FleetFile) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b'{"t": 1, "task": "qa", "text": "\xff"}\n')
    with pytest.raises(SimInputError, match=rf"^{re.escape(str(path))}:1: not UTF-8"):
        load_trace(path, fleet)


def test_the_shipped_trace_loads() -> None:
    fleet = load_fleet(EXAMPLES / "fleet.toml")
    tasks = load_trace(EXAMPLES / "trace.jsonl", fleet)
    assert len(tasks) == sum(1 for line in (EXAMPLES / "trace.jsonl").read_text().splitlines() if line.strip())
    assert [t.t for t in tasks] == sorted(t.t for t in tasks)


# -- the energy data under the trace -------------------------------------------------------------

def ts(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def series_file(tmp_path: Path, start: float, steps: int, step: float = 1800, name: str = "ci.csv") -> Series:
    path = tmp_path / name
    rows = ["Time,Carbon Intensity"]
    for i in range(steps):
        at = datetime.fromtimestamp(start + i * step, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"{at},{i}")
    path.write_text("\n".join(rows) + "\n")
    return Series.load(path, "Carbon Intensity")


def trace_of(tmp_path: Path, fleet: FleetFile, times: list[float]) -> tuple[Path, list[TraceTask]]:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps({"t": t, "task": "qa", "text": "x"}) + "\n" for t in times))
    return path, load_trace(path, fleet)


def test_trace_past_the_end_of_a_series(tmp_path: Path, fleet: FleetFile) -> None:
    # Two days of half-hours from 2020-06-01: covered up to 2020-06-03T00:00.
    carbon = series_file(tmp_path, ts(2020, 6, 1), 96)
    path, trace = trace_of(tmp_path, fleet, [3600, 86400 * 2.5, 86400, 86400 * 3])
    with pytest.raises(SimInputError) as info:
        check_coverage(trace, ts(2020, 6, 1), [("carbon", carbon)], wrap=False)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    expect(message, path, 4, "past the end of the carbon series", "2020-06-04T00:00Z",
           "covers 2020-06-01T00:00Z to 2020-06-03T00:00Z", "(2 tasks past its end)", "--wrap",
           "(the trace spans 3.0 days, more than the data)")
    check_coverage(trace, ts(2020, 6, 1), [("carbon", carbon)], wrap=True)


def test_trace_fits_at_another_start(tmp_path: Path, fleet: FleetFile) -> None:
    carbon = series_file(tmp_path, ts(2020, 6, 1), 48 * 10)  # ten days
    solar = series_file(tmp_path, ts(2020, 6, 1), 48 * 20, name="solar.csv")  # twenty
    path, trace = trace_of(tmp_path, fleet, [0, 86400 * 2, 86400 * 5])
    check_coverage(trace, ts(2020, 6, 1), [("carbon", carbon), ("solar", solar)], wrap=False)
    with pytest.raises(SimInputError) as info:
        check_coverage(trace, ts(2020, 6, 7), [("carbon", carbon), ("solar", solar)], wrap=False)
    message = str(info.value)
    expect(message, path, 3, "the carbon series", "--start from 2020-06-01T00:00Z to 2020-06-05T23:59Z")
    assert "solar" not in message
    with pytest.raises(SimInputError) as info:
        check_coverage(trace, ts(2020, 5, 31), [("carbon", carbon), ("solar", solar)], wrap=False)
    message = str(info.value)
    assert len(message.splitlines()) == 2
    expect(message, path, 1, "starts before the carbon series", "2020-05-31T00:00Z", "(1 tasks before its start)")
    expect(message, path, 1, "starts before the solar series")


def test_the_shipped_trace_is_covered_from_june_2020() -> None:
    fleet = load_fleet(EXAMPLES / "fleet.toml")
    trace = load_trace(EXAMPLES / "trace.jsonl", fleet)
    # As hub/cli.py and hub/simulate.py read them.
    carbon = Series.load(DATA / "gb_ci_2020.csv", "Carbon Intensity")
    solar = Series.load(DATA / "gb_solar_2020.csv", "Solar MW")
    check_coverage(trace, ts(2020, 6, 1), [("carbon", carbon), ("solar", solar)], wrap=False)
    with pytest.raises(SimInputError, match="trace.jsonl:5110: the trace runs past the end of the carbon series"):
        check_coverage(trace, ts(2021, 1, 5), [("carbon", carbon), ("solar", solar)], wrap=False)


# -- a series read round -------------------------------------------------------------------------

def test_covered_holds_the_last_value_one_step() -> None:
    s = Series([0.0, 1800.0, 3600.0], [1.0, 2.0, 3.0], 0)
    assert s.covered() == (0.0, 5400.0)


def test_wrapped_is_the_same_inside_the_data(tmp_path: Path) -> None:
    s = series_file(tmp_path, ts(2020, 6, 1), 48 * 3)
    w = s.wrapped()
    lo, hi = s.covered()
    for t in range(int(lo), int(hi), 599):
        assert w.at(t) == s.at(t)
    assert w.wrapped() is w
    # The original still clamps.
    assert s.at(hi + 86400) == s.values[-1] and s.at(lo - 86400) == s.values[0]


def test_wrapped_by_whole_days(tmp_path: Path) -> None:
    s = series_file(tmp_path, ts(2020, 6, 1), 48 * 3 + 10)  # three days and five hours
    w = s.wrapped()
    assert w.period() == 3 * 86400
    # Past the end: the latest data at the same time of day.
    assert w.fold(ts(2020, 6, 4, 6)) == ts(2020, 6, 1, 6)
    assert w.fold(ts(2020, 6, 4, 3)) == ts(2020, 6, 4, 3)  # still in the data
    assert w.fold(ts(2020, 6, 10, 13, 30)) == ts(2020, 6, 1, 13, 30)
    assert w.at(ts(2020, 6, 10, 13, 30)) == s.at(ts(2020, 6, 1, 13, 30)) == 27
    # Before the start: the earliest data at the same time of day.
    assert w.fold(ts(2020, 5, 31, 23)) == ts(2020, 6, 3, 23)
    assert w.fold(ts(2020, 5, 20, 1)) == ts(2020, 6, 1, 1)


def test_wrapped_by_years() -> None:
    carbon = Series.load(DATA / "gb_ci_2020.csv", "Carbon Intensity")
    w = carbon.wrapped()
    assert w.period() == 365 * 86400
    for t in (ts(2021, 3, 1, 12), ts(2023, 7, 15, 6, 30), ts(2019, 6, 1, 18)):
        f = w.fold(t)
        lo, hi = carbon.covered()
        assert lo <= f < hi
        assert (t - f) % (365 * 86400) == 0  # whole years of days: the time of day is kept
        assert w.at(t) == carbon.at(f)
    assert w.fold(ts(2021, 3, 1, 12)) == ts(2020, 3, 1, 12)


def test_wrapped_sub_day_series() -> None:
    s = Series([0.0, 600.0, 1200.0], [1.0, 2.0, 3.0], 0)
    w = s.wrapped()
    assert w.period() == 1800
    assert [w.at(t) for t in (1800, 2400, 3000, -600)] == [1.0, 2.0, 3.0, 3.0]


def test_wrapped_window_has_no_gaps_across_the_seam(tmp_path: Path) -> None:
    s = series_file(tmp_path, ts(2020, 6, 1), 48 * 2 + 3)  # two days and an hour and a half
    w = s.wrapped()
    _, hi = s.covered()
    t0, t1 = hi - 5000, hi + 2 * 86400
    win = w.window(t0, t1)
    assert win[0][0] <= t0 < win[0][1] and win[-1][1] >= t1
    for (a, b, v), (c, _, _) in zip(win, win[1:]):
        assert b == c and a < b
    for a, b, v in win:
        assert w.at(max(a, t0)) == v and w.at(b - 1) == v
    # Before the data too.
    lo, _ = s.covered()
    win = w.window(lo - 86400 - 700, lo + 3600)
    for (a, b, v), (c, _, _) in zip(win, win[1:]):
        assert b == c
    assert all(w.at(max(a, lo - 86400 - 700)) == v for a, _, v in win)
