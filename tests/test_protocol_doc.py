"""docs/protocol.md stays true: its schemas are the code's, and its example validates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

from hub.schemas import render, schemas

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_schemas_in_doc_match_code() -> None:
    text = DOC.read_text()
    assert render(text) == text, "run: python -m hub.schemas docs/protocol.md"


def test_documented_examples_validate_against_the_schemas() -> None:
    text = DOC.read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(\{.*?\})\n```", text, flags=re.S)
              if '"...":' not in b and "\n{" not in b]
    by_kind = {"capability": None, "energy": None, "rpc-request": None}
    for b in blocks:
        if "tier" in b and "power" in b:
            by_kind["capability"] = b
        elif "ts" in b and "source" in b:
            by_kind["energy"] = b
        elif "method" in b:
            by_kind["rpc-request"] = b
    s = schemas()
    for kind, example in by_kind.items():
        assert example is not None, f"no {kind} example found"
        jsonschema.validate(example, s[kind])


def test_agent_output_validates_against_the_published_schema() -> None:
    from hub.agent.profiles import PROFILES
    from hub.capability import Capability
    for name, p in PROFILES.items():
        doc = Capability(v=1, id=f"x-{name}", name=name, tier=p.tier, hardware=p.hardware, power=p.power,
                         models=list(p.models)).model_dump(mode="json", exclude_none=True)
        jsonschema.validate(doc, schemas()["capability"])
