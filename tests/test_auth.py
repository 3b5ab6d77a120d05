"""Who may use the API: the admin token made on the first run, the modes of
``http.require_token``, clients off the loopback, and rate limiting of wrong tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
from aiohttp.test_utils import make_mocked_request

from hub.auth import AdminToken, Guard


def request(method: str, path: str, peer: str, headers: dict[str, str] | None = None) -> Any:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (peer, 40000) if key == "peername" else default
    return make_mocked_request(method, path, headers=headers or {}, transport=transport)


def test_admin_token_is_made_once_and_kept_hashed(tmp_path: Path) -> None:
    admin = AdminToken(tmp_path / "admin-token.json")
    token = admin.ensure()
    assert token and len(token) >= 24 and token not in (tmp_path / "admin-token.json").read_text()
    assert (tmp_path / "admin-token.json").stat().st_mode & 0o777 == 0o600
    again = AdminToken(tmp_path / "admin-token.json")
    assert again.ensure() is None, "shown once: the second run does not make a new one"
    assert again.matches(token) and not again.matches(token + "x")


def test_modes_and_remote_clients(tmp_path: Path) -> None:
    admin = AdminToken(tmp_path / "t.json")
    token = admin.ensure()
    assert token
    writes = Guard(admin, None, "writes")
    assert writes.check(request("GET", "/api/devices", "127.0.0.1")) is None, "local reads are open"
    assert writes.check(request("POST", "/api/infer", "127.0.0.1")).status == 401, "every write needs it"
    assert writes.check(request("GET", "/api/devices", "192.168.1.50")).status == 401, "remote reads need it"
    assert writes.check(request("GET", "/api/devices", "192.168.1.50", {"Authorization": f"Bearer {token}"})) is None
    assert writes.check(request("GET", "/api/ws?token=" + token, "192.168.1.50")) is None, "the websocket's query token"
    assert writes.check(request("GET", "/api/devices?token=" + token, "192.168.1.50")).status == 401, \
        "query tokens only for the websocket (they end up in logs)"
    remote = Guard(admin, None, "remote")
    assert remote.check(request("POST", "/api/infer", "::1")) is None
    assert remote.check(request("POST", "/api/infer", "10.0.0.2")).status == 401
    configured = Guard(admin, "c" * 20, "always")
    assert configured.check(request("GET", "/api/devices", "127.0.0.1")).status == 401
    assert configured.check(request("GET", "/api/devices", "127.0.0.1", {"Authorization": "Bearer " + "c" * 20})) is None


async def test_wrong_tokens_are_rate_limited(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        http={"require_token": "writes", "max_failures_per_minute": 5}) as hub:
        token = hub.new_admin_token
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                async with s.post(hub.http_url + "/api/infer", json={"task": "echo", "text": "x"},
                                  headers={"Authorization": f"Bearer wrong-{i}"}) as r:
                    assert r.status == 401
            async with s.post(hub.http_url + "/api/infer", json={"task": "echo", "text": "x"},
                              headers={"Authorization": "Bearer wrong-again"}) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0, "more wrong tokens: refused for a while"
            async with s.post(hub.http_url + "/api/route", json={"task": "echo", "text": "x"},
                              headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, "the right token is never refused (tests/test_http_security.py)"
            async with s.get(hub.http_url + "/api/health") as r:
                assert r.status == 200, "a local read without a token is not a failure"
