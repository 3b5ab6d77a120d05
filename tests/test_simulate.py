"""The simulator: the same router, stats, cache and ledger code over a trace; deterministic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.config import ConfigError
from hub.simulate import load_fleet, simulate

from .conftest import ROOT

EXAMPLES = ROOT / "examples"
DATA = ROOT / "plugins" / "replay" / "data"


@pytest.fixture(scope="module")
def day_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first day of the shipped week (the whole week takes ~8 s per run)."""
    lines = [line for line in (EXAMPLES / "trace.jsonl").read_text().splitlines() if json.loads(line)["t"] < 86400]
    path = tmp_path_factory.mktemp("sim") / "day.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_deterministic_for_a_seed(day_trace: Path) -> None:
    a = simulate(EXAMPLES / "fleet.toml", day_trace, DATA / "gb_ci_2020.csv", DATA / "gb_solar_2020.csv", seed=3)
    b = simulate(EXAMPLES / "fleet.toml", day_trace, DATA / "gb_ci_2020.csv", DATA / "gb_solar_2020.csv", seed=3)
    c = simulate(EXAMPLES / "fleet.toml", day_trace, DATA / "gb_ci_2020.csv", DATA / "gb_solar_2020.csv", seed=4)
    assert a == b and a["policies"] != c["policies"]
    p = a["policies"]
    assert set(p) == {"always-cloud", "seed-rules", "local-first", "sovereign"}
    assert all(v["tasks"] == a["tasks"] for v in p.values())
    assert p["always-cloud"]["cost"] > p["sovereign"]["cost"], "local layers save money"
    assert p["sovereign"]["deferred"] > 0 and p["sovereign"]["battery_floor_violations"] == 0


def test_cli_json(day_trace: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hub", "simulate", "--fleet", str(EXAMPLES / "fleet.toml"),
                          "--trace", str(day_trace), "--policy", "sovereign", "--policy", "always-cloud", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["policies"]) == {"sovereign", "always-cloud"}
    for key in ("tasks", "cost", "kwh", "gco2", "p50_ms", "p95_ms", "slo_miss_pct", "quality_weighted_success",
                "battery_floor_violations", "deferred", "mean_deferral_s"):
        assert key in data["policies"]["sovereign"]


def test_bad_fleet_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text('[[devices]]\nid = "x"\ntier = "huge"\nmodels = []\n')
    with pytest.raises(ConfigError, match=r"devices\.0\.tier"):
        load_fleet(bad)
