"""The hub's children (embedded Mosquitto, the demo's agents) do not outlive it: killed with
SIGKILL, its children get SIGTERM from the kernel (PR_SET_PDEATHSIG); and what a previous hub
left running anyway is stopped by the next hub on the same data directory (children.json)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.broker import free_port
from hub import children
from hub.children import PIDFILE, is_running, start_time

from .conftest import MOSQUITTO, ROOT, Mosquitto, poll

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")


def children_of(pid: int) -> set[int]:
    """Live (non-zombie) processes whose parent is ``pid``, from /proc/*/stat."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def recorded(pidfile: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(pidfile.read_text())["children"]
    except (OSError, ValueError, KeyError):
        return []


def online_devices(port: int) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/devices", timeout=2) as r:
            return [d["id"] for d in json.load(r)["devices"] if d["online"]]
    except OSError:
        return []


def kill_hub_and_time_children(hub: subprocess.Popen[bytes], entries: list[dict[str, Any]]) -> dict[int, float]:
    """SIGKILL the hub; for each of ``entries``, seconds until it no longer runs."""
    hub.kill()
    hub.wait(10)
    killed, gone = time.monotonic(), {}

    def all_gone() -> bool:
        for e in entries:
            if e["pid"] not in gone and not is_running(e):
                gone[e["pid"]] = round(time.monotonic() - killed, 2)
        return len(gone) == len(entries)

    poll(all_gone, 30, f"the children to go: still running {[e for e in entries if is_running(e)]}")
    return gone


def cleanup(hub: subprocess.Popen[bytes], entries: list[dict[str, Any]]) -> None:
    if hub.poll() is None:
        hub.kill()
        hub.wait()
    for e in entries:
        if is_running(e):
            os.kill(e["pid"], signal.SIGKILL)


def test_demo_children_die_with_a_killed_hub(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    env = {**os.environ, "SOVEREIGN_DEMO_DIR": str(data)}
    port = free_port()
    with open(tmp_path / "demo.log", "wb") as log:
        hub = subprocess.Popen([sys.executable, "-m", "hub", "demo", "--http-port", str(port)], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    entries: list[dict[str, Any]] = []
    try:
        # The broker and the four agents, recorded with the pids /proc shows as the hub's children.
        entries = poll(lambda: len(e := recorded(data / PIDFILE)) == 5 and e, 30, "5 children recorded")
        assert {e["pid"] for e in entries} == children_of(hub.pid)
        assert sum(e["argv0"] == MOSQUITTO for e in entries) == 1
        assert all(is_running(e) for e in entries)
        # Up, not merely started: every agent is online (its MQTT session and mDNS record live).
        poll(lambda: len(online_devices(port)) == 4, 30, "the 4 agents online")
        gone = kill_hub_and_time_children(hub, entries)
        print("demo, seconds from SIGKILL of the hub to each child gone:",
              {Path(e["argv0"]).name + f" {e['pid']}": gone[e["pid"]] for e in entries})
    finally:
        cleanup(hub, entries)


def test_run_broker_dies_with_a_killed_hub(tmp_path: Path) -> None:
    data = tmp_path / "hub-data"
    conf = tmp_path / "hub.toml"
    conf.write_text(f'data_dir = "{data}"\nlog_level = "warning"\n[broker]\nport = 0\n[http]\nport = 0\n'
                    '[zeroconf]\ninterfaces = ["127.0.0.1"]\n')
    hub = subprocess.Popen([sys.executable, "-m", "hub", "run", "--config", str(conf)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entries: list[dict[str, Any]] = []
    try:
        entries = poll(lambda: recorded(data / PIDFILE), 30, "the broker recorded")
        assert [e["argv0"] for e in entries] == [MOSQUITTO] and {entries[0]["pid"]} == children_of(hub.pid)
        gone = kill_hub_and_time_children(hub, entries)
        print(f"run: the broker was gone {gone[entries[0]['pid']]} s after SIGKILL of the hub")
    finally:
        cleanup(hub, entries)


async def test_next_hub_stops_stale_children_and_only_them(mosquitto: Any, make_hub: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # What a hub killed before PR_SET_PDEATHSIG could act (or on another OS) leaves behind: a
    # broker still running, and an entry whose pid now names another process (start time differs).
    (tmp_path / "stale").mkdir()
    stale = Mosquitto(tmp_path / "stale")
    stale.start()
    other = subprocess.Popen(["sleep", "1000"])
    dead_hub = subprocess.Popen(["true"])
    dead_hub.wait()
    try:
        pids = [stale.proc.pid, other.pid]
        data = tmp_path / "hub-data"
        data.mkdir()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        (data / PIDFILE).write_text(json.dumps({
            "boot_id": boot_id, "hub": {"pid": dead_hub.pid, "start_time": 1, "argv0": sys.executable},
            "children": [{"pid": pids[0], "start_time": start_time(pids[0]), "argv0": MOSQUITTO},
                         {"pid": pids[1], "start_time": start_time(pids[1]) + 1, "argv0": "sleep"}]}))
        caplog.set_level(logging.WARNING, "hub.children")
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}):
            # Stopped before the hub was up (SIGTERM; Mosquitto needs no SIGKILL).
            assert stale.proc.wait(1) == 0
            assert other.poll() is None, "a pid that names another process is left alone"
            assert f"stopping pid {pids[0]} ({MOSQUITTO}), a stale child of a previous hub" in caplog.text
            assert str(pids[1]) not in caplog.text
            assert recorded(data / PIDFILE) == []  # the file is this hub's now
        assert not (data / PIDFILE).exists(), "removed at a clean stop, when no child is left"
    finally:
        other.kill()
        other.wait()
        stale.stop()


def test_a_child_whose_hub_died_before_prctl_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub died between fork and prctl: the child's parent is then someone else, and it
    exits instead of running unwatched (simulated by expecting another parent)."""
    with monkeypatch.context() as m:
        m.setattr(children.os, "getpid", lambda: 1)
        preexec = children._die_with_parent()
    started = time.monotonic()
    # It exits (1) instead of running: `sleep 30` would have ended 0, after 30 s.
    assert subprocess.run(["sleep", "30"], preexec_fn=preexec, timeout=25).returncode == 1
    assert time.monotonic() - started < 25
