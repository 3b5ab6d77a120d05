"""Discovery over MQTT: announcements, availability and heartbeats → the device registry.

The handler is synchronous and does no I/O, so it can be driven directly by tests and by
the broker connection alike. Every payload is validated here, at the edge; anything wrong is
rejected with the topic and reason, counted, and never reaches the registry.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from ..capability import Capability, EnergyReport
from ..config import format_validation_error
from ..registry import DeviceRegistry
from ..rejects import Rejections
from ..topics import TopicError, Topics

# The validators themselves: one call less per message than Model.model_validate_json.
_CAPABILITY = Capability.__pydantic_validator__
_ENERGY = EnergyReport.__pydantic_validator__


class MqttDiscovery:
    def __init__(self, topics: Topics, registry: DeviceRegistry, rejections: Rejections,
                 max_payload_bytes: int) -> None:
        self.topics = topics
        self.registry = registry
        self.rejections = rejections
        self.max_payload_bytes = max_payload_bytes

    def handle(self, topic: str, payload: bytes, retained: bool, at: float | None = None) -> None:
        at = time.time() if at is None else at
        try:
            device_id, kind = self.topics.parse_device_topic(topic)
        except TopicError as exc:
            self.rejections.reject(f"topic {topic!r}", str(exc))
            return
        if kind == "rpc":
            return  # requests to devices: not discovery's business
        if not payload:
            # An empty retained payload withdraws a retained message (we send those ourselves
            # when a device is deleted). Nothing to record.
            return
        if len(payload) > self.max_payload_bytes:
            self.rejections.reject(f"topic {topic!r}",
                                   f"payload of {len(payload)} bytes exceeds the limit of {self.max_payload_bytes}")
            return
        if kind == "status":
            self._status(topic, device_id, payload, at)
        elif kind == "announce":
            self._announce(topic, device_id, payload, retained, at)
        elif kind == "energy":
            self._energy(topic, device_id, payload, at)

    def _status(self, topic: str, device_id: str, payload: bytes, at: float) -> None:
        if payload not in (b"online", b"offline", b"sleeping"):
            self.rejections.reject(f"topic {topic!r}",
                                   f"status must be 'online', 'offline' or 'sleeping', got {payload[:40]!r}")
            return
        online = payload == b"online"
        why = {b"online": "online", b"offline": "status offline (last will or clean stop)",
               b"sleeping": "asleep: said so before its link dropped"}[payload]
        self.registry.liveness(device_id, "mqtt", online, at, why, sleeping=payload == b"sleeping")

    def _announce(self, topic: str, device_id: str, payload: bytes, retained: bool, at: float) -> None:
        try:
            cap = _CAPABILITY.validate_json(payload)
        except ValidationError as exc:
            self.rejections.reject(f"topic {topic!r}", _describe(exc, payload))
            return
        if cap.id != device_id:
            self.rejections.reject(f"topic {topic!r}", f"payload id {cap.id!r} does not match the topic's id {device_id!r}")
            return
        self.registry.announce(cap, "mqtt", at, live=not retained)
        if not self.registry.is_trusted(device_id):
            self.rejections.reject(f"topic {topic!r}", f"device {device_id!r} is not paired: listed as pending, "
                                   "never routed to", counter="pending_announcements")

    def _energy(self, topic: str, device_id: str, payload: bytes, at: float) -> None:
        try:
            report = _ENERGY.validate_json(payload)
        except ValidationError as exc:
            self.rejections.reject(f"topic {topic!r}", _describe(exc, payload))
            return
        if not self.registry.heartbeat(device_id, report, at):
            self.rejections.reject(f"topic {topic!r}", "energy report from a device that has not announced itself",
                                   counter="ignored_messages")


def _describe(exc: ValidationError, payload: bytes) -> str:
    """One line per problem, with the JSON path. UTF-8 is checked only here, on the failure
    path: pydantic already refuses invalid UTF-8, it just names it less plainly."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"payload is not valid UTF-8 (byte {err.start})"
    return format_validation_error(exc).replace("\n", "; ")
