"""Who may use the HTTP API and the websocket.

Two checks, in this order, on every request (``hub/http_api.py`` runs them in one middleware):

- :class:`SameOrigin` — what a browser may do. The Host header must be a name of this hub (an IP
  literal, ``localhost``, this machine's name, or ``http.allowed_hosts``): a page whose DNS name
  was re-pointed at the hub (DNS rebinding) is refused. A request with an ``Origin`` must come
  from the hub's own origin or ``http.allowed_origins``, and none may say ``Sec-Fetch-Site:
  cross-site``: another site's page cannot reach the loopback API, its websocket, or a "simple"
  CORS request that needs no preflight. Writes with a body must be ``application/json``.
- :class:`Guard` — the admin token. The first run that starts up creates one, prints it once and
  keeps only its SHA-256 (``data_dir/admin-token.json``, mode 0600; ``sovereign token reset``
  makes a new one, which a running hub takes at its next check); ``http.token`` (or ``SOVEREIGN_TOKEN``) is
  accepted as well. ``http.require_token`` says when one is needed: ``writes`` (default) —
  every write, and any request from off the loopback; ``remote`` — only requests from off the
  loopback; ``always``. Only ``Authorization: Bearer`` is understood. A right token is always
  accepted; a client that keeps sending wrong ones gets 429 for them for a while.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import hdrs, web

from .private_file import write_private
from .ratelimit import FailureWindow

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
#: The one public write, (method, path): a pairing code authorises it, not a token (hub/pairing_api.py).
PUBLIC_WRITES = frozenset({("POST", "/api/pair")})


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its status, error code (counted as ``http_refused.<code>``) and
    message; ``detail`` is the refused value, for the log."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    def response(self) -> web.Response:
        return web.json_response({"error": {"code": self.code, "message": self.message}}, status=self.status,
                                 headers=self.headers)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminToken:
    """The admin token's SHA-256 in ``path`` (the token itself is never stored).

    ``sovereign token reset`` replaces the file while a hub runs: :meth:`matches` notices the
    change (inode, mtime, size: one ``stat`` per check) and uses the new hash from then on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hash: str | None = None
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> bool:
        """Read the stored hash; False when there is none (or it is unreadable)."""
        try:
            st = self.path.stat()
            doc = json.loads(self.path.read_text())
            digest = doc["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            return False
        self._hash, self._stamp = digest, (st.st_ino, st.st_mtime_ns, st.st_size)
        return True

    def ensure(self) -> str | None:
        """Load the stored hash; when there is none, create a token and return it (the only time
        it exists in clear: the caller shows it)."""
        return None if self.load() else self.create()

    def create(self, owner: tuple[int, int] | None = None) -> str:
        """A new token replacing any old one (which stops working); returns it. ``owner``:
        (uid, gid) to give the file (root resetting another user's hub)."""
        token = secrets.token_urlsafe(24)
        digest = _digest(token)
        write_private(self.path, json.dumps({"sha256": digest, "created": time.time()}), owner)
        self.load()
        return token

    def info(self) -> dict[str, object] | None:
        """What is stored: ``{"sha256": ..., "created": epoch seconds or None}``, or None."""
        try:
            doc = json.loads(self.path.read_text())
            return {"sha256": str(doc["sha256"]), "created": doc.get("created")}
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return  # gone (deleted by hand): keep the hash we have until the next start
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
            self.load()  # an unreadable new file keeps the old hash

    def matches(self, token: str) -> bool:
        self._refresh()
        return self._hash is not None and hmac.compare_digest(_digest(token), self._hash)


def fingerprint(sha256_hex: str) -> str:
    """The first 8 hex digits of the token's SHA-256: enough to tell two tokens apart, far too
    little to find the token (``printf %s TOKEN | sha256sum`` gives the same digits)."""
    return sha256_hex[:8]


def is_loopback_peer(request: web.Request) -> bool:
    peer = request.remote or ""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return peer == "" and request.transport is not None and request.transport.get_extra_info("peername") is None


# -- browsers: Host, Origin, content type ---------------------------------------------------------

_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?")
_ORIGIN = re.compile(r"(https?)://" + _HOST.pattern)
_DEFAULT_PORT = {"http": 80, "https": 443}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]`` → (name without brackets or trailing dot, port); None
    when it is neither."""
    m = _HOST.fullmatch(value.strip().lower())
    if m is None:
        return None
    return m.group(1).strip("[]").rstrip("."), int(m.group(2)) if m.group(2) else None


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` → (scheme, host, port with the scheme's default); None otherwise
    (``null``, a path, another scheme)."""
    m = _ORIGIN.fullmatch(value.strip().lower())
    if m is None:
        return None
    return m.group(1), m.group(2).strip("[]").rstrip("."), int(m.group(3)) if m.group(3) else _DEFAULT_PORT[m.group(1)]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_json_media_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class SameOrigin:
    """Refuses what only another site's page (or a page reached through a re-pointed DNS name)
    would send; requests without Origin (curl, the CLI, aiohttp) pass the Origin checks."""

    def __init__(self, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (),
                 bind_host: str = "127.0.0.1") -> None:
        own = socket.gethostname().lower().rstrip(".").removesuffix(".local")
        self.hosts = {"localhost", own, own + ".local", *(h.lower().rstrip(".") for h in allowed_hosts)}
        if not _is_ip(bind_host):
            self.hosts.add(bind_host.lower())
        self.origins = {o for o in map(parse_origin, allowed_origins) if o is not None}

    def check(self, request: web.Request) -> Refusal | None:
        host_header = request.headers.get(hdrs.HOST)
        host = split_host(host_header) if host_header is not None else None
        if host_header is not None and (host is None or not (_is_ip(host[0]) or host[0] in self.hosts)):
            name = host[0] if host else host_header[:100]
            return Refusal(403, "bad_host", f"this hub does not answer to the name {name!r} (a DNS rebinding "
                           f"defence): add it to http.allowed_hosts if it is this hub's name", detail=name)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None:
            parsed = parse_origin(origin)
            if parsed is None or not (parsed in self.origins or self._own(parsed, host)):
                return Refusal(403, "cross_origin", f"requests from pages of {origin[:100]!r} are refused: only "
                               "the hub's own pages, or origins listed in http.allowed_origins", detail=origin[:100])
        elif request.headers.get("Sec-Fetch-Site") == "cross-site" and not _link_to_page(request):
            return Refusal(403, "cross_origin", "requests from another site's pages are refused",
                           detail="Sec-Fetch-Site: cross-site")
        if request.method in WRITE_METHODS and request.body_exists:
            ctype = request.headers.get(hdrs.CONTENT_TYPE)
            # A body a browser can send without a CORS preflight is text/plain, a form or multipart:
            # none of them is JSON, so they never reach a handler. (An empty body may say anything:
            # aiohttp clients call it application/octet-stream.)
            if not is_json_media_type(ctype or "") and not _upload(request, ctype or "", origin is not None):
                return Refusal(415, "unsupported_media_type", f"{request.method} bodies must be application/json "
                               f"(got {(ctype or 'no Content-Type')[:100]})", detail=(ctype or "")[:100])
        return None

    @staticmethod
    def _own(origin: tuple[str, str, int], host: tuple[str, int | None] | None) -> bool:
        """The page came from the name and port the request was sent to (http, or https through
        a proxy)."""
        if host is None:
            return False
        scheme, name, port = origin
        return name == host[0] and port == (host[1] or _DEFAULT_PORT[scheme])


#: Where a file may be posted as multipart/form-data (audio: ``curl -F file=@clip.wav``, the
#: dashboard's push-to-talk).
UPLOAD_PATHS = frozenset({"/api/infer", "/api/voice"})


def _upload(request: web.Request, ctype: str, origin_checked: bool) -> bool:
    """A multipart upload is let through only where files are taken, and only from the hub's own
    pages (their Origin was checked above) or from a client that is not a browser page at all
    (no Origin, no Fetch Metadata: curl, the CLI). A form on another site that some browser sends
    without an Origin still says ``Sec-Fetch-Site``, and is refused."""
    if ctype.split(";", 1)[0].strip().lower() != "multipart/form-data" or request.path not in UPLOAD_PATHS:
        return False
    return origin_checked or request.headers.get("Sec-Fetch-Site") in (None, "same-origin")


def _link_to_page(request: web.Request) -> bool:
    """A link from another site to the dashboard itself is fine; anything under /api/ is not."""
    return (request.method in ("GET", "HEAD") and request.headers.get("Sec-Fetch-Mode") == "navigate"
            and not request.path.startswith("/api/"))


# -- the token --------------------------------------------------------------------------------------

class Guard:
    def __init__(self, admin: AdminToken, configured: str | None, mode: str, max_failures: int = 10,
                 window_s: float = 60.0) -> None:
        self.admin, self.configured, self.mode = admin, configured, mode
        self.failures = FailureWindow(max_failures, window_s)

    def needs_token(self, request: web.Request) -> bool:
        if (request.method, request.path) in PUBLIC_WRITES:
            return False  # authorized by what it carries (a one-time pairing code), rate-limited there
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

    def check(self, request: web.Request) -> Refusal | None:
        """None when the request may go on; otherwise the refusal."""
        given = request.headers.get(hdrs.AUTHORIZATION)
        if given is not None:
            scheme, _, token = given.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                # Basic/Digest would be cached and replayed by browsers; an empty Bearer is a bug.
                return Refusal(401, "unsupported_auth_scheme", "only 'Authorization: Bearer <token>' is accepted "
                               "(another scheme, or no token after Bearer)")
        else:  # query tokens only for the websocket (browsers cannot set its headers; they end up in logs)
            token = request.query.get("token", "") if request.path == "/api/ws" else ""
        if token:
            # Validity first: a right token is never refused, whatever wrong ones others sent.
            return None if self.valid(token) else self._wrong(request.remote or "?")
        if self.needs_token(request):
            return Refusal(401, "unauthorized", "this request needs the admin token (Authorization: Bearer …)")
        return None

    def _wrong(self, client: str) -> Refusal:
        """Count a wrong token from ``client``; past ``max_failures`` in the window, 429."""
        now = time.monotonic()
        wait = self.failures.wait_s(client, now)
        self.failures.add(client, now)  # still counted while refused: hammering keeps the window full
        if wait:
            retry = int(wait) + 1
            return Refusal(429, "too_many_failures", f"too many wrong tokens; retry in {retry} s",
                           {"Retry-After": str(retry)})
        return Refusal(401, "unauthorized", "wrong token")
