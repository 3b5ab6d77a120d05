"""What docs/operations.md ships: the systemd units verify, and their commands are ones the CLI takes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub.cli import build_parser

from .conftest import ROOT

UNITS = sorted((ROOT / "examples" / "systemd").glob("*.service"))


def _exec_start(unit: Path) -> list[str]:
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%H", "host"))


def test_units_exist_and_run_sovereign() -> None:
    assert {u.name for u in UNITS} == {"sovereign-hub.service", "sovereign-agent.service"}
    for unit in UNITS:
        argv = _exec_start(unit)
        assert argv[0] == "/opt/sovereign/.venv/bin/sovereign"
        build_parser().parse_args(argv[1:])  # exits (fails the test) on an option the CLI lost


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    copies = []
    for unit in UNITS:  # the real executable in place of /opt/sovereign (verify checks it exists)
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/sovereign/.venv/bin", str(venv_bin)))
        copies.append(str(copy))
    done = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60)
    # verify exits 0 on many problems and reports them on stderr: both must be clean.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
