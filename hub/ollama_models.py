"""Turning an Ollama server's model list into capability entries.

Used by the agent (its local Ollama) and, through the plugin API, by the Ollama plugin (servers
given by address). Ollama's ``/api/tags`` says nothing about latency, so none is claimed:
``latency_ms`` stays null until the hub has measured it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .capability import ModelSpec

if TYPE_CHECKING:
    import ollama

#: Model families that produce embeddings rather than text.
EMBEDDING_FAMILIES = {"bert", "nomic-bert", "xlm-roberta"}
TEXT_TASKS = ["summarize", "qa", "format", "draft", "code", "reason", "intent", "classify"]


def tasks_for(name: str, family: str | None, families: list[str] | None) -> list[str]:
    fams = {f.lower() for f in (families or [])} | ({family.lower()} if family else set())
    lowered = name.lower()
    if fams & EMBEDDING_FAMILIES or "embed" in lowered:
        return ["embed"]
    if "llava" in lowered or "clip" in fams or "mllama" in fams:
        return ["vision", "qa", "summarize"]
    if "coder" in lowered or "codellama" in lowered:
        return ["code", "qa", "format"]
    return list(TEXT_TASKS)


def models_from_list(resp: ollama.ListResponse, max_concurrency: int = 1) -> list[ModelSpec]:
    out = []
    for m in resp.models:
        if not m.model:
            continue
        details = m.details
        out.append(ModelSpec(
            name=m.model[:128], runtime="ollama",
            tasks=tasks_for(m.model, details.family if details else None, details.families if details else None),
            size_mb=round((m.size or 0) / 1e6, 1), max_concurrency=max_concurrency,
        ))
    return out


async def list_ollama_models(host: str, timeout_s: float = 5.0) -> list[ModelSpec]:
    """Raises ``ollama.ResponseError`` or an httpx error when the server does not answer."""
    import ollama  # 70 ms of imports (httpx): only paid by agents that have an Ollama

    client = ollama.AsyncClient(host=host, timeout=timeout_s)
    return models_from_list(await client.list())
