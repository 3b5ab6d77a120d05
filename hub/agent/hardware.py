"""What the agent can find out about the machine it runs on."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil

import psutil

from ..capability import Accelerator, Hardware, Power, PowerSource

log = logging.getLogger(__name__)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()[:128]
    except OSError:
        pass
    return (platform.processor() or platform.machine() or "unknown")[:128]


async def nvidia_gpu() -> Accelerator | None:
    """The first NVIDIA GPU according to nvidia-smi, or None when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 5)
    except (OSError, asyncio.TimeoutError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return None
    first = out.decode(errors="replace").strip().splitlines()[:1]
    if proc.returncode != 0 or not first:
        return None
    name, _, mem = first[0].partition(",")
    try:
        memory_mb = int(float(mem.strip()))
    except ValueError:
        memory_mb = None
    return Accelerator(kind="gpu", name=name.strip()[:128], memory_mb=memory_mb)


async def detect_hardware() -> Hardware:
    return Hardware(
        cpu=cpu_name(),
        cores=os.cpu_count() or 1,
        ram_mb=psutil.virtual_memory().total // (1024 * 1024),
        accelerator=await nvidia_gpu(),
    )


def detect_power(idle_w: float | None = None, active_w: float | None = None) -> Power:
    """Battery through psutil; a machine without one is on mains."""
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, OSError):
        battery = None
    if battery is None:
        return Power(source=PowerSource.mains, idle_w=idle_w, active_w=active_w)
    plugged = bool(battery.power_plugged)
    return Power(
        source=PowerSource.mains if plugged else PowerSource.battery,
        battery_pct=max(0.0, min(100.0, float(battery.percent))),
        charging=plugged and battery.percent < 100,
        idle_w=idle_w, active_w=active_w,
    )
