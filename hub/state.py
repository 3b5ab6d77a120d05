"""A small state store: named values with change events, read by the HTTP API and plugins.

Like Home Assistant's state machine, but deliberately tiny: the hub's own facts (broker
connection, counters) live here so that plugins can read them without touching hub internals.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .bus import EventBus


@dataclass(frozen=True, slots=True)
class StateChanged:
    key: str
    old: Any
    new: Any
    at: float


class StateStore:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._values: dict[str, Any] = {}
        self.counters: Counter[str] = Counter()

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        old = self._values.get(key)
        if old == value and key in self._values:
            return
        self._values[key] = value
        self._bus.publish(StateChanged(key, old, value, time.time()))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def snapshot(self) -> dict[str, Any]:
        return dict(self._values)
