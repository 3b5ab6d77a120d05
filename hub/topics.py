"""MQTT topic layout, under a configurable root (default ``sovereign``).

Kept in one place so that the hub, the agent, the firmware docs and the tests agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .capability import is_valid_device_id

DEVICE_KINDS = ("announce", "status", "energy", "rpc")


class TopicError(ValueError):
    pass


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+``, ``#``, ``$`` topics) without allocating more than two lists.
    paho's ``topic_matches_sub`` builds an ``MQTTMatcher`` per call and leaves a reference cycle
    (its recursive ``rec`` closure) that only the cyclic collector frees: 12 objects per message
    for two plugin subscriptions, enough to trigger a young-generation collection mid-storm."""
    if topic_filter == topic:
        return True
    f, t = topic_filter.split("/"), topic.split("/")
    dollar = topic.startswith("$")
    for i, level in enumerate(f):
        if level == "#":
            return not (dollar and i == 0)
        if i >= len(t):
            return False
        if level == "+":
            if dollar and i == 0:
                return False
        elif level != t[i]:
            return False
    return len(f) == len(t)


@dataclass(frozen=True, slots=True)
class Topics:
    root: str = "sovereign"

    def __post_init__(self) -> None:
        if not self.root or any(c in self.root for c in "#+") or self.root.startswith("/") or self.root.endswith("/"):
            raise ValueError(f"invalid topic root {self.root!r}: no wildcards, no leading or trailing '/'")

    def allows_reply(self, topic: str) -> bool:
        """Replies go only under the root and never to a wildcard: a request must not make the
        hub or a device publish anywhere it likes."""
        return topic.startswith(self.root + "/") and not any(c in topic for c in "#+")

    @property
    def reply_root(self) -> str:
        """Where answers to commands go: ``<root>/reply/<client username>/…``. Each command
        client may read only its own namespace under it (docs/security.md)."""
        return f"{self.root}/reply/"

    def allows_command_reply(self, topic: str) -> bool:
        """A command's reply topic: inside the reply root, under a namespace, no wildcards. Never
        a device's or the hub's own topics, whatever the command asks."""
        if not topic.startswith(self.reply_root) or any(c in topic for c in "#+"):
            return False
        namespace = topic[len(self.reply_root):].split("/", 1)[0]
        return bool(namespace)

    def device(self, device_id: str, kind: str) -> str:
        return f"{self.root}/device/{device_id}/{kind}"

    @property
    def discovery_filters(self) -> list[str]:
        """What discovery subscribes to: the three kinds devices publish, plus anything with
        extra levels under a device (an id containing '/'), so that it is rejected loudly
        instead of being silently unmatched. RPC traffic is not discovery's business."""
        base = f"{self.root}/device/+"
        return [f"{base}/announce", f"{base}/status", f"{base}/energy", f"{base}/+/+/#"]

    @property
    def hub_status(self) -> str:
        return f"{self.root}/hub/status"

    def parse_device_topic(self, topic: str) -> tuple[str, str]:
        """``<root>/device/<id>/<kind>`` → (id, kind); raises TopicError naming the problem."""
        prefix = f"{self.root}/device/"
        if not topic.startswith(prefix):
            raise TopicError("not a device topic")
        parts = topic[len(prefix):].split("/")
        if len(parts) != 2:
            raise TopicError(f"expected {prefix}<id>/<kind>, got {len(parts)} levels after the prefix")
        device_id, kind = parts
        if not is_valid_device_id(device_id):
            raise TopicError(f"invalid device id {device_id!r} in topic")
        if kind not in DEVICE_KINDS:
            raise TopicError(f"unknown device topic kind {kind!r}")
        return device_id, kind
