"""The command line's client for the running hub's HTTP API, shared by ``hub/cli.py`` and its
subcommand modules (``hub/cli_pairing.py``): requests with the admin token, errors printed, and
plain-text tables."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


def open_api(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """A request to the hub's API with ``SOVEREIGN_TOKEN`` when set; the caller closes it."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    token = os.environ.get("SOVEREIGN_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)


def api_call(method: str, base: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """A request to the running hub at ``base``: its JSON answer, or None after printing why not
    (the hub's own error, with a hint for the admin token on 401)."""
    try:
        with open_api(method, base.rstrip("/") + path, body, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            err = json.load(exc).get("error", {})
        except ValueError:
            err = {}
        hint = " (set SOVEREIGN_TOKEN to the admin token)" if exc.code == 401 else ""
        print(f"error ({err.get('code', exc.code)}): {err.get('message', exc.reason)}{hint}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: no hub at {base} ({getattr(exc, 'reason', exc)})", file=sys.stderr)
    return None


def columns(rows: list[tuple[Any, ...]]) -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
