"""SIGINT and SIGTERM for the long-running commands (``run``, ``demo``, ``agent``).

The first signal asks for a clean stop, at any time, start-up included: a start still under way
is cancelled, and what it had started is taken down in reverse order. A second signal while
stopping exits at once (the children get SIGTERM from the kernel: hub/children.py), so that a
stop that hangs can always be cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``; the next one, once it is set, ends the process at once."""
    loop = asyncio.get_running_loop()

    def handler(sig: int) -> None:
        if stop.is_set():
            print(f"\n{signal.Signals(sig).name} again: quitting without a clean stop", file=sys.stderr, flush=True)
            os._exit(128 + sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler, sig)


async def enter_unless_stopped(cm: Any, stop: asyncio.Event) -> bool:
    """``await cm.__aenter__()``, unless ``stop`` is set first: then the start is cancelled (the
    context manager takes down whatever it had started) and False is returned. True: ``cm`` is
    entered and the caller must exit it (even when ``stop`` is set by now)."""
    start = asyncio.ensure_future(cm.__aenter__())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((start, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we are cancelled ourselves
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        if not start.cancelled() and start.exception() is None:
            await cm.__aexit__(None, None, None)  # it had finished starting just before
        raise
    finally:
        stopping.cancel()
    if not start.done():
        log.warning("stop requested during start-up: cancelling it")
        start.cancel()
    try:
        await start
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if start.cancelled() and not (task is not None and task.cancelling()):
            return False
        raise
    return True
