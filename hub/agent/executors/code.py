"""The ``code`` runtime: deterministic answers with no model — the layer that costs ~0.

Model ``echo`` returns its input (the round trip the RPC benchmark measures); model ``rules``
answers from a table of normalised input → answer, such as the hub's approved compiled patterns
exported to a device (``--rules FILE``: ``{"intent": {"lock the front door": "lock_door"}}``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from .base import Emit, ExecError, InferCall, InferResult

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class CodeExecutor:
    runtime = "code"

    def __init__(self, rules: dict[str, dict[str, Any]] | None = None) -> None:
        self.rules = {task: {normalise(k): v for k, v in table.items()} for task, table in (rules or {}).items()}

    @classmethod
    def from_file(cls, path: Path) -> "CodeExecutor":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a rules file: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
            raise ValueError(f"{path}: expected {{task: {{input: answer}}}}")
        return cls(data)

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        if call.model.name == "echo":
            if call.text is not None:
                return InferResult(output=call.text, confidence=1.0, joules=0.0)
            return InferResult(output=call.ref if call.ref is not None else len(call.data or b""), confidence=1.0,
                               joules=0.0)
        if call.model.name == "rules":
            if call.text is None:
                raise ExecError("bad_request", "rules answer text input only")
            table = self.rules.get(call.task, {})
            key = normalise(call.text)
            if key not in table:
                # Not an error of the request: the hub escalates to a model.
                raise ExecError("no_answer", f"no rule for this {call.task} input")
            return InferResult(output=table[key], confidence=1.0, joules=0.0)
        raise ExecError("model_missing", f"the code runtime has no model {call.model.name!r} (echo, rules)")

    async def aclose(self) -> None:
        return None
