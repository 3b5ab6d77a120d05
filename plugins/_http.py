"""A small shared helper for the HTTP energy plugins: GET JSON or raise SourceError saying why.

Built-in plugins may share helpers inside ``plugins/``; they still reach the hub only through
``hub.plugin_api``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hub.plugin_api import SourceError

MAX_BODY = 4 * 1024 * 1024


def check_http_url(v: str) -> str:
    """A config validator: an http(s) URL with a host, without its trailing slash."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, got {v!r}")
    return v.rstrip("/")


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    try:
        async with session.get(url, headers=headers) as resp:
            body = await resp.content.read(MAX_BODY + 1)
            if resp.status in (401, 403):
                raise SourceError(f"GET {url}: HTTP {resp.status}: token refused")
            if resp.status == 429:
                retry = resp.headers.get("Retry-After")
                raise SourceError(f"GET {url}: HTTP 429 rate limited" + (f", retry after {retry} s" if retry else ""))
            if resp.status != 200:
                raise SourceError(f"GET {url}: HTTP {resp.status}")
    except aiohttp.ClientError as exc:
        raise SourceError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    if len(body) > MAX_BODY:
        raise SourceError(f"GET {url}: response larger than {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SourceError(f"GET {url}: not JSON: {body[:60]!r}") from None


def number(obj: Any, path: str) -> float:
    """``obj`` walked along ``path`` (``a.b.0.c``) to a number, or SourceError naming the field."""
    cur = obj
    for part in path.split("."):
        try:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        except (KeyError, IndexError, TypeError, ValueError):
            raise SourceError(f"field {path} is missing") from None
    if isinstance(cur, bool) or not isinstance(cur, (int, float)):
        raise SourceError(f"field {path} is not a number: {cur!r}")
    return float(cur)
