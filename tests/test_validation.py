"""Every bad payload is rejected with the topic and a reason, counted, and leaves the registry alone."""

from __future__ import annotations

import json
import logging

import pytest

from hub.bus import EventBus
from hub.discovery.mqtt import MqttDiscovery
from hub.registry import DeviceRegistry
from hub.rejects import Rejections
from hub.state import StateStore
from hub.topics import Topics

from .payloads import bad_corpus, capability_doc, energy_doc


@pytest.fixture
def discovery() -> MqttDiscovery:
    bus = EventBus()
    state = StateStore(bus)
    return MqttDiscovery(Topics("sovereign"), DeviceRegistry(bus, None), Rejections(state), 256 * 1024)


@pytest.mark.parametrize("name,suffix,payload,reason", bad_corpus("dev-1"), ids=[c[0] for c in bad_corpus("dev-1")])
def test_bad_payload_rejected(discovery: MqttDiscovery, caplog: pytest.LogCaptureFixture,
                              name: str, suffix: str, payload: bytes, reason: str) -> None:
    # A good device first, so we can check that nothing about it changes.
    discovery.handle("sovereign/device/dev-1/announce", json.dumps(capability_doc("dev-1")).encode(), retained=False)
    before = discovery.registry.get("dev-1").to_dict()  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="hub.rejected"):
        discovery.handle(f"sovereign/{suffix}", payload, retained=False)
    assert discovery.rejections._state.counters["rejected_messages"] == 1
    line = caplog.records[-1].getMessage()
    assert f"sovereign/{suffix}" in line, line
    assert reason in line, f"expected {reason!r} in {line!r}"
    after = discovery.registry.get("dev-1").to_dict()  # type: ignore[union-attr]
    assert {k: v for k, v in after.items() if k != "last_seen"} == {k: v for k, v in before.items() if k != "last_seen"}
    assert len(discovery.registry) == 1


def test_valid_documents_accepted(discovery: MqttDiscovery) -> None:
    discovery.handle("sovereign/device/w1/announce", json.dumps(capability_doc("w1", "watch")).encode(), retained=False)
    discovery.handle("sovereign/device/w1/energy", json.dumps(energy_doc(battery_pct=41)).encode(), retained=False)
    rec = discovery.registry.get("w1")
    assert rec is not None and rec.online and rec.capability.tier.value == "tiny"
    assert rec.energy is not None and rec.energy.battery_pct == 41
    assert discovery.rejections._state.counters["rejected_messages"] == 0


def test_empty_retained_payload_is_a_withdrawal_not_an_error(discovery: MqttDiscovery) -> None:
    discovery.handle("sovereign/device/gone/announce", b"", retained=True)
    assert discovery.rejections._state.counters["rejected_messages"] == 0
    assert len(discovery.registry) == 0


def test_energy_before_announcement_is_ignored_not_rejected(discovery: MqttDiscovery) -> None:
    discovery.handle("sovereign/device/early/energy", json.dumps(energy_doc()).encode(), retained=False)
    counters = discovery.rejections._state.counters
    assert counters["ignored_messages"] == 1 and counters["rejected_messages"] == 0


def test_log_flood_is_rate_limited(discovery: MqttDiscovery, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hub.rejected"):
        for _ in range(500):
            discovery.handle("sovereign/device/x/status", b"maybe", retained=False)
    assert discovery.rejections._state.counters["rejected_messages"] == 500
    assert len(caplog.records) <= 21
