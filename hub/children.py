"""The hub's child processes (the embedded Mosquitto, the demo's agents) die with the hub.

They run in their own session so that a terminal's Ctrl-C reaches the hub first and the hub can
stop them in order; but then nothing stops them when the hub itself is killed (SIGKILL, OOM
killer), and orphans keep the broker's persistence directory and shadow the next demo's agents
on mDNS. Two mechanisms, both on:

- ``spawn`` asks the kernel (Linux ``PR_SET_PDEATHSIG``) to send each child SIGTERM when the hub
  dies;
- ``Children`` records every child in ``<data_dir>/children.json`` (pid, start time, argv[0]);
  the next hub on that data directory stops whatever listed process still runs, after checking
  in /proc that the pid still names the same process.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PIDFILE = "children.json"
PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0

_prctl: Any = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

#: The record of the hub that runs in this task. A context variable because the spawners (the
#: broker's supervisor, the demo's agent tasks) are created by the hub's task after it sets it,
#: and several hubs may run in one process (tests).
current: contextvars.ContextVar["Children | None"] = contextvars.ContextVar("sovereign_children", default=None)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when the hub dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process.
    asyncio's create_subprocess_exec forks from the event-loop thread (Python 3.11's
    ``_make_subprocess_transport`` runs Popen inline; only waitpid runs in a watcher thread),
    and in ``sovereign run`` and ``sovereign demo`` that is the main thread, which lives exactly
    as long as the hub. Do not spawn children from a short-lived thread (asyncio.to_thread).
    """
    if _prctl is None:  # not Linux: no such call (nor /proc for the pidfile): nothing to do
        return None
    prctl, parent = _prctl, os.getpid()
    option, sig, zero = ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGTERM), ctypes.c_ulong(0)

    def preexec() -> None:  # in the child, between fork and exec: keep it minimal
        prctl(option, sig, zero, zero, zero)
        if os.getppid() != parent:  # the hub died before prctl took effect: no signal will come
            os._exit(1)

    return preexec


async def spawn(program: str, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` for a child that must not outlive the hub."""
    proc = await asyncio.create_subprocess_exec(program, *args, preexec_fn=_die_with_parent(), **kwargs)
    record = current.get()
    if record is not None:
        record.add(proc, program)
    return proc


# -- /proc ---------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may hold spaces and ')')."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Field 22, the start time in clock ticks since boot: with the pid, it names one process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _argv0(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None


def is_running(entry: dict[str, Any]) -> bool:
    """The process ``entry`` recorded still runs (not a zombie) and its pid was not reused."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == entry.get("start_time") and _argv0(pid) == entry.get("argv0", _argv0(pid))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it just exited
    except PermissionError as exc:
        log.warning("cannot stop pid %d: %s", pid, exc)


def _identity(pid: int, argv0: str) -> dict[str, Any] | None:
    started = start_time(pid)
    return None if started is None else {"pid": pid, "start_time": started, "argv0": argv0}


class Children:
    """The hub's children in ``<data_dir>/children.json``, rewritten as they start and stop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._live: dict[int, dict[str, Any]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def stop_stale(self, grace_s: float = STOP_GRACE_S) -> list[int]:
        """Stop the children a previous hub on this data directory left running; their pids."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return []
        if doc.get("boot_id") != _boot_id():
            return []  # rebooted since: those pids are other processes now
        if is_running(doc.get("hub", {})):
            log.warning("%s belongs to hub pid %s, which still runs (two hubs on one data directory?): "
                        "leaving its children alone", self.path, doc["hub"]["pid"])
            return []
        stale = [e for e in doc.get("children", []) if isinstance(e, dict) and is_running(e)]
        for entry in stale:
            log.warning("stopping pid %d (%s), a stale child of a previous hub (pid %s)", entry["pid"],
                        entry.get("argv0"), doc.get("hub", {}).get("pid"))
            _signal(entry["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(is_running(e) for e in stale) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for entry in stale:
            if is_running(entry):  # checked again just before: never signal a reused pid
                log.warning("pid %d ignored SIGTERM for %.0f s: killing it", entry["pid"], grace_s)
                _signal(entry["pid"], signal.SIGKILL)
        self._write()
        return [e["pid"] for e in stale]

    def add(self, proc: asyncio.subprocess.Process, argv0: str) -> None:
        entry = _identity(proc.pid, argv0)
        if self._closed or entry is None:
            return
        self._live[proc.pid] = entry
        self._write()
        watcher = asyncio.get_running_loop().create_task(self._forget(proc), name=f"child {proc.pid}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _forget(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self._live.pop(proc.pid, None) is not None and not self._closed:
            self._write()

    def close(self) -> None:
        """At hub stop, after the children were stopped: keep only what still runs (nothing, normally)."""
        self._closed = True
        for watcher in self._watchers:
            watcher.cancel()
        self._live = {pid: e for pid, e in self._live.items() if is_running(e)}
        if self._live:
            self._write()
        else:
            self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        me = _identity(os.getpid(), _argv0(os.getpid()) or "")
        doc = {"boot_id": _boot_id(), "hub": me, "children": list(self._live.values())}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.path)  # a hub killed mid-write leaves the old file, not half a new one
