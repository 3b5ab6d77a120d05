"""Wrong guesses per client address in a sliding window (admin tokens, pairing codes)."""

from __future__ import annotations

import collections


class FailureWindow:
    """``limit`` failures from one client within ``window_s`` make it wait until the oldest of
    them leaves the window. Memory stays bounded: past 4,096 clients, those quiet for a whole
    window are forgotten."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._seen: dict[str, collections.deque[float]] = {}

    def wait_s(self, client: str, now: float) -> float:
        """How long ``client`` must wait before it may try again (0: it may now)."""
        fails = self._seen.get(client)
        if not fails:
            return 0.0
        while fails and now - fails[0] > self.window_s:
            fails.popleft()
        return self.window_s - (now - fails[0]) if len(fails) >= self.limit else 0.0

    def add(self, client: str, now: float) -> None:
        if len(self._seen) > 4096:
            self._seen = {c: f for c, f in self._seen.items() if f and now - f[-1] <= self.window_s}
        self._seen.setdefault(client, collections.deque(maxlen=self.limit)).append(now)
