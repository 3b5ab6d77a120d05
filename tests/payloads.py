"""Valid documents and the bad-payload corpus, shared by the unit and the broker tests."""

from __future__ import annotations

import json
from typing import Any

from hub.agent.profiles import PROFILES
from hub.capability import PROTOCOL_VERSION, Capability


def capability_doc(device_id: str, profile: str = "laptop", **overrides: Any) -> dict[str, Any]:
    p = PROFILES[profile]
    doc = Capability(v=PROTOCOL_VERSION, id=device_id, name=f"Test {device_id}", tier=p.tier, hardware=p.hardware,
                     power=p.power, models=list(p.models)).model_dump(mode="json", exclude_none=True)
    doc.update(overrides)
    return doc


def energy_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "ts": 1_700_000_000.0, "source": "battery", "battery_pct": 50, "charging": False}
    doc.update(overrides)
    return doc


def bad_corpus(device_id: str) -> list[tuple[str, str, bytes, str]]:
    """(name, topic suffix after the root, payload, expected words in the reason)."""
    good = capability_doc(device_id)

    def enc(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    no_power = {k: v for k, v in good.items() if k != "power"}
    return [
        ("wrong type: tier is a number", f"device/{device_id}/announce", enc({**good, "tier": 3}), "tier"),
        ("wrong type: cores is a string", f"device/{device_id}/announce",
         enc({**good, "hardware": {**good["hardware"], "cores": "eight"}}), "hardware.cores"),
        ("unknown tier", f"device/{device_id}/announce", enc({**good, "tier": "huge"}), "tier"),
        ("missing field power", f"device/{device_id}/announce", enc(no_power), "power"),
        ("battery over 100 %", f"device/{device_id}/announce",
         enc({**good, "power": {**good["power"], "battery_pct": 140}}), "power.battery_pct"),
        ("model without tasks", f"device/{device_id}/announce",
         enc({**good, "models": [{"name": "m", "runtime": "tflite", "tasks": []}]}), "models.0.tasks"),
        ("p95 below p50", f"device/{device_id}/announce",
         enc({**good, "models": [{"name": "m", "runtime": "tflite", "tasks": ["intent"],
                                  "latency_ms": {"p50": 10, "p95": 5}}]}), "p95"),
        ("unknown top-level key", f"device/{device_id}/announce", enc({**good, "colour": "red"}), "colour"),
        ("unknown schema version", f"device/{device_id}/announce", enc({**good, "v": 99}), "version 99"),
        ("not JSON", f"device/{device_id}/announce", b"{this is not json", "JSON"),
        ("JSON but not an object", f"device/{device_id}/announce", b"[1, 2, 3]", "object"),
        ("invalid UTF-8", f"device/{device_id}/announce", b'{"v": 1, "id": "\xff\xfe"}', "UTF-8"),
        ("1 MB payload", f"device/{device_id}/announce", b"{" + b" " * (1024 * 1024) + b"}", "exceeds the limit"),
        ("device id with '/' in the payload", f"device/{device_id}/announce", enc({**good, "id": "a/b"}), "id"),
        ("device id with '#' in the payload", f"device/{device_id}/announce", enc({**good, "id": "a#b"}), "id"),
        ("payload id differs from topic id", f"device/{device_id}/announce", enc({**good, "id": device_id + "x"}),
         "does not match"),
        ("extra topic level (id with '/')", f"device/{device_id}/x/announce", enc(good), "levels"),
        ("unknown topic kind", f"device/{device_id}/colour", b"red", "unknown device topic kind"),
        ("bad status word", f"device/{device_id}/status", b"maybe", "status must be"),
        ("energy with wrong types", f"device/{device_id}/energy", enc(energy_doc(battery_pct="full")), "battery_pct"),
        ("energy with unknown version", f"device/{device_id}/energy", enc(energy_doc(v=7)), "version 7"),
    ]
