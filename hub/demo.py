"""`sovereign demo`: the hub, its own broker and a simulated fleet, with no configuration.

Each device is a real agent process (its own MQTT connection, last will, zeroconf record and
HTTP endpoint) standing in for a watch, a phone, a laptop or a GPU box through its profile.
All traffic, mDNS included, stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from .children import spawn
from .config import default_data_dir, parse_config
from .runtime import Hub, start_hub
from .signals import stop_on_signals

log = logging.getLogger(__name__)

FLEET = ("watch", "phone", "laptop", "gpu-box")


class AgentProcess:
    """One supervised agent subprocess; restarted with backoff if it dies."""

    def __init__(self, profile: str, broker: str, credentials: Path) -> None:
        self.profile = profile
        self.device_id = f"demo-{profile}"
        self.broker = broker
        self.credentials = credentials
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hub", "agent", "--profile", self.profile, "--id", self.device_id,
                "--name", f"Demo {self.profile}", "--broker", self.broker, "--http-host", "127.0.0.1",
                "--zeroconf-interface", "127.0.0.1", "--heartbeat-s", "5", "--log-level", "warning",
                "--real-models", "--credentials", str(self.credentials)]

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"agent {self.profile}")

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            # spawn: the agent also gets SIGTERM if the hub is killed (hub/children.py).
            self.proc = await spawn(*self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                    start_new_session=True)
            code = await self.proc.wait()
            if self._stopping:
                return
            log.warning("agent %s exited with %s; restarting in %.0f s", self.device_id, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)

    async def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def sovereign_command() -> str:
    """How to run `sovereign` from the user's shell: what `./dev demo` says it is (its PATH is not
    the user's), else the bare name when it is the one on PATH, else this installation's path."""
    if named := os.environ.get("SOVEREIGN_CLI"):
        return named
    here = Path(sys.executable).parent / "sovereign"
    if not here.exists() or shutil.which("sovereign") == str(here):
        return "sovereign"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def pair_demo_agent(hub: Hub, device_id: str) -> Path:
    """The demo pairs its own agents (no code to type): a fresh login for each, written where
    the agent reads its credentials (data_dir/agents/, mode 0600)."""
    from .agent import credentials
    issued = hub.pairing.pair_device(device_id)
    path = hub.data_dir / "agents" / f"agent-{device_id}.json"
    credentials.save(path, credentials.AgentCredentials(device_id, hub.broker_url, issued.username, issued.password,
                                                        hub.topics.root), hub.embedded_broker.ca_pem()
                     if hub.embedded_broker else None)
    return path


#: The notes the demo indexes: this project's docs/ (present in a clone, not in a wheel).
DEMO_NOTES = Path(__file__).resolve().parent.parent / "docs"


def demo_data_dir() -> Path:
    """Where the demo keeps its data unless told (--data-dir): $SOVEREIGN_DEMO_DIR, else
    ~/.local/share/sovereign-demo."""
    return Path(os.environ.get("SOVEREIGN_DEMO_DIR") or default_data_dir().parent / "sovereign-demo").expanduser()


async def run_demo(http_port: int = 8700, data_dir: Path | None = None, replay_speed: float = 720) -> int:
    data_dir = data_dir.expanduser() if data_dir else demo_data_dir()
    config = parse_config({
        "data_dir": str(data_dir), "hub_id": "demo",
        "broker": {"port": 0},
        # The demo listens on loopback only and trusts it, so that `sovereign infer` works from
        # another terminal without a token; the dashboard still shows how to use one.
        "http": {"port": http_port, "require_token": "remote"},
        "zeroconf": {"interfaces": ["127.0.0.1"]},
        "discovery": {"heartbeat_timeout_s": 15},
        "energy": {"publish_interval_s": 2.0},
        # The project's own documentation as the demo's notes: indexed by the demo's phone and
        # laptop as deferrable work (within 5 minutes), then `sovereign search` finds it.
        "memory": {"vaults": [{"name": "docs", "path": str(DEMO_NOTES)}] if DEMO_NOTES.is_dir() else [],
                   "deadline_s": 300},
        "plugins": {
            # Real 2020 GB carbon and solar curves, 30 recorded minutes every 2.5 s, so that the
            # mode visibly changes: a day passes in two minutes.
            "replay": {"speed": replay_speed, "report_interval_s": 1.0, "solar_peak_w": 5000, "load_w": 600},
            # An example time-of-use tariff (figures made up for the demo).
            "tariff": {"price_per_kwh": 0.245, "export_price_per_kwh": 0.15, "timezone": "Europe/London",
                       "periods": [{"start": "00:30", "end": "04:30", "price_per_kwh": 0.075}]},
        },
    }, source="demo defaults")
    stop = asyncio.Event()
    stop_on_signals(stop)  # Ctrl-C and SIGTERM work during start-up too
    hub = Hub(config)
    try:
        if not await start_hub(hub, stop):
            return 0  # stopped while starting: whatever had started is stopped again
    except RuntimeError as exc:  # the data directory in use (hub/lock.py), a port taken, no Mosquitto
        print(f"error: {exc}", file=sys.stderr)
        return 1
    agents = [AgentProcess(p, hub.broker_url, pair_demo_agent(hub, f"demo-{p}")) for p in FLEET]
    url = "" if http_port == 8700 else f" --url {hub.http_url}"
    cli = sovereign_command()
    try:
        for agent in agents:
            agent.start()
        print(f"Sovereign Hub demo is running (data in {data_dir}).\n"
              f"  Dashboard: {hub.http_url}/"
              + (f"  (admin token, shown once: {hub.new_admin_token})\n" if hub.new_admin_token else "\n") +
              f"  API:     {hub.http_url}/api/devices\n"
              f"  Broker:  {hub.broker_url}\n"
              f"  Devices: {', '.join(a.device_id for a in agents)} (agent processes)\n"
              f"  Energy:  {hub.http_url}/api/energy (2020 GB grid replayed at {replay_speed:g}x)\n"
              f"Try: {cli} devices{url}, {cli} energy{url},\n"
              f"     {cli} infer --task intent 'schedule a meeting with Ana tomorrow at ten'{url},\n"
              f"     {cli} infer --task qa --stream 'what is a heat pump?'{url},\n"
              f"     {cli} search 'how does the hub pick a device for a task'{url} (once `{cli} memory{url}` "
              f"shows the docs indexed)   — Ctrl-C stops everything.",
              flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await hub.stop()
    return 0
