"""Grid carbon plugins against stand-in servers on loopback.

The UK Carbon Intensity API and Electricity Maps cannot be reached from here. The stand-ins
serve payloads shaped as their documentation shows them: for the UK API the examples of
carbon-intensity.github.io/api-definitions (``{"data": [{"from", "to", "intensity": {"forecast",
"actual", "index"}}]}``; regional: ``data[0].data[]`` for ``/regional/regionid/{id}`` and
``data.data[]`` for ``/regional/intensity/{from}/fw48h/regionid/{id}``); for Electricity Maps
the v3 reference (``/v3/carbon-intensity/latest`` → ``{"zone", "carbonIntensity", "datetime",
"updatedAt", …}``, ``/forecast`` → ``{"zone", "forecast": [{"carbonIntensity", "datetime"}]}``,
``auth-token`` header).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from .conftest import reading, serve_app, wait_for


def half_hours(n: int, values: Callable[[int], float], actual: float | None = None) -> list[dict[str, Any]]:
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 30)
    fmt = "%Y-%m-%dT%H:%MZ"
    return [{"from": (start + timedelta(minutes=30 * i)).strftime(fmt),
             "to": (start + timedelta(minutes=30 * (i + 1))).strftime(fmt),
             "intensity": {"forecast": values(i), "actual": actual if i == 0 else None, "index": "moderate"}}
            for i in range(n)]


@asynccontextmanager
async def serve(routes: dict[str, Callable[[web.Request], Any]]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    async with serve_app(app) as url:
        yield url


FAST = {"poll_interval_s": 1, "timeout_s": 0.4, "retries": 0}


async def test_uk_national_now_and_48h_forecast(mosquitto: Any, make_hub: Any) -> None:
    state = {"now": {"data": half_hours(1, lambda i: 266, actual=263)}, "status": 200, "delay": 0.0}

    async def now(_: web.Request) -> web.Response:
        await asyncio.sleep(state["delay"])
        if state["status"] != 200:
            return web.Response(status=state["status"], text="upstream error")
        return web.json_response(state["now"])

    async def fw48h(r: web.Request) -> web.Response:
        datetime.fromisoformat(r.match_info["start"].replace("Z", "+00:00"))  # the hub sends a real time
        return web.json_response({"data": half_hours(96, lambda i: 200 - i)})

    async with serve({"/intensity": now, "/intensity/{start}/fw48h": fw48h}) as url:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"ukcarbon": {**FAST, "base_url": url}}) as hub:
            await wait_for(lambda: reading(hub, "carbon_g_per_kwh") is not None, 30, what="carbon")
            snap = hub.energy_snapshot()
            assert snap.carbon_g_per_kwh == 263, "actual beats forecast"
            assert len(snap.carbon_forecast) == 96 and snap.carbon_forecast[1].value == 199
            assert snap.mode.value == "prefer_local"
            # Bad answers keep the last good value and say why.
            for status, body, delay, why in ((500, None, 0, "HTTP 500"),
                                             (200, {"data": []}, 0, "data is missing or empty"),
                                             (200, {"data": [{"intensity": {"forecast": "high"}}]}, 0,
                                              "intensity.forecast is not a number"),
                                             (200, {"data": half_hours(1, lambda i: -40)}, 0, "outside the plausible"),
                                             (200, None, 1.0, "no answer within")):
                state["status"], state["delay"] = status, delay
                if body is not None:
                    state["now"] = body
                await wait_for(lambda why=why: why in hub.energy.inputs["carbon_g_per_kwh"].error, 60, what=why)
                assert hub.energy.inputs["carbon_g_per_kwh"].value == 263
            # Recovery, and a clean grid.
            state["status"], state["delay"], state["now"] = 200, 0.0, {"data": half_hours(1, lambda i: 85)}
            await wait_for(lambda: hub.energy_snapshot().mode.value == "clean_grid", 60, what="clean grid")
            assert not hub.energy.inputs["carbon_g_per_kwh"].error


async def test_uk_regional(mosquitto: Any, make_hub: Any) -> None:
    async def region(r: web.Request) -> web.Response:
        assert r.match_info["id"] == "13"
        return web.json_response({"data": [{"regionid": 13, "dnoregion": "UKPN London", "shortname": "London",
                                            "data": half_hours(1, lambda i: 141)}]})

    async def fw48h(r: web.Request) -> web.Response:
        return web.json_response({"data": {"regionid": 13, "shortname": "London",
                                           "data": half_hours(96, lambda i: 141 + i)}})

    async with serve({"/regional/regionid/{id}": region,
                      "/regional/intensity/{start}/fw48h/regionid/{id}": fw48h}) as url:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"ukcarbon": {**FAST, "base_url": url, "region_id": 13}}) as hub:
            await wait_for(lambda: reading(hub, "carbon_g_per_kwh") is not None, 30, what="regional carbon")
            assert hub.energy_snapshot().carbon_g_per_kwh == 141
            assert hub.energy.forecasts["carbon_g_per_kwh"][-1].value == 141 + 95


async def test_electricity_maps_latest_forecast_and_token(mosquitto: Any, make_hub: Any) -> None:
    token = {"expected": "secret-token"}

    def authorised(r: web.Request) -> bool:
        return r.headers.get("auth-token") == token["expected"]

    async def latest(r: web.Request) -> web.Response:
        if not authorised(r):
            return web.json_response({"message": "Invalid token"}, status=401)
        assert r.query["zone"] == "DE"
        return web.json_response({"zone": "DE", "carbonIntensity": 302, "datetime": "2026-11-24T02:00:00.000Z",
                                  "updatedAt": "2026-11-24T02:08:01.000Z", "emissionFactorType": "lifecycle",
                                  "isEstimated": True, "estimationMethod": "TIME_SLICER_AVERAGE"})

    async def forecast(r: web.Request) -> web.Response:
        if not authorised(r):
            return web.json_response({"message": "Invalid token"}, status=401)
        start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        return web.json_response({"zone": "DE", "updatedAt": start.isoformat(), "forecast": [
            {"carbonIntensity": 300 - 5 * i, "datetime": (start + timedelta(hours=i)).isoformat().replace("+00:00", "Z")}
            for i in range(24)]})

    async with serve({"/v3/carbon-intensity/latest": latest, "/v3/carbon-intensity/forecast": forecast}) as url:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"electricitymaps": {**FAST, "base_url": url, "zone": "DE",
                                                         "token": "secret-token"}}) as hub:
            await wait_for(lambda: reading(hub, "carbon_g_per_kwh") is not None, 30, what="carbon")
            assert hub.energy_snapshot().carbon_g_per_kwh == 302
            fc = hub.energy.forecasts["carbon_g_per_kwh"]
            assert len(fc) == 24 and fc[0].end - fc[0].start == 3600 and fc[-1].value == 185
            token["expected"] = "rotated"
            await wait_for(lambda: "HTTP 401: token refused" in hub.energy.inputs["carbon_g_per_kwh"].error, 30,
                           what="token refused")
            assert hub.energy.inputs["carbon_g_per_kwh"].value == 302


async def test_electricity_maps_needs_a_token(mosquitto: Any, make_hub: Any, monkeypatch: Any) -> None:
    import pytest

    from hub.config import ConfigError
    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"plugins\.electricitymaps: token is required"):
        async with make_hub(mosquitto.url, plugins={"electricitymaps": {"zone": "DE"}}):
            pass
