"""History into InfluxDB through its v2 write API, with the disk spool, against a real server:
VictoriaMetrics (Debian package), which implements the InfluxDB v2 write API; no InfluxDB 2
server can be installed here."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.broker import free_port, port_in_use
from hub.config import InfluxConfig
from hub.influx import InfluxWriter

from .conftest import wait_for

VM = shutil.which("victoria-metrics")
pytestmark = pytest.mark.skipif(VM is None and not Path("/usr/bin/victoria-metrics").exists(),
                                reason="victoria-metrics is installed by ./dev test")


class Victoria:
    def __init__(self, d: Path) -> None:
        self.dir, self.port, self.proc = d, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([VM or "/usr/bin/victoria-metrics", f"-httpListenAddr=127.0.0.1:{self.port}",
                                      f"-storageDataPath={self.dir}", "-retentionPeriod=100y",
                                      "-search.latencyOffset=0s", "-loggerLevel=ERROR"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not port_in_use("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "victoria-metrics did not start"
            time.sleep(0.05)  # polling for the port

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def count(self, metric: str) -> int:
        """Samples stored for one of our metrics (VictoriaMetrics names the series
        <measurement>_<field>, with our tags as labels)."""
        q = urllib.request.quote(f'sovereign_value{{metric="{metric}"}}')
        try:
            # Make freshly ingested samples searchable now instead of at the next flush (~10 s).
            urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5).close()
            with urllib.request.urlopen(f"{self.url}/api/v1/export?match[]={q}", timeout=5) as r:
                return sum(len(json.loads(line)["values"]) for line in r.read().decode().splitlines() if line)
        except OSError:
            return -1


@pytest.fixture
def victoria(tmp_path: Path) -> Any:
    vm = Victoria(tmp_path / "vm")
    vm.start()
    yield vm
    vm.stop()


def cfg(url: str, **kw: Any) -> InfluxConfig:
    return InfluxConfig(url=url, token="test-token", flush_interval_s=0.1, timeout_s=2, **kw)


T0 = 1_790_000_000.0  # recent enough for VictoriaMetrics' retention


async def wait_count(vm: Victoria, metric: str, n: int, timeout: float = 15) -> None:
    await wait_for(lambda: vm.count(metric) == n, timeout, interval=0.3, what=f"{n} samples of {metric}")


async def test_points_arrive(victoria: Victoria, tmp_path: Path) -> None:
    async with InfluxWriter(cfg(victoria.url), tmp_path / "spool.sqlite3") as w:
        for i in range(1000):
            w.add("pv_w", T0 + i, float(i))
        await wait_for(lambda: w.written == 1000, 30, what="written")
        assert w.spooled == 0 and w.dropped == 0
    await wait_count(victoria, "pv_w", 1000)


async def test_outage_loses_nothing(victoria: Victoria, tmp_path: Path) -> None:
    async with InfluxWriter(cfg(victoria.url), tmp_path / "spool.sqlite3") as w:
        w.add("grid_w", T0, 1.0)
        await wait_for(lambda: w.written == 1, 30, what="first point")
        victoria.stop()
        for i in range(1, 501):
            w.add("grid_w", T0 + i, float(i))
        await wait_for(lambda: w.failed_attempts >= 2 and w.spooled == 500, 60, what="spooled during the outage")
        assert w.last_error
        victoria.start()
        await wait_for(lambda: w.spooled == 0, 40, what="spool drained after the restart")
        assert w.written == 501 and not w.last_error
    await wait_count(victoria, "grid_w", 501)


async def test_spool_survives_a_hub_restart(victoria: Victoria, tmp_path: Path) -> None:
    spool = tmp_path / "spool.sqlite3"
    victoria.stop()
    async with InfluxWriter(cfg(victoria.url), spool) as w:
        for i in range(300):
            w.add("load_w", T0 + i, float(i))
        await wait_for(lambda: w.spooled == 300, 30, what="spooled")
    victoria.start()
    async with InfluxWriter(cfg(victoria.url), spool) as w:
        await wait_for(lambda: w.written == 300 and w.spooled == 0, 60, what="sent after restart")
    await wait_count(victoria, "load_w", 300)


async def test_spool_is_bounded(victoria: Victoria, tmp_path: Path) -> None:
    victoria.stop()
    async with InfluxWriter(cfg(victoria.url, spool_max_points=1000), tmp_path / "spool.sqlite3") as w:
        for i in range(1500):
            w.add("battery_soc_pct", T0 + i, float(i % 100))
        await wait_for(lambda: w.dropped == 500 and w.spooled == 1000, 30, what="bounded spool")
        victoria.start()
        await wait_for(lambda: w.spooled == 0, 40, what="drained")
    await wait_count(victoria, "battery_soc_pct", 1000)


async def test_hub_writes_energy_readings_to_influx(victoria: Victoria, mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        history={"influx": {"url": victoria.url, "token": "t", "flush_interval_s": 0.2}},
                        plugins={"tariff": {"price_per_kwh": 0.3}}) as hub:
        await wait_for(lambda: hub.influx.written >= 1, 30, what="hub → influx")
        async with __import__("aiohttp").ClientSession() as s, s.get(f"{hub.http_url}/api/health") as r:
            health = await r.json()
        assert health["history"]["influx"]["written"] >= 1
    await wait_for(lambda: victoria.count("price_per_kwh") >= 1, 60, interval=0.3, what="price in VictoriaMetrics")
    await asyncio.sleep(0)
