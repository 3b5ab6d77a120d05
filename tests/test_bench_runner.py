"""benchmarks/run_all.py: targets evaluated against throw-away benchmark scripts that print fixed
JSON (no real benchmark runs here), a validated targets file, and the real benchmarks/targets.toml."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

_spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
assert _spec is not None and _spec.loader is not None
run_all = importlib.util.module_from_spec(_spec)
sys.modules["bench_run_all"] = run_all  # dataclasses look their module up
_spec.loader.exec_module(run_all)

FIGURES = {"storm": {"ratio": 1.2, "bare_s": {"p50": 0.07}}, "rss_mb": 90.0,
           "policies": {"sovereign": {"cost": 0.02, "quality": 75.5}, "always-cloud": {"cost": 0.5, "quality": 76.1}}}


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def printer(tmp_path: Path, name: str, doc: object) -> Path:
    """A benchmark that prints ``doc`` as JSON (after a line of chatter on stderr)."""
    return script(tmp_path, name, f"""
        import json, sys
        print("$ python {name}.py --json", file=sys.stderr)
        json.dump({doc!r}, sys.stdout, indent=2)
        print()
    """)


def targets(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(textwrap.dedent(text))
    return path


def entry(name: str, path: Path, figures: str, timeout: float = 60) -> str:
    return textwrap.dedent(f"""
        [[benchmark]]
        name = "{name}"
        command = ["{{python}}", "{path}"]
        timeout_s = {timeout}
    """) + textwrap.dedent(figures)


RATIO_OK = """
    [[benchmark.figure]]
    name = "storm ratio"
    value = "storm.ratio"
    max = 1.5
    source = "docs: target <= 1.5"
"""


def row(out: str, figure: str) -> str:
    """The table row of ``figure`` (columns are separated by two or more spaces)."""
    [line] = [line for line in out.splitlines() if f"  {figure}  " in line]
    return line


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run_all.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_passing_targets_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = printer(tmp_path, "good", FIGURES)
    t = targets(tmp_path, entry("good", bench, RATIO_OK + """
        [[benchmark.figure]]
        name = "hub RSS"
        value = "rss_mb"
        unit = "MB"
        below = 150
        source = "docs: < 150 MB"

        [[benchmark.figure]]
        name = "$ vs cloud"
        ratio = ["policies.sovereign.cost", "policies.always-cloud.cost"]
        max = 0.4
        source = "issue: 60 % below"

        [[benchmark.figure]]
        name = "bare p50"
        value = "storm.bare_s.p50"
        scale = 1000
        unit = "ms"
    """))
    code, out, _ = run(capsys, "--targets", str(t))
    assert code == 0, out
    assert row(out, "storm ratio").split()[-1] == "OK" and " 1.2 " in row(out, "storm ratio")
    assert "90 MB" in row(out, "hub RSS") and "< 150 MB" in row(out, "hub RSS") and row(out, "hub RSS").endswith("OK")
    assert " 0.04 " in row(out, "$ vs cloud") and row(out, "$ vs cloud").endswith("OK")
    assert "70 ms" in row(out, "bare p50") and row(out, "bare p50").endswith("INFO")  # no target: reported only
    assert f"{Path(sys.executable).name} {bench}" in out  # the command it ran


def test_regressed_target_exits_1_and_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = printer(tmp_path, "slow", {**FIGURES, "storm": {"ratio": 1.86}})
    t = targets(tmp_path, entry("slow", bench, RATIO_OK + """
        [[benchmark.figure]]
        name = "quality gap"
        difference = ["policies.sovereign.quality", "policies.always-cloud.quality"]
        unit = "pt"
        min = -1
        source = "issue: no more than 1 point below"
    """))
    code, out, _ = run(capsys, "--targets", str(t))
    assert code == 1
    assert "1.86" in row(out, "storm ratio") and "≤ 1.5" in row(out, "storm ratio")
    assert row(out, "storm ratio").endswith("REGRESSED")
    assert "-0.6 pt" in row(out, "quality gap") and row(out, "quality gap").endswith("OK")
    assert "1 regressed" in out


def test_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = printer(tmp_path, "slow", {**FIGURES, "storm": {"ratio": 1.86}})
    t = targets(tmp_path, entry("slow", bench, RATIO_OK))
    code, out, _ = run(capsys, "--targets", str(t), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    [b] = report["benchmarks"]
    assert b["name"] == "slow" and b["error"] is None and b["output"]["storm"]["ratio"] == 1.86
    assert b["figures"][0] | {"source": None} == {"name": "storm ratio", "status": "REGRESSED", "value": 1.86,
                                                   "unit": "", "target": "≤ 1.5", "expression": "storm.ratio",
                                                   "source": None, "detail": None}


def test_failing_benchmarks_are_errors_and_the_others_still_run(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    crash = script(tmp_path, "crash", "raise RuntimeError('broker did not start')\n")
    chatter = script(tmp_path, "chatter", "print('announce storm, 1000 devices: p50 69.6 ms')\n")
    hang = script(tmp_path, "hang", "import time\nprint('{', flush=True)\ntime.sleep(600)\n")
    good = printer(tmp_path, "good", FIGURES)
    t = targets(tmp_path, entry("crash", crash, RATIO_OK) + entry("chatter", chatter, RATIO_OK)
                + entry("hang", hang, RATIO_OK, timeout=0.5) + entry("good", good, RATIO_OK))
    t0 = time.monotonic()
    code, out, _ = run(capsys, "--targets", str(t))
    assert time.monotonic() - t0 < 30  # the sleeper was stopped at its timeout, not waited for
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[1:2] in (["(run)"], ["storm"])}
    assert "ERROR" in rows["crash"] and "exited with status 1" in rows["crash"]
    assert "ERROR" in rows["chatter"] and "no JSON" in rows["chatter"]
    assert "ERROR" in rows["hang"] and "timed out after 0.5 s" in rows["hang"]
    assert rows["good"].endswith("OK")
    assert "RuntimeError: broker did not start" in out  # the crash's stderr is shown


def test_missing_key_is_an_error_of_that_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = printer(tmp_path, "sim", {"policies": {"sovereign": {"cost": 0.02, "gco2": None}}, "storm": {"ratio": 1.0}})
    t = targets(tmp_path, entry("sim", bench, """
        [[benchmark.figure]]
        name = "$ vs cloud"
        ratio = ["policies.sovereign.cost", "policies.always-cloud.cost"]
        max = 0.4
        source = "issue"

        [[benchmark.figure]]
        name = "gCO2"
        value = "policies.sovereign.gco2"

        [[benchmark.figure]]
        name = "influx"
        value = "influx.points_per_s"
        optional = true
    """ + RATIO_OK))
    code, out, _ = run(capsys, "--targets", str(t))
    assert code == 1
    rows = {name: row(out, name) for name in ("$ vs cloud", "gCO2", "influx", "storm ratio")}
    assert "ERROR" in rows["$ vs cloud"] and "missing key 'policies.always-cloud.cost'" in rows["$ vs cloud"]
    assert "no 'always-cloud' in 'policies'" in rows["$ vs cloud"]
    assert "ERROR" in rows["gCO2"] and "is null" in rows["gCO2"]
    assert "SKIPPED" in rows["influx"]
    assert rows["storm ratio"].endswith("OK")  # the other checks are still evaluated


@pytest.mark.parametrize("figure, words", [
    ('name = "x"\nvalue = "a.b"\nratio = ["a", "b"]', "exactly one of"),
    ('name = "x"\nvalue = "a.b"\nmax = "1.5"\nsource = "doc"', "'max' must be a number"),
    ('name = "x"\nvalue = "a.b"\nmax = 1.5', "needs a 'source'"),
    ('name = "x"\nratio = ["a.b"]', "list of two JSON paths"),
    ('name = "x"\nvalue = "a..b"', "JSON path"),
    ('name = "x"\nvalue = "a"\nmaximum = 3', "unknown key 'maximum'"),
    ('name = "x"\nvalue = "a"\nmax = 1\nbelow = 2\nsource = "doc"', "at most one of"),
])
def test_malformed_figure_exits_2_naming_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   figure: str, words: str) -> None:
    bench = printer(tmp_path, "good", FIGURES)
    t = targets(tmp_path, entry("good", bench, RATIO_OK) + entry("broken", bench, f"[[benchmark.figure]]\n{figure}\n"))
    code, out, err = run(capsys, "--targets", str(t))
    assert code == 2 and out == ""
    assert "benchmark 'broken', figure #1 ('x')" in err and words in err, err


@pytest.mark.parametrize("text, words", [
    ('[[benchmark]]\nname = "a"\n', "benchmark 'a': 'command' must be"),
    ('[[benchmark]]\nname = "a"\ncommand = ["x"]\ntimeout_s = 0\n', "benchmark 'a': 'timeout_s'"),
    ('[[benchmark]]\ncommand = ["x"]\n', "benchmark #1: 'name'"),
    ('[[benchmark]]\nname = "a"\ncommand = ["x"]\n[[benchmark]]\nname = "a"\ncommand = ["y"]\n', "used twice"),
    ('[[benchmark]]\nname = "a"\ncommand = ["x"\n', "not valid TOML"),
])
def test_malformed_benchmark_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                     words: str) -> None:
    code, out, err = run(capsys, "--targets", str(targets(tmp_path, text)), "--list")
    assert code == 2 and words in err, err


def test_only_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crash = script(tmp_path, "crash", "raise SystemExit(3)\n")
    good = printer(tmp_path, "good", FIGURES)
    t = targets(tmp_path, entry("crash", crash, RATIO_OK) + entry("good", good, RATIO_OK))
    code, out, _ = run(capsys, "--targets", str(t), "--only", "good")
    assert code == 0 and "crash" not in out
    code, out, _ = run(capsys, "--targets", str(t), "--list")
    assert code == 0 and "crash" in out and "storm.ratio" in out and "≤ 1.5" in out and "source: docs" in out
    code, _, err = run(capsys, "--targets", str(t), "--only", "nope")
    assert code == 2 and "unknown benchmark 'nope'" in err


def test_real_targets_cover_every_benchmark_script() -> None:
    benchmarks = run_all.load_targets(BENCH / "targets.toml")
    commands = [" ".join(b.command) for b in benchmarks]
    scripts = sorted(p.name for p in BENCH.glob("*.py") if p.name not in ("_common.py", "run_all.py"))
    assert scripts, "no benchmark scripts found"
    for name in scripts:
        matching = [c for c in commands if f"benchmarks/{name}" in c]
        assert matching, f"benchmarks/targets.toml has no entry running benchmarks/{name}"
        assert all("--json" in c for c in matching)
    simulate = {b.name: b for b in benchmarks}["simulate"]
    assert "--json" in simulate.command
    paths = {p for f in simulate.figures for p in f.paths}
    for key in ("policies.sovereign.cost", "policies.always-cloud.cost", "policies.sovereign.quality_weighted_success",
                "policies.always-cloud.quality_weighted_success", "policies.sovereign.gco2",
                "policies.seed-rules.gco2", "policies.sovereign.slo_miss_pct", "policies.seed-rules.slo_miss_pct",
                "policies.sovereign.battery_floor_violations"):
        assert key in paths
    # The command line's --list reads the same file.
    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--list"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(b.name in out.stdout for b in benchmarks)


def test_a_known_unmet_target_is_shown_but_does_not_fail(tmp_path: Path) -> None:
    script = tmp_path / "b.py"
    script.write_text('import json; print(json.dumps({"x": 3}))\n')
    targets = tmp_path / "t.toml"
    targets.write_text(f'''
[[benchmark]]
name = "b"
command = ["{{python}}", "{script}"]
timeout_s = 60

[[benchmark.figure]]
name = "x"
value = "x"
max = 1
source = "a target"
unmet = "the fleet cannot reach it (closing note)"
''')
    out = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--targets", str(targets)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "UNMET" in out.stdout and "known: the fleet cannot reach it" in out.stdout
