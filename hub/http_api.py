"""The hub's HTTP API (aiohttp). Routes and payloads are documented in docs/protocol.md."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__

if TYPE_CHECKING:
    from .runtime import Hub

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def make_app(hub: "Hub") -> web.Application:
    token = hub.config.http.token

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
            raise

    app = web.Application(middlewares=[errors, auth], client_max_size=1024 * 1024)

    async def health(request: web.Request) -> web.Response:
        return web.json_response(health_document(hub))

    async def devices(request: web.Request) -> web.Response:
        recs = sorted(hub.registry.all(), key=lambda r: (not r.online, r.capability.tier.rank, r.id))
        return web.json_response({"devices": [r.to_dict() for r in recs]})

    async def device(request: web.Request) -> web.Response:
        rec = hub.registry.get(request.match_info["id"])
        if rec is None:
            return error(404, "unknown_device", f"no device with id {request.match_info['id']!r}")
        return web.json_response(rec.to_dict())

    async def delete_device(request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if not await hub.forget_device(device_id, "deleted through the HTTP API"):
            return error(404, "unknown_device", f"no device with id {device_id!r}")
        return web.json_response({"deleted": device_id})

    app.router.add_get("/api/health", health)
    app.router.add_get("/api/devices", devices)
    app.router.add_get("/api/devices/{id}", device)
    app.router.add_delete("/api/devices/{id}", delete_device)
    return app


def health_document(hub: "Hub") -> dict[str, Any]:
    recs = hub.registry.all()
    counters = {"rejected_messages": 0, "ignored_messages": 0, "mqtt_messages": 0, "discovery_errors": 0}
    counters.update(hub.state.counters)
    return {
        "status": "ok" if hub.mqtt is not None and hub.mqtt.connected.is_set() else "degraded",
        "version": __version__,
        "hub_id": hub.config.hub_id,
        "uptime_s": round(time.monotonic() - hub.started_monotonic, 3),
        "broker": {
            "url": hub.broker_url,
            "connected": bool(hub.mqtt and hub.mqtt.connected.is_set()),
            "embedded": hub.embedded_broker is not None,
            "reconnects": max(0, (hub.mqtt.connect_count if hub.mqtt else 0) - 1),
            "last_error": hub.mqtt.last_error if hub.mqtt else "",
        },
        "devices": {"total": len(recs), "online": sum(r.online for r in recs)},
        "counters": counters,
        "recent_rejections": hub.rejections.last[-5:],
        "plugins": [s.to_dict() for s in hub.plugins.statuses.values()] if hub.plugins else [],
    }
