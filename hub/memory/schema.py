"""The documents of the memory's HTTP API, as models: docs/protocol.md renders their JSON Schemas
(hub/schemas.py) and the tests validate what the hub answers against them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Doc):
    """``POST /api/search``: the query string of ``GET /api/search`` as a JSON body (for a query
    longer than a URL can carry; the same limits apply)."""

    q: str = Field(max_length=1_000_000, description="The query; at most memory.max_query_chars characters")
    k: int = Field(default=10, ge=1, le=50)
    source: str | None = Field(default=None, max_length=64)
    kind: Literal["note", "code", "commit"] | None = None


class SearchHitDoc(_Doc):
    source: str = Field(description="The vault's or repository's name in hub.toml")
    path: str = Field(description="Relative to the source; commit:<sha> for a commit message")
    kind: Literal["note", "code", "commit"]
    heading: str = Field(description="Heading path (note), enclosing definition (code) or subject (commit)")
    line_start: int = Field(ge=0, description="1-based first line in the file (0 for a commit)")
    line_end: int = Field(ge=0)
    score: float = Field(description="Reciprocal-rank fusion of the vector and keyword ranks; higher is better")
    cosine: float | None = Field(description="Cosine between the query's and the chunk's embeddings")
    keyword_rank: int | None = Field(description="1-based rank among FTS5 (BM25) keyword matches; null: none")
    text: str = Field(description="The chunk as embedded (its note title and heading first), cut to 400 characters")
    tags: list[str] | None = None


class SearchResponse(_Doc):
    """``GET /api/search?q=``."""

    query: str
    model: str = Field(description="The embedding model of the index")
    took_ms: float
    results: list[SearchHitDoc]


class SourceDoc(_Doc):
    n: int = Field(ge=1, description="The number the answer cites it by: [1] is the first")
    source: str
    path: str
    kind: Literal["note", "code", "commit"]
    heading: str
    line_start: int
    line_end: int
    score: float
    cosine: float | None
    keyword_rank: int | None
    tags: list[str] | None = None
