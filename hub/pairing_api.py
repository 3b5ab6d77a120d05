"""HTTP routes for pairing (hub/trust.py; docs/security.md, docs/protocol.md).

``POST /api/pair`` is the one write that needs no admin token: the one-time code *is* the
authorization, so wrong codes are rate-limited per client address. Every other route here is
an admin write or read behind the usual token rules.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .capability import is_valid_device_id
from .config import HubConfig, format_validation_error, is_loopback
from .ratelimit import FailureWindow
from .trust import Role, TrustError, TrustStore

if TYPE_CHECKING:
    from .broker import EmbeddedBroker
    from .pairing import Pairing
    from .registry import DeviceRegistry
    from .rejects import Rejections
    from .topics import Topics

class PairingHub(Protocol):
    """What the pairing routes use of the hub (hub/runtime.py's ``Hub`` is one)."""

    config: HubConfig
    topics: Topics
    registry: DeviceRegistry
    rejections: Rejections
    trust: TrustStore
    pairing: Pairing
    embedded_broker: EmbeddedBroker | None
    broker_url: str

    async def unpair(self, device_id: str) -> bool: ...


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRequest(_Body):
    ttl_s: float | None = Field(default=None, ge=10, le=7 * 86_400)
    device_id: str | None = Field(default=None, max_length=64)


class PairRequest(_Body):
    code: str = Field(min_length=4, max_length=64)
    device_id: str = Field(min_length=1, max_length=64)


class ClientRequest(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    role: Role = Role.client
    publish: list[str] = Field(default_factory=list, max_length=32)
    subscribe: list[str] = Field(default_factory=list, max_length=32)


async def _body(request: web.Request, model: type[_Body]) -> Any:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise web.HTTPBadRequest(text=format_validation_error(exc).replace("\n", "; ")) from None


def broker_url_for(hub: PairingHub, request: web.Request) -> str:
    """The broker address a pairing device should use: the name it reached this API by, when
    the broker listens beyond loopback; otherwise the broker's own address."""
    broker = hub.embedded_broker
    if broker is None:
        return hub.broker_url
    host = broker.connect_host if is_loopback(broker.cfg.host) else (request.url.host or broker.connect_host)
    if ":" in host:
        host = f"[{host}]"
    return f"{broker.url.scheme}://{host}:{broker.port}"


def add_pairing_routes(app: web.Application, hub: PairingHub) -> None:
    failures = FailureWindow(hub.config.pairing.max_failures_per_minute)

    async def new_code(request: web.Request) -> web.Response:
        body = await _body(request, CodeRequest)
        ttl = body.ttl_s or hub.config.pairing.code_ttl_s
        try:
            code = hub.trust.new_code(ttl, body.device_id)
        except TrustError as exc:
            return _error(400, "bad_request", str(exc))
        api = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        return web.json_response({
            "code": code, "expires_at": time.time() + ttl, "device_id": body.device_id,
            "agent_command": f"sovereign agent --hub {api} --pair {code}"
                             + (f" --id {body.device_id}" if body.device_id else ""),
        }, status=201)

    async def pair(request: web.Request) -> web.Response:
        client, now = request.remote or "?", time.monotonic()
        wait = failures.wait_s(client, now)
        if wait:
            retry = int(wait) + 1
            return _error(429, "too_many_failures", f"too many wrong pairing codes; retry in {retry} s",
                          {"Retry-After": str(retry)})
        body = await _body(request, PairRequest)
        try:
            issued = hub.pairing.redeem(body.code, body.device_id)
        except TrustError as exc:
            failures.add(client, now)
            hub.rejections.reject(f"pairing request from {client}", str(exc), counter="pairing_refused")
            return _error(403, "pairing_refused", str(exc))
        external = hub.embedded_broker is None
        return web.json_response({
            "device_id": body.device_id, "topic_root": hub.topics.root,
            "broker_url": broker_url_for(hub, request),
            # An external broker's logins are its administrator's: the hub can only trust the id.
            "username": None if external else issued.username,
            "password": None if external else issued.password,
            "ca_pem": hub.embedded_broker.ca_pem() if hub.embedded_broker else None,
        })

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({
            "required": hub.config.pairing.required, "open_codes": hub.trust.open_codes(),
            "credentials": [c.public() for c in hub.trust.credentials()],
            "pending": sorted(r.id for r in hub.registry.all() if not hub.pairing.is_trusted(r.id)),
        })

    async def new_client(request: web.Request) -> web.Response:
        body = await _body(request, ClientRequest)
        if body.role not in (Role.client, Role.homeassistant):
            return _error(400, "bad_request", "role must be client or homeassistant (devices pair with a code)")
        try:
            issued = hub.pairing.add_client(body.role, body.name, body.publish, body.subscribe)
        except TrustError as exc:
            return _error(400, "bad_request", str(exc))
        return web.json_response({"username": issued.username, "password": issued.password,
                                  "broker_url": broker_url_for(hub, request),
                                  "reply_namespace": f"{hub.topics.root}/reply/{issued.username}/",
                                  "ca_pem": hub.embedded_broker.ca_pem() if hub.embedded_broker else None},
                                 status=201)

    async def revoke_client(request: web.Request) -> web.Response:
        username = request.match_info["username"]
        if username.startswith(f"{Role.device.value}-"):
            return _error(400, "bad_request", "a device is unpaired with DELETE /api/devices/{id}/pairing")
        if not hub.pairing.revoke(username):
            return _error(404, "unknown_credential", f"no credential {username!r}")
        return web.json_response({"revoked": username})

    async def unpair(request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if not is_valid_device_id(device_id):
            return _error(400, "bad_id", f"invalid device id {device_id!r}")
        if not await hub.unpair(device_id):
            return _error(404, "unknown_device", f"device {device_id!r} is neither paired nor known")
        return web.json_response({"unpaired": device_id})

    app.router.add_post("/api/pair/codes", new_code)
    app.router.add_post("/api/pair", pair)
    app.router.add_get("/api/pairing", listing)
    app.router.add_post("/api/pairing/clients", new_client)
    app.router.add_delete("/api/pairing/clients/{username}", revoke_client)
    app.router.add_delete("/api/devices/{id}/pairing", unpair)
