"""Who may use the HTTP API and the websocket.

The first run creates an admin token, prints it once and keeps only its SHA-256 (``data_dir/
admin-token.json``, mode 0600); ``http.token`` (or ``SOVEREIGN_TOKEN``) is accepted as well.
``http.require_token`` says when one is needed: ``writes`` (default) — every write, and any
request from off the loopback; ``remote`` — only requests from off the loopback; ``always``.
Clients that keep sending wrong tokens are refused for a while (429), whatever they send.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
from pathlib import Path

from aiohttp import web

READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminToken:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._hash: str | None = None

    def ensure(self) -> str | None:
        """Load the stored hash; on the first run create a token and return it (the only time
        it exists in clear)."""
        if self.path.is_file():
            try:
                self._hash = json.loads(self.path.read_text())["sha256"]
                return None
            except (OSError, ValueError, KeyError):
                pass  # unreadable: make a new one rather than lock everybody out
        token = secrets.token_urlsafe(24)
        self._hash = _digest(token)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"sha256": self._hash, "created": time.time()}, f)
        tmp.replace(self.path)
        return token

    def matches(self, token: str) -> bool:
        return self._hash is not None and hmac.compare_digest(_digest(token), self._hash)


def is_loopback_peer(request: web.Request) -> bool:
    peer = request.remote or ""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return peer == "" and request.transport is not None and request.transport.get_extra_info("peername") is None


class Guard:
    def __init__(self, admin: AdminToken, configured: str | None, mode: str, max_failures: int = 10,
                 window_s: float = 60.0) -> None:
        self.admin, self.configured, self.mode = admin, configured, mode
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, collections.deque[float]] = {}

    def needs_token(self, request: web.Request) -> bool:
        if self.mode == "always":
            return True
        remote = not is_loopback_peer(request)
        if self.mode == "remote":
            return remote
        return remote or request.method not in READ_METHODS

    def valid(self, token: str) -> bool:
        if self.configured and hmac.compare_digest(token.encode(), self.configured.encode()):
            return True
        return self.admin.matches(token)

    def check(self, request: web.Request) -> web.Response | None:
        """None when the request may go on; otherwise the refusal."""
        given = request.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else request.query.get("token", "") if \
            request.path == "/api/ws" else ""
        if not token and not self.needs_token(request):
            return None
        client = request.remote or "?"
        now = time.monotonic()
        fails = self._failures.get(client)
        if fails is not None:
            while fails and now - fails[0] > self.window_s:
                fails.popleft()
            if len(fails) >= self.max_failures:
                retry = int(self.window_s - (now - fails[0])) + 1
                return _refuse(429, "too_many_failures", f"too many wrong tokens; retry in {retry} s",
                               {"Retry-After": str(retry)})
        if token and self.valid(token):
            return None
        if token or given:
            self._failures.setdefault(client, collections.deque()).append(now)
            return _refuse(401, "unauthorized", "wrong token")
        return _refuse(401, "unauthorized", "this request needs the admin token (Authorization: Bearer …)")


def _refuse(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)
