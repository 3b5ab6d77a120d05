"""Actions also go to Home Assistant's intent API (``POST /api/intent/handle``, enabled by its
``intent:`` integration) when ``homeassistant_url`` is set. Home Assistant cannot run here: a
stand-in serves the endpoint as its REST API documentation describes it (a long-lived access
token as a Bearer header, ``{"name": <intent>, "data": {<slots>}}`` in, the intent response out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .conftest import serve_app

TOKEN = "ha-long-lived-token-for-tests"


async def say(hub: Any, text: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(hub.http_url + "/api/voice", json={"text": text}) as r:
            assert r.status == 200
            return await r.json()


async def test_actions_reach_home_assistant_with_its_token(tmp_path: Path, make_hub: Any, mosquitto: Any) -> None:
    received: list[tuple[str | None, Any]] = []
    answer = {"status": 200}

    async def handle(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if answer["status"] != 200:
            return web.Response(status=answer["status"], text="Intent handling failed")
        return web.json_response({"speech": {"plain": {"speech": "Turned off the light", "extra_data": None}},
                                  "card": {}, "language": "en", "response_type": "action_done", "data": {}})

    app = web.Application()
    app.router.add_post("/api/intent/handle", handle)
    token_file = tmp_path / "ha-token"
    token_file.write_text(TOKEN + "\n")
    async with serve_app(app) as ha_url:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"voice": {"homeassistant_url": ha_url,
                                               "homeassistant_token_file": str(token_file)}}) as hub:
            u = await say(hub, "turn off the kitchen light")
            assert (u["layer"], u["status"]) == ("hassil", "published")
            (auth, body), = received
            assert auth == f"Bearer {TOKEN}"
            assert body["name"] == "HassTurnOff" and body["data"]["name"] == "Kitchen Light"
            assert "domain" not in body["data"], "Home Assistant's intent data has no domain key here"
            publish = [s for s in u["stages"] if s["name"] == "publish"][0]
            assert "note" not in publish

            # Home Assistant refusing is said in the publish stage; the action still went out on MQTT.
            answer["status"] = 500
            u = await say(hub, "turn on the kitchen light")
            note = [s for s in u["stages"] if s["name"] == "publish"][0]["note"]
            assert u["status"] == "published" and "Home Assistant answered 500" in note

            # Held actions reach Home Assistant only once confirmed.
            answer["status"] = 200
            held = await say(hub, "unlock the front door")
            assert held["status"] == "awaiting_confirmation" and len(received) == 2
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{hub.http_url}/api/voice/{held['id']}/confirm", json={"confirm": True}) as r:
                    assert r.status == 200 and (await r.json())["status"] == "published"
            assert received[-1][1]["name"] == "HassTurnOff" and received[-1][1]["data"]["name"] == "Front Door"

    # Home Assistant gone: the note says it could not be reached.
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"voice": {"homeassistant_url": ha_url,
                                           "homeassistant_token_file": str(token_file)}}) as hub:
        u = await say(hub, "turn off the kitchen light")
        note = [s for s in u["stages"] if s["name"] == "publish"][0]["note"]
        assert u["status"] == "published" and "Home Assistant unreachable" in note
