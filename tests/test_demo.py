"""`sovereign demo` then `sovereign devices --json`: three tiers (about 10 s on a quiet machine;
the test's bound is a failure bound for a busy one), clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from hub.broker import free_port

from .conftest import ROOT, poll


def test_demo_shows_three_tiers_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SOVEREIGN_DEMO_DIR": str(tmp_path / "demo")}
    demo = subprocess.Popen([sys.executable, "-m", "hub", "demo", "--http-port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.monotonic()
        devices: list[dict] = []
        while time.monotonic() - started < 90:
            out = subprocess.run([sys.executable, "-m", "hub", "devices", "--json", "--url", f"http://127.0.0.1:{port}"],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode == 0:
                devices = [d for d in json.loads(out.stdout)["devices"] if d["online"]]
                if len({d["tier"] for d in devices}) >= 3:
                    break
            time.sleep(0.3)  # between polls
        print(f"three tiers after {time.monotonic() - started:.1f} s")
        assert len({d["tier"] for d in devices}) >= 3, f"tiers seen in 90 s: {devices}"
        assert len(devices) >= 3
        # The energy snapshot: a carbon intensity, a mode with reasons, values that move with the replay.
        snaps: list[dict] = []

        def replay_advanced() -> bool:
            out = subprocess.run([sys.executable, "-m", "hub", "energy", "--json", "--url", f"http://127.0.0.1:{port}"],
                                 capture_output=True, text=True, cwd=ROOT)
            assert out.returncode == 0, out.stderr
            snaps.append(json.loads(out.stdout))
            return len({s["carbon_g_per_kwh"] for s in snaps}) >= 2

        poll(replay_advanced, 60, "the replay advances", interval=0.5)
        assert all(s["carbon_g_per_kwh"] and s["mode_reasons"] for s in snaps)
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 5, "broker + four agent processes"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
        output = demo.stdout.read() if demo.stdout else ""
        assert "Broker:  mqtt://127.0.0.1:" in output and f"http://127.0.0.1:{port}" in output
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left behind: {alive}"
    finally:
        if demo.poll() is None:
            demo.kill()


def test_the_banner_names_a_command_the_users_shell_can_run(monkeypatch: Any) -> None:
    from hub.demo import sovereign_command
    monkeypatch.setenv("SOVEREIGN_CLI", ".venv/bin/sovereign")  # what ./dev demo says
    assert sovereign_command() == ".venv/bin/sovereign"
    monkeypatch.delenv("SOVEREIGN_CLI")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # not on PATH: this installation's own path
    assert sovereign_command().endswith("bin/sovereign") and sovereign_command() != "sovereign"
