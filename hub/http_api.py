"""The hub's HTTP API (aiohttp). Routes and payloads are documented in docs/protocol.md."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiohttp import BodyPartReader, web

from . import __version__
from pydantic import BaseModel, ConfigDict, ValidationError

from .auth import Guard, Refusal, SameOrigin
from .capability import KNOWN_TASKS, is_valid_device_id
from .config import format_validation_error
from .dispatch import audio_seconds
from .memory.schema import SearchRequest
from .memory.service import Memory
from .router.request import InferOutcome, InferRequest, RequestError
from .energy.forecast import NoWindow, best_window, covered_until, fit_defaults, mean_over, no_window_hint
from .pairing_api import PairingHub, add_pairing_routes
from .router.learner import FeedbackError
from .router.model import AUDIO_TASKS, Candidate, FleetSnapshot, RouteDecision, TaskRequest
from .router.route import counterfactual_document, route, rule_decision
from .rpc import CALLER_ERRORS

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .deferred import DeferredStore
    from .energy.model import EnergySnapshot
    from .energy.store import EnergyStore
    from .history import SqliteHistory
    from .influx import InfluxWriter
    from .live import LiveFeed
    from .mqtt import MqttLink
    from .plugins import PluginManager
    from .power.manager import PowerManager
    from .router.cache import ResultCache
    from .router.learner import PromptLearner
    from .router.ledger import Ledger
    from .router.rules import RuleBook
    from .router.stats import StatsStore
    from .state import StateStore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)


class ApiHub(PairingHub, Protocol):
    """What the HTTP API uses of the hub, the pairing routes' needs included (hub/runtime.py's
    ``Hub`` is one)."""

    guard: Guard
    state: StateStore
    mqtt: MqttLink | None
    energy: EnergyStore
    history: SqliteHistory
    influx: InfluxWriter | None
    dispatcher: Dispatcher
    deferred_store: DeferredStore
    stats: StatsStore
    learner: PromptLearner
    rules: RuleBook
    cache: ResultCache
    ledger: Ledger
    memory: Memory
    live: LiveFeed
    plugins: PluginManager | None
    power: PowerManager
    plugin_routes: list[tuple[str, str, Any]]
    security_warnings: list[str]
    started_monotonic: float

    def fleet(self) -> FleetSnapshot: ...

    def energy_snapshot(self) -> EnergySnapshot: ...

    async def forget_device(self, device_id: str, reason: str) -> bool: ...


def _path_safe(value: str) -> bool:
    """Nothing a path variable could use to leave its place if it ever became a file name."""
    return value not in (".", "..") and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in value)


#: The id in each route's path, by the route's canonical path: (test, what it must be).
ID_FORMATS: dict[str, tuple[Callable[[str], object], str]] = {
    "/api/devices/{id}": (is_valid_device_id, "a device id is 1-64 letters, digits, '_', '.' or '-', starting "
                          "with a letter or digit"),
    "/api/devices/{id}/reset": (is_valid_device_id, "a device id is 1-64 letters, digits, '_', '.' or '-', "
                                "starting with a letter or digit"),
    "/api/power/{id}": (is_valid_device_id, "a device id is 1-64 letters, digits, '_', '.' or '-', starting "
                        "with a letter or digit"),
    "/api/deferred/{id}": (lambda v: len(v) <= 128, "a request id is 1-128 characters"),
    "/api/feedback/{id}": (lambda v: len(v) <= 128, "a request id is 1-128 characters"),
    "/api/rules/{id}/{action}": (re.compile(r"[0-9a-f]{12}").fullmatch, "a rule id is 12 lowercase hex digits"),
}


def check_ids(request: web.Request) -> Refusal | None:
    """Every path variable is checked before any handler (plugins' included): never '/', '\\',
    a control character, '.' or '..'; and the ids of the hub's own routes have their format."""
    resource = request.match_info.route.resource
    fmt = ID_FORMATS.get(resource.canonical if resource is not None else "")
    for name, value in request.match_info.items():
        if not _path_safe(value) or (fmt is not None and name == "id" and not fmt[0](value)):
            why = fmt[1] if fmt is not None and name == "id" and _path_safe(value) else \
                "no '/', '\\', control characters, '.' or '..'"
            return Refusal(400, "bad_id", f"bad {name} {value[:80]!r} in the path: {why}", detail=value[:80])
    return None


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class PowerCommand(BaseModel):
    """The body of ``POST /api/power/{id}``: wake the device or put it to sleep now."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["wake", "sleep"]


def make_app(hub: ApiHub) -> web.Application:
    guard = hub.guard
    http = hub.config.http
    same_origin = SameOrigin(http.allowed_hosts, http.allowed_origins, http.host)
    warned: set[tuple[str, str]] = set()

    def refuse(request: web.Request, r: Refusal) -> web.Response:
        hub.state.count("http_refused")
        hub.state.count(f"http_refused.{r.code}")
        # A refused name or origin is most likely a setting to make: say so once per value (a
        # flood of them must not flood the log); every other refusal only at debug.
        first = r.code in ("bad_host", "cross_origin") and (r.code, r.detail) not in warned and len(warned) < 256
        if first:
            warned.add((r.code, r.detail))
        log.log(logging.WARNING if first else logging.DEBUG, "refused %s %s from %s: %s %s", request.method,
                request.path[:200], request.remote, r.code, r.message)
        return r.response()

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Browser checks before the token: a cross-site page's wrong tokens never count against
        # the client address it shares with the real user (loopback).
        refusal = same_origin.check(request)
        if refusal is None and request.path.startswith("/api/"):
            refusal = guard.check(request) or check_ids(request)
        if refusal is not None:
            return refuse(request, refusal)
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
            raise

    # Bodies up to the input cap as JSON text (escaping can double it) plus the envelope; the
    # dispatcher checks the decoded input against the cap itself.
    app = web.Application(middlewares=[errors, security], client_max_size=hub.config.dispatch.max_body_bytes())

    async def health(request: web.Request) -> web.Response:
        return web.json_response(health_document(hub))

    async def devices(request: web.Request) -> web.Response:
        recs = sorted(hub.registry.all(), key=lambda r: (not r.online, r.capability.tier.rank, r.id))
        return web.json_response({"devices": [hub.registry.document(r) for r in recs]})

    async def device(request: web.Request) -> web.Response:
        rec = hub.registry.get(request.match_info["id"])
        if rec is None:
            return error(404, "unknown_device", f"no device with id {request.match_info['id']!r}")
        return web.json_response(hub.registry.document(rec))

    async def delete_device(request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if not await hub.forget_device(device_id, "deleted through the HTTP API"):
            return error(404, "unknown_device", f"no device with id {device_id!r}")
        return web.json_response({"deleted": device_id})

    async def energy(request: web.Request) -> web.Response:
        return web.Response(body=hub.energy_snapshot().model_dump_json(), content_type="application/json")

    async def energy_history(request: web.Request) -> web.Response:
        q = request.query
        now = time.time()
        try:
            metric = q.get("metric", "")
            if not metric:
                raise ValueError(f"metric is required (recorded: {', '.join(hub.history.metrics()) or 'none yet'})")
            since = parse_time(q.get("since", "-24h"), now)
            until = parse_time(q.get("until", "now"), now)
            step = parse_duration(q.get("step", "5m"))
            if until <= since:
                raise ValueError("until must be after since")
            if (until - since) / step > 100_000:
                raise ValueError(f"{(until - since) / step:.0f} steps requested; at most 100000 (raise step)")
        except ValueError as exc:
            return error(400, "bad_request", str(exc))
        buckets = await asyncio.to_thread(hub.history.query, metric, since, until, step, now)
        return web.json_response({"metric": metric, "since": since, "until": until, "step": step,
                                  "points": [{"t": b.t, "mean": b.mean, "min": b.min, "max": b.max, "n": b.n}
                                             for b in buckets]})

    async def best_window_route(request: web.Request) -> web.Response:
        q = request.query
        now = time.time()
        by = q.get("by", "carbon")
        metric = {"carbon": "carbon_g_per_kwh", "price": "price_per_kwh"}.get(by)
        points = hub.energy.forecasts.get(metric or "", [])
        what = f"{by} forecast"
        try:
            if metric is None:
                raise ValueError(f"by must be carbon or price, got {by!r}")
            duration = parse_duration(q["duration"]) if "duration" in q else None
            deadline = parse_deadline(q["deadline"], now) if "deadline" in q else None
            # Left out: 1 h within 24 h, or what the forecast the hub holds can answer (the demo's
            # replayed forecast reaches minutes ahead).
            duration, deadline, notes = fit_defaults(points, now, duration, deadline, what)
            window = best_window(points, duration, now, deadline)
        except NoWindow as exc:
            return error(422, "no_window", f"{exc}; {no_window_hint(points, now, what)}")
        except ValueError as exc:
            return error(400, "bad_request", str(exc))
        now_mean = mean_over(points, now, now + duration)
        return web.json_response({"by": by, "start": window.start, "end": window.end, "mean": window.mean,
                                  "if_started_now": now_mean, "wait_s": round(window.start - now, 3),
                                  "duration_s": duration, "deadline": deadline,
                                  "forecast_until": covered_until(points, now), "notes": notes})

    async def route_dry_run(request: web.Request) -> web.Response:
        try:
            req = TaskRequest.model_validate_json(await request.read())
            if req.task in AUDIO_TASKS and req.data is not None and req.audio_s is None:
                req = req.model_copy(update={"audio_s": audio_seconds(req, hub.fleet())})
        except ValidationError as exc:
            return error(400, "bad_request", format_validation_error(exc).replace("\n", "; "))
        except RequestError as exc:
            return error(exc.status, exc.code, exc.message)
        rule = hub.rules.find(req)
        if rule is not None:
            decision = rule_decision(req, rule.id, rule.answer, hub.config.router.policy)
        else:
            estimate = hub.learner.estimate(req.task, req.text)
            decision = route(req, hub.fleet(), hub.config.router, hub.stats.snapshot(),
                             estimate.quality if estimate is not None else None)
        return web.json_response(decision_document(decision))

    async def infer(request: web.Request) -> web.StreamResponse:
        try:
            if request.content_type.startswith("multipart/"):
                req = await _multipart_request(request)
            else:
                req = InferRequest.model_validate_json(await request.read())
            req = hub.dispatcher.check(req)
        except ValidationError as exc:
            return error(400, "bad_request", format_validation_error(exc).replace("\n", "; "))
        except RequestError as exc:
            return error(exc.status, exc.code, exc.message)
        if not req.stream:
            outcome = await hub.dispatcher.infer(req)
            return _outcome_response(outcome)
        # Streamed: one JSON object per line (NDJSON, as Ollama does): chunks, then the outcome.
        # The status goes with the first chunk, so that a refusal before any text keeps its own
        # (400, 503 with Retry-After...).
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})

        gone = False

        async def emit(text: str) -> None:
            nonlocal gone
            if gone:
                return
            try:
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(json.dumps({"chunk": text}).encode() + b"\n")
            except (ConnectionError, RuntimeError):
                # The client went away: the task still finishes, and is learned from and cached.
                gone = True

        outcome = await hub.dispatcher.infer(req, emit)
        if not resp.prepared and not outcome.ok:
            return _outcome_response(outcome)
        if not gone:
            try:
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(json.dumps({"done": True, **outcome.to_dict()}).encode() + b"\n")
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        return resp

    async def reset_device(request: web.Request) -> web.Response:
        """Clear a device's cooldowns and failure counts (an operator fixed it)."""
        device_id = request.match_info["id"]
        if hub.registry.get(device_id) is None and not hub.stats.knows(device_id):
            return error(404, "unknown_device", f"no device with id {device_id!r}")
        pairs = hub.stats.reset(device_id)
        hub.stats.flush()
        return web.json_response({"reset": device_id, "pairs": pairs})

    async def costs(request: web.Request) -> web.Response:
        report = await asyncio.to_thread(hub.ledger.periods)
        report["cache"] = {"hits": hub.cache.hits, "misses": hub.cache.misses}
        report["counterfactual"] = counterfactual_document(hub.config.router)  # which price "all cloud" uses
        return web.json_response(report)

    async def deferred(request: web.Request) -> web.Response:
        return web.json_response({"deferred": await asyncio.to_thread(hub.deferred_store.list)})

    async def deferred_one(request: web.Request) -> web.Response:
        doc = await asyncio.to_thread(hub.deferred_store.get, request.match_info["id"])
        if doc is None:
            return error(404, "unknown_request", f"no deferred request with id {request.match_info['id']!r} "
                                                 "(never deferred, or finished more than a day ago)")
        return web.json_response(doc)

    async def rules(request: web.Request) -> web.Response:
        return web.json_response({"rules": [r.to_dict() for r in hub.rules.all()]})

    async def rule_state(request: web.Request) -> web.Response:
        state = {"approve": "approved", "disable": "disabled"}[request.match_info["action"]]
        rule = hub.rules.set_state(request.match_info["id"], state)  # type: ignore[arg-type]
        if rule is None:
            return error(404, "unknown_rule", f"no rule with id {request.match_info['id']!r}")
        return web.json_response(rule.to_dict())

    async def feedback(request: web.Request) -> web.Response:
        """A person's thumbs up or down on an answer: an outcome the per-prompt predictor learns."""
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError as exc:
            return error(400, "bad_request", f"body: not JSON ({exc})")
        rating = body.get("rating") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) != {"rating"} or rating not in ("up", "down"):
            return error(400, "bad_request", 'body: expected {"rating": "up"} or {"rating": "down"}, nothing else')
        try:
            doc = hub.learner.feedback(request.match_info["id"], rating, time.time())
        except FeedbackError as exc:
            return error(exc.status, exc.code, exc.message)
        return web.json_response(doc)

    async def feedback_status(request: web.Request) -> web.Response:
        return web.json_response(hub.learner.status())

    async def power(request: web.Request) -> web.Response:
        return web.json_response(hub.power.status())

    async def power_command(request: web.Request) -> web.Response:
        """Wake a device or put it to sleep now, whatever the plan says; answered once it is
        back (or given up on) or has agreed to sleep (or refused)."""
        device_id = request.match_info["id"]
        try:
            cmd = PowerCommand.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return error(400, "bad_request", "body: " + format_validation_error(exc).replace("\n", "; "))
        rec = hub.registry.get(device_id)
        if rec is None:
            return error(404, "unknown_device", f"no device with id {device_id!r}")
        if not hub.pairing.is_trusted(device_id):
            return error(409, "not_paired", f"{device_id} is not paired: the hub manages only its paired devices")
        if cmd.action == "sleep" and not rec.online:
            if rec.sleeping:
                return web.json_response({"device": device_id, "ok": True, "result": "already asleep"})
            return error(409, "offline", f"{device_id} is offline: only an awake device can be asked to sleep")
        doc = await hub.power.command(device_id, cmd.action)
        if doc["ok"]:
            return web.json_response(doc)
        code = "not_woken" if cmd.action == "wake" else "sleep_refused"
        return web.json_response({**doc, "error": {"code": code, "message": doc["result"]}}, status=409)

    async def clear_cache(request: web.Request) -> web.Response:
        """Forget cached answers, of one task (``?task=``) or all: how many were removed."""
        task = request.query.get("task") or None
        if task is not None and task not in KNOWN_TASKS:
            return error(400, "bad_request", f"task: unknown task {task[:40]!r} (known: {', '.join(KNOWN_TASKS)})")
        removed = await asyncio.to_thread(hub.cache.clear, task)
        log.info("cache cleared%s: %d answers removed", f" for {task}" if task else "", removed)
        return web.json_response({"removed": removed, "task": task})

    async def search(request: web.Request) -> web.Response:
        """Hybrid search of the notes and repositories: ``q`` (required), ``k`` (1-50, default
        10), ``source`` and ``kind`` (note | code | commit) to narrow it; in the query string
        (GET) or as a JSON body (POST, for a query longer than a URL)."""
        try:
            if request.method == "POST":
                body = SearchRequest.model_validate_json(await request.read())
            else:
                query = {k: v for k, v in request.query.items() if v != "" or k == "q"}
                if "q" not in query:
                    return error(400, "bad_request", "q: the query is required (GET /api/search?q=...)")
                body = SearchRequest.model_validate(query)
        except ValidationError as exc:
            return error(400, "bad_request", format_validation_error(exc).replace("\n", "; "))
        try:
            return web.json_response(await hub.memory.search(body.q, body.k, body.source, body.kind))
        except RequestError as exc:
            return error(exc.status, exc.code, exc.message)

    async def memory_status(request: web.Request) -> web.Response:
        return web.json_response(hub.memory.status())

    async def memory_reindex(request: web.Request) -> web.Response:
        """Scan now (``?source=`` one source) instead of at the next interval."""
        try:
            names = hub.memory.reindex(request.query.get("source") or None)
        except RequestError as exc:
            return error(exc.status, exc.code, exc.message)
        return web.json_response({"scanning": names}, status=202)

    app.router.add_get("/api/search", search)
    app.router.add_post("/api/search", search)
    app.router.add_get("/api/memory", memory_status)
    app.router.add_post("/api/memory/reindex", memory_reindex)
    app.router.add_delete("/api/cache", clear_cache)
    app.router.add_get("/api/rules", rules)
    app.router.add_post(r"/api/rules/{id}/{action:approve|disable}", rule_state)
    app.router.add_post("/api/route", route_dry_run)
    app.router.add_post("/api/infer", infer)
    app.router.add_post("/api/feedback/{id}", feedback)
    app.router.add_get("/api/feedback", feedback_status)
    app.router.add_get("/api/ws", hub.live.handler)
    web_dir = Path(__file__).resolve().parent / "web"

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(web_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_static("/static/", web_dir, follow_symlinks=False)
    app.router.add_get("/api/costs", costs)
    app.router.add_get("/api/deferred", deferred)
    app.router.add_get("/api/deferred/{id}", deferred_one)
    app.router.add_get("/api/energy", energy)
    app.router.add_get("/api/energy/best-window", best_window_route)
    app.router.add_get("/api/energy/history", energy_history)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/devices", devices)
    app.router.add_get("/api/devices/{id}", device)
    app.router.add_delete("/api/devices/{id}", delete_device)
    app.router.add_post("/api/devices/{id}/reset", reset_device)
    app.router.add_get("/api/power", power)
    app.router.add_post("/api/power/{id}", power_command)
    add_pairing_routes(app, hub)
    for method, path, handler in hub.plugin_routes:
        app.router.add_route(method, path, handler)
    return app


async def _multipart_request(request: web.Request) -> InferRequest:
    """``POST /api/infer`` as a form upload (``curl -F request='{"task": "transcribe"}' -F
    file=@clip.wav``): part ``file`` is the input, sent as ``data``; part ``request`` (optional,
    JSON) has the other fields; without it the task is ``transcribe``."""
    fields: dict[str, Any] = {}
    payload: bytes | None = None
    async for part in await request.multipart():
        if not isinstance(part, BodyPartReader):
            raise RequestError("bad_request", "nested multipart is not supported")
        if part.name == "file":
            payload = bytes(await part.read(decode=False))
        elif part.name == "request":
            try:
                fields = json.loads(await part.text())
            except ValueError as exc:
                raise RequestError("bad_request", f"part 'request' is not JSON: {exc}") from None
            if not isinstance(fields, dict) or "data" in fields:
                raise RequestError("bad_request", "part 'request' must be a JSON object without data "
                                                  "(the input is part 'file')")
        else:
            raise RequestError("bad_request", f"unknown part {part.name!r} (file, request)")
    if payload is None:
        raise RequestError("bad_request", "no part 'file' (the input)")
    fields.setdefault("task", "transcribe")
    return InferRequest.model_validate({**fields, "data": base64.b64encode(payload).decode()})


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``2h``, ``7d`` → seconds (> 0)."""
    text = text.strip()
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 5m, 2h, 7d)") from None
    if not value > 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return value


def parse_time(text: str, now: float) -> float:
    """Unix seconds, ISO 8601, ``now``, or a negative duration relative to now (``-24h``)."""
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("-"):
        return now - parse_duration(text[1:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (Unix seconds, ISO 8601, now, or -24h)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_deadline(text: str, now: float) -> float:
    """A duration from now with its unit (``90m``, ``12h``) or a time (Unix seconds, ISO 8601)."""
    if text.strip()[-1:] in _UNITS:
        return now + parse_duration(text)
    return parse_time(text, now)


def _status(outcome: InferOutcome) -> int:
    if outcome.ok:
        return 200
    code = (outcome.error or {}).get("code") or ""
    return CALLER_ERRORS.get(code) or {"no_route": 503, "overloaded": 503, "timeout": 504,
                                             "memory_unavailable": 503, "index_mismatch": 409}.get(code, 502)


def _outcome_response(outcome: InferOutcome) -> web.Response:
    retry = (outcome.error or {}).get("retry_after_s")
    headers = {"Retry-After": str(math.ceil(retry))} if retry else None
    return web.json_response(outcome.to_dict(), status=_status(outcome), headers=headers)


def decision_document(d: RouteDecision) -> dict[str, Any]:
    def cand(c: Candidate) -> dict[str, Any]:
        return {"device": c.device_id, "model": c.model, "runtime": c.runtime, "tier": c.tier.value,
                "p50_ms": c.p50_ms, "p95_ms": c.p95_ms, "joules": c.joules, "gco2": c.gco2, "cost": c.cost,
                "quality": c.quality, "score": round(c.score, 6), "within_budget": c.within_budget,
                "reasons": list(c.reasons)}

    return {"request_id": d.request_id, "task": d.task, "policy": d.policy, "min_tier": d.min_tier.value,
            "chosen": cand(d.chosen) if d.chosen else None, "chain": [cand(c) for c in d.chain],
            "excluded": [{"device": e.device_id, "model": e.model, "reason": e.reason} for e in d.excluded],
            "reasons": list(d.reasons)}


def health_document(hub: ApiHub) -> dict[str, Any]:
    recs = hub.registry.all()
    counters = {"rejected_messages": 0, "ignored_messages": 0, "mqtt_messages": 0, "discovery_errors": 0,
                "rejected_readings": 0}
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
        "devices": {"total": len(recs), "online": sum(r.online for r in recs),
                    "pending": sum(not hub.pairing.is_trusted(r.id) for r in recs)},
        "pairing": {"required": hub.config.pairing.required, "paired": len(hub.trust.paired_devices()),
                    "open_codes": hub.trust.open_codes()},
        "security_warnings": hub.security_warnings,
        "counters": counters,
        "recent_rejections": hub.rejections.last[-5:],
        "plugins": [s.to_dict() for s in hub.plugins.statuses.values()] if hub.plugins else [],
        "history": {"sqlite": "ok", "influx": hub.influx.status() if hub.influx is not None else None},
    }
