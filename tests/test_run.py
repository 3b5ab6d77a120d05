"""`sovereign run` as a process: start-up, clean shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.broker import free_port

from .conftest import ROOT, poll, retained_messages
from .payloads import capability_doc
from .test_discovery_mqtt import paho_client


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_shuts_down_cleanly(mosquitto: Any, tmp_path: Path, sig: int) -> None:
    port = free_port()
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nhub_id = "h1"\n[mqtt]\nurl = "{mosquitto.url}"\n'
                   f'[http]\nport = {port}\n[zeroconf]\nenabled = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "hub", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
                    if json.load(r)["broker"]["connected"]:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "hub did not come up"
            time.sleep(0.1)  # between polls
        assert retained_messages(mosquitto.port, "sovereign/hub/status") == {"sovereign/hub/status": b"online"}
        c = paho_client(mosquitto.port)
        c.publish("sovereign/device/r1/announce", json.dumps(capability_doc("r1")), qos=1).wait_for_publish()
        c.loop_stop()
        c.disconnect()

        def heard_of_r1() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/devices/r1", timeout=10) as r:
                    return r.status == 200
            except OSError:  # 404 until the hub has it
                return False

        poll(heard_of_r1, 30, "the hub hears of r1")
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        # It said goodbye, and the device it had just heard of is on disk.
        assert retained_messages(mosquitto.port, "sovereign/hub/status") == {"sovereign/hub/status": b"offline"}
        with sqlite3.connect(tmp_path / "data" / "registry.sqlite3") as db:
            assert [r[0] for r in db.execute("SELECT id FROM devices")] == ["r1"]
    finally:
        if proc.poll() is None:
            proc.kill()
