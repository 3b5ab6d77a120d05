"""The discovery subscriptions match each device topic exactly once (no duplicate deliveries)."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from hub.topics import TopicError, Topics


@pytest.mark.parametrize("topic,matches", [
    ("sovereign/device/a/announce", 1),
    ("sovereign/device/a/status", 1),
    ("sovereign/device/a/energy", 1),
    ("sovereign/device/a/rpc", 0),          # RPC traffic is not discovery's business
    ("sovereign/device/a/b/announce", 1),   # an id with '/': caught to be rejected loudly
    ("sovereign/device/a/b/c/d", 1),
    ("sovereign/hub/status", 0),
    ("other/device/a/announce", 0),
])
def test_discovery_filters(topic: str, matches: int) -> None:
    assert sum(topic_matches_sub(f, topic) for f in Topics("sovereign").discovery_filters) == matches


def test_parse_and_reject() -> None:
    t = Topics("home/ai")
    assert t.parse_device_topic("home/ai/device/w-1/energy") == ("w-1", "energy")
    for bad in ("home/ai/device/w 1/energy", "home/ai/device/w/x/energy", "home/ai/device/w/colour", "x/device/w/status"):
        with pytest.raises(TopicError):
            t.parse_device_topic(bad)
    with pytest.raises(ValueError):
        Topics("a/#")
