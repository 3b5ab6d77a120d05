"""``[memory]`` in hub.toml: what to index, how, and how retrieval and the semantic cache behave."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VaultConfig(_Section):
    """An Obsidian vault (any folder of Markdown notes)."""

    name: str = Field(pattern=_NAME, description="Shown with every result; unique among sources")
    path: Path
    #: fnmatch patterns on the path relative to the vault (``Templates/*``, ``*.excalidraw.md``).
    exclude: list[str] = Field(default_factory=list, max_length=256)


class RepoConfig(_Section):
    """A git repository: the files committed at HEAD, and its commit messages."""

    name: str = Field(pattern=_NAME)
    path: Path
    #: Files of a type the indexer does not know are skipped unless they match one of these.
    include: list[str] = Field(default_factory=list, max_length=256)
    exclude: list[str] = Field(default_factory=list, max_length=256)
    max_commits: int = Field(default=500, ge=0, le=100_000)


class ContextConfig(_Section):
    """``"context": "notes"`` on qa, summarize and draft."""

    top_k: int = Field(default=5, ge=1, le=20)
    #: The retrieved text sent with the prompt is cut to this (the router prices what is sent).
    max_chars: int = Field(default=4000, ge=200, le=100_000)
    #: A chunk scoring below this cosine is not sent: an unrelated note is noise to a small model.
    min_cosine: float = Field(default=0.25, ge=-1, le=1)


class SemanticCacheConfig(_Section):
    enabled: bool = True
    #: Tasks answered from a cached answer to a question that means the same. Not intent: "turn on
    #: the lights" and "turn off the lights" are 0.9 apart and must never share an answer.
    tasks: list[str] = Field(default_factory=lambda: ["qa"])
    #: Cosine (of the questions' words, without punctuation) at or above which two questions whose
    #: shared words come in the same order count as the same: the lowest with at most 1 % false
    #: hits on 1,000 labelled PAWS pairs (benchmarks/memory.py; docs/benchmarks.md has the rates).
    threshold: float = Field(default=0.977, gt=0, le=1)
    #: Longer texts are not matched semantically: a paraphrase is a short question.
    max_chars: int = Field(default=500, ge=10, le=10_000)
    max_entries: int = Field(default=20_000, ge=10, le=1_000_000)


class MemoryConfig(_Section):
    enabled: bool = True
    #: The embedding model: the fleet's devices run it for indexing (pinned by name), the hub runs
    #: its own copy for queries. ``model_dir`` holds a user's model.onnx + tokenizer.json.
    model: str = Field(default="minilm-l6-v2", min_length=1, max_length=128)
    model_dir: Path | None = None
    #: Where the index lives (default: memory.db in the data directory).
    index_path: Path | None = None
    vaults: list[VaultConfig] = Field(default_factory=list, max_length=64)
    repos: list[RepoConfig] = Field(default_factory=list, max_length=64)
    #: Chunks per embed task.
    batch_size: int = Field(default=32, ge=1, le=256)
    #: Indexing is deferrable work: each batch is due this long after it is queued, so the router
    #: may hold it for a sunny or clean-grid window. 0: run at once.
    deadline_s: float = Field(default=6 * 3600, ge=0, le=7 * 86400)
    #: Embed tasks in flight at once.
    concurrency: int = Field(default=2, ge=1, le=16)
    scan_interval_s: float = Field(default=300, ge=5, le=86400)
    max_file_bytes: int = Field(default=1_000_000, ge=1000, le=100_000_000)
    #: Queries longer than this are refused (413): a search box, not a document.
    max_query_chars: int = Field(default=2000, ge=10, le=100_000)
    #: Threads for the hub's own embedding of queries. One: the keyword search runs beside it
    #: (a second thread made the whole query slower on 2 cores; benchmarks/memory.py).
    threads: int = Field(default=1, ge=1, le=64)
    context: ContextConfig = Field(default_factory=ContextConfig)
    semantic_cache: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)

    @field_validator("vaults", "repos")
    @classmethod
    def _paths(cls, v: list[VaultConfig] | list[RepoConfig]) -> list[VaultConfig] | list[RepoConfig]:
        for s in v:
            s.path = s.path.expanduser()
        return v

    @model_validator(mode="after")
    def _unique(self) -> "MemoryConfig":
        names = [s.name for s in (*self.vaults, *self.repos)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique: {', '.join(dupes)} used twice")
        return self
