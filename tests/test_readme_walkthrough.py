"""A new user's first hour, as a test: the README's demo commands, verbatim, against a running
`sovereign demo`, and the command-client example of docs/protocol.md with a real login.

The commands are read out of the documents, so a command that stops working fails here, and so
does an edit that breaks a documented one. Only the address changes: the README's commands talk
to port 8700 (through `SOVEREIGN_URL` here, which the CLI honours) and the demo's broker port is
read from its banner. (The LAN example runs in tests/test_trust.py, in a network namespace.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from hub.broker import free_port

from .conftest import ROOT


def sh_blocks(doc: Path) -> list[list[str]]:
    """The ```sh blocks of a Markdown file, as lists of commands (continuations joined, comments cut)."""
    blocks, current, inside = [], [], False
    for line in doc.read_text().splitlines():
        if line.startswith("```sh"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append(current)
        elif inside:
            if current and current[-1].endswith("\\"):
                current[-1] = current[-1][:-1] + " " + line.strip()
            else:
                current.append(line)
    return [[re.sub(r"\s+#\s.*$", "", c).strip() for c in block] for block in blocks]


def run(command: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_readme_walkthrough_against_the_demo(tmp_path: Path) -> None:
    readme = sh_blocks(ROOT / "README.md")
    demo_block = next(b for b in readme if any(c.startswith(".venv/bin/sovereign devices") for c in b))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SOVEREIGN_DEMO_DIR": str(tmp_path / "demo"), "SOVEREIGN_URL": url}
    env.pop("SOVEREIGN_TOKEN", None)
    demo = subprocess.Popen([sys.executable, "-m", "hub", "demo", "--http-port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = ""
        assert demo.stdout is not None
        while "Ctrl-C stops everything" not in banner:
            line = demo.stdout.readline()
            assert line, f"the demo ended: {banner}"
            banner += line
        broker_port = re.search(r"Broker:\s+mqtt://127\.0\.0\.1:(\d+)", banner).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 90
        while True:  # the four agents announce within seconds
            out = run(".venv/bin/sovereign devices --json", env)
            if out.returncode == 0 and sum(d["state"] == "online" for d in json.loads(out.stdout)["devices"]) == 4:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.3)  # between polls

        results = {}
        for command in demo_block:
            done = run(command.replace("http://127.0.0.1:8700", url), env)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            results[command] = done
        table = next(r for c, r in results.items() if c.startswith(".venv/bin/sovereign devices")).stdout
        assert all(f"demo-{p}" in table for p in ("watch", "phone", "laptop", "gpu-box")) and "pending" not in table
        intent = next(r for c, r in results.items() if "--task intent" in c)
        assert intent.stdout.strip() == "schedule_meeting", intent.stdout
        stream = next(c for c in results if "--stream" in c)
        assert results[stream].stdout.strip(), "a streamed answer is printed"
        again = run(stream, env)  # asked again, it comes from the cache: streamed all the same
        assert again.stdout.strip() == results[stream].stdout.strip(), f"{results[stream].stderr}\n{again.stderr}"
        health = json.loads(next(r for c, r in results.items() if c.startswith("curl")).stdout)
        assert health["status"] == "ok" and health["pairing"]["paired"] == 4 and not health["security_warnings"]

        # docs/protocol.md: a command client's login, then mosquitto_rr on cmd/infer with it.
        protocol = sh_blocks(ROOT / "docs" / "protocol.md")
        client_block = next(b for b in protocol if any(c.startswith("sovereign pair --client") for c in b))
        pair_cmd, rr_cmd = client_block
        login = run(".venv/bin/" + pair_cmd + " --json", env)
        assert login.returncode == 0, login.stderr
        password = json.loads(login.stdout)["password"]
        rr = run(rr_cmd.replace("-p PORT", f"-p {broker_port}").replace("'PASSWORD'", shlex.quote(password))
                 + " -W 30", env)
        assert rr.returncode == 0, rr.stderr
        answer = json.loads(rr.stdout)
        assert answer["ok"] and answer["result"]["output"] == "lock_door", answer
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
