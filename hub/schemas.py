"""JSON Schemas of the wire payloads, generated from the models that validate them.

``python -m hub.schemas docs/protocol.md`` rewrites every block between
``<!-- schema:NAME -->`` and ``<!-- /schema:NAME -->`` in that file; a test fails when the
document and the code disagree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from .capability import Capability, EnergyReport
from .energy.model import EnergySnapshot
from .memory.schema import SearchRequest, SearchResponse, SourceDoc
from .commands import InferCommand
from .rpc import InferAnswer, InferParams, RpcChunk, RpcRequest, RpcResponse


def schemas() -> dict[str, dict[str, Any]]:
    # The voice plugin's documents (plugins/voice/schema.py) are rendered here too, so that one
    # command keeps every schema of docs/protocol.md true.
    from plugins.voice.schema import ActionMessage, UtteranceDoc, VoicePost
    out = {}
    for name, model in (("capability", Capability), ("energy", EnergyReport), ("rpc-request", RpcRequest),
                          ("rpc-response", RpcResponse), ("infer-params", InferParams),
                          ("infer-answer", InferAnswer), ("rpc-chunk", RpcChunk), ("infer-command", InferCommand),
                          ("energy-snapshot", EnergySnapshot), ("voice-command", VoicePost),
                          ("voice-utterance", UtteranceDoc), ("voice-action", ActionMessage),
                          ("search-request", SearchRequest), ("search-response", SearchResponse),
                          ("answer-source", SourceDoc)):
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://sovereign-hub.invalid/schemas/{name}/1"
        out[name] = schema
    return out


def render(doc: str) -> str:
    for name, schema in schemas().items():
        block = f"<!-- schema:{name} -->\n```json\n{json.dumps(schema, indent=2)}\n```\n<!-- /schema:{name} -->"
        doc, n = re.subn(rf"<!-- schema:{name} -->.*?<!-- /schema:{name} -->", lambda _m: block, doc, flags=re.S)
        if n != 1:
            raise SystemExit(f"marker for schema {name!r} not found exactly once")
    return doc


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/protocol.md")
    path.write_text(render(path.read_text()))
