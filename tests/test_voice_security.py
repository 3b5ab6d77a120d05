"""The voice plugin's doors refuse strangers: its HTTP routes need the admin token for writes and
refuse other sites' pages; a device may stream dictation only on its own topic."""

from __future__ import annotations

from typing import Any

import aiohttp

from hub.trust import Role, role_grants

from .test_http_security import call


async def test_voice_routes_refuse_without_a_token_and_from_other_sites(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"}) as hub:
        token = hub.new_admin_token
        url = hub.http_url + "/api/voice"
        async with aiohttp.ClientSession() as s:
            for path in ("", "/0123456789ab/confirm"):
                status, err = await call(s, "POST", url + path, json={"text": "unlock the front door"})
                assert status == 401, (path, err)
            auth = {"Authorization": f"Bearer {token}"}
            status, err = await call(s, "POST", url, json={"text": "unlock the front door"},
                                     headers={**auth, "Origin": "http://evil.example"})
            assert status == 403 and err["error"]["code"] == "cross_origin"
            upload = aiohttp.FormData()
            upload.add_field("audio", b"RIFF", filename="a.wav")
            status, err = await call(s, "POST", url, data=upload, headers={**auth, "Sec-Fetch-Site": "same-site"})
            assert status == 415 and err["error"]["code"] == "unsupported_media_type"
            status, listing = await call(s, "GET", url, headers=auth)
            assert status == 200 and listing["utterances"] == [], "nothing reached the pipeline"
            status, held = await call(s, "POST", url, json={"text": "unlock the front door"}, headers=auth)
            assert status == 200 and held["status"] == "awaiting_confirmation"


def test_a_device_streams_only_on_its_own_voice_topic() -> None:
    grants = role_grants(Role.device, "kitchen-tablet", "sovereign", None)
    writes = {t for access, t in grants if access == "write"}
    assert "sovereign/device/kitchen-tablet/voice" in writes
    assert not any("voice" in t and "kitchen-tablet" not in t for t in writes)
    client = role_grants(Role.client, "phone-app", "sovereign", None)
    assert ("write", "sovereign/cmd/#") in client, "commands (cmd/voice) are a command client's"
    assert not any(t.endswith("/voice") for _, t in client)
