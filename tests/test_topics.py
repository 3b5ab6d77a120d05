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


def test_topic_matches_agrees_with_paho() -> None:
    """hub.topics.topic_matches is what plugin subscriptions are matched with on every message:
    the same answers as paho's, without paho's per-call reference cycle (docs/benchmarks.md)."""
    from paho.mqtt.client import topic_matches_sub

    from hub.topics import topic_matches
    filters = ["a/b", "a/+", "a/#", "#", "+", "+/+", "a/+/c", "a/b/#", "$SYS/#", "+/b", "a//c", "/+", "a/b/c/#"]
    topics = ["a/b", "a", "a/b/c", "a/c", "b", "$SYS/x", "$SYS", "a//c", "/a", "", "a/b/c/d", "sovereign/cmd/eeg"]
    for f in filters:
        for t in topics:
            assert topic_matches(f, t) == topic_matches_sub(f, t), (f, t)


def test_matching_leaves_no_cyclic_garbage() -> None:
    import gc

    from hub.topics import topic_matches
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for _ in range(1000):
            topic_matches("sovereign/gaze/samples", "sovereign/device/x/announce")
        assert len(gc.get_objects()) - before < 50  # paho's matcher left ~6 tracked objects per call
    finally:
        gc.enable()
