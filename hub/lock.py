"""One data directory, one hub.

Two hubs (or a hub and a demo) on one data directory rewrite each other's ``mosquitto.conf``,
``children.json`` and SQLite files: the first one's broker then comes back on the second one's
port after a restart, and neither works. So the hub's first act is to take an exclusive
``flock`` on ``<data_dir>/hub.lock`` and hold it for its whole life; a second hub on the same
directory is refused at once, naming the directory and the holder's pid, before it writes
anything there. The kernel drops the lock when its holder exits, however it exits (SIGKILL
included), so a stale lock file never blocks the next start.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "hub.lock"


class DataDirBusy(RuntimeError):
    """Another live process holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder: int | None) -> None:
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"the data directory {data_dir} is in use by a running hub ({who}); stop it first, "
                         "or give this one its own directory (--data-dir; SOVEREIGN_DEMO_DIR for the demo)")
        self.data_dir, self.holder = data_dir, holder


def holder_pid(path: Path) -> int | None:
    """The pid written in a lock file, if any (it names the holder only while the lock is held)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class DataDirLock:
    """``lock = DataDirLock(data_dir); lock.acquire(); ...; lock.release()``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirBusy`. Creates the directory (and the empty lock
        file) if missing; when the lock is taken, nothing in the directory is modified."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the holder's pid must survive our failed attempt. Not inherited by children
        # (os.open's default), so a lingering broker cannot keep the directory locked.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(self.data_dir, holder_pid(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> int | None:
        """The pid of the hub holding the lock, or None when no hub runs on the directory (0 when
        one does but its pid is unknown). Takes the lock for an instant and writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder_pid(self.path) or 0
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no pid left behind to be mistaken for a holder
        finally:
            os.close(fd)  # closing the last descriptor drops the flock
