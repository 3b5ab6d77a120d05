"""EEG biofeedback through BrainFlow: sessions over HTTP, MQTT and the CLI, causal real-time
band powers and a feedback score, recordings and reports.

- ``POST /api/eeg/sessions`` (body: any of the session keys below) → 201 the session;
  ``GET /api/eeg/sessions[/{id}]``; ``POST /api/eeg/sessions/{id}/pause|resume``;
  ``DELETE /api/eeg/sessions/{id}`` → the summary; ``POST /api/eeg/sessions/{id}/report`` →
  ``{"path": ".../report.png"}``.
- MQTT ``<root>/cmd/eeg``: ``{"action": "start" | "stop" | "pause" | "resume" | "list", "session": ID,
  ...session keys}``, answered like ``cmd/infer`` (response topic or ``reply_to``).
- Feedback on ``<root>/eeg/<session>/feedback`` (QoS 0) at ``update_hz``, and as bus events
  ``eeg.feedback`` for the dashboard.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.plugin_api import Message, Plugin, PluginConfig, PluginContext, PluginEvent, web

from .boards import BoardError, BoardSpec
from .processing import BANDS, ArtifactLimits, Protocol
from .session import EegSession, SessionOptions

BandName = Literal["delta", "theta", "alpha", "beta", "gamma"]
#: The synthetic board's channels are sine waves of up to ~900 µV: a scalp threshold would flag
#: them all. Real boards get the usual 200 µV peak-to-peak.
SYNTHETIC_HIGH_AMPLITUDE_UV = 2500.0


class SessionKeys(BaseModel):
    """What a session can be given (the plugin's config holds the defaults)."""

    model_config = ConfigDict(extra="forbid")
    board: str | None = None
    serial_port: str | None = None
    file: str | None = None
    master_board: str | None = None
    mac_address: str | None = None
    other_info: str | None = None
    protocol: Literal["alpha", "focus", "ratio"] | None = None
    numerator: list[BandName] | None = None
    denominator: list[BandName] | None = None
    baseline_s: float | None = Field(default=None, ge=0, le=600)
    window_s: float | None = Field(default=None, ge=0.25, le=10)
    update_hz: float | None = Field(default=None, ge=1, le=50)
    notch_hz: Literal[50, 60] | None = None
    poll_s: float | None = Field(default=None, ge=0.001, le=0.5)
    rail_uv: float | None = Field(default=None, gt=0)
    flat_uv: float | None = Field(default=None, ge=0)
    high_amplitude_uv: float | None = Field(default=None, gt=0)
    gaze_gate: bool | None = None


class EegConfig(PluginConfig, SessionKeys):
    board: str = "synthetic"
    master_board: str = "synthetic"
    protocol: Literal["alpha", "focus", "ratio"] = "alpha"
    numerator: list[BandName] = ["beta"]
    denominator: list[BandName] = ["alpha", "theta"]
    baseline_s: float = Field(default=30.0, ge=0, le=600)
    window_s: float = Field(default=1.0, ge=0.25, le=10)
    update_hz: float = Field(default=12.5, ge=1, le=50)
    notch_hz: Literal[50, 60] | None = 50
    poll_s: float = Field(default=0.005, ge=0.001, le=0.5)
    gaze_gate: bool = False
    #: Ask the fleet (task ``eeg``) for the brain state once a second.
    state_model: bool = True
    max_sessions: int = Field(default=4, ge=1, le=64)


class Command(SessionKeys):
    action: Literal["start", "stop", "pause", "resume", "list"]
    session: str | None = None
    id: str | None = Field(default=None, max_length=128)
    reply_to: str | None = Field(default=None, max_length=512)


class SessionError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: Session ids become directory names: only these, checked before any lookup (HTTP and MQTT).
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_session_id(session_id: str) -> None:
    if not SESSION_ID.fullmatch(session_id):
        raise SessionError(400, "bad_id", f"bad session id {session_id[:80]!r}: 1-64 letters, digits, '_' or '-'")


def _bad_request(exc: ValidationError, whole: str) -> SessionError:
    """The first problem, named by its key (``whole`` when it is the document itself)."""
    first = exc.errors()[0]
    return SessionError(400, "bad_request", f"{'.'.join(str(p) for p in first['loc']) or whole}: {first['msg']}")


class Sessions:
    def __init__(self, ctx: PluginContext[EegConfig]) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.live: dict[str, EegSession] = {}
        self.done: dict[str, dict[str, Any]] = {}

    def options(self, keys: SessionKeys) -> SessionOptions:
        merged = {**self.cfg.model_dump(), **keys.model_dump(exclude_none=True)}
        spec = BoardSpec(merged["board"], merged.get("serial_port"), merged.get("file"), merged["master_board"],
                         merged.get("mac_address"), merged.get("other_info"))
        try:
            spec.check()
            synthetic = spec.data_board == -1
        except BoardError as exc:
            raise SessionError(400, "bad_board", str(exc)) from None
        high = merged.get("high_amplitude_uv") or (SYNTHETIC_HIGH_AMPLITUDE_UV if synthetic else 200.0)
        limits = ArtifactLimits(merged.get("rail_uv") or 187_000.0,
                                merged["flat_uv"] if merged.get("flat_uv") is not None else 0.5, high)
        protocol = Protocol(merged["protocol"], tuple(merged["numerator"]), tuple(merged["denominator"]))
        return SessionOptions(spec, protocol, merged["baseline_s"], merged["window_s"], merged["update_hz"],
                              merged.get("notch_hz"), merged["poll_s"], limits, gaze_gate=merged["gaze_gate"])

    async def start(self, keys: SessionKeys) -> EegSession:
        opts = self.options(keys)
        busy = next((s for s in self.live.values() if s.opts.board.key == opts.board.key and s.board is not None), None)
        if busy is not None:
            raise SessionError(409, "board_busy", f"board {opts.board.board} is in use by session {busy.id}")
        if len(self.live) >= self.cfg.max_sessions:
            raise SessionError(409, "too_many_sessions", f"{len(self.live)} sessions running (max_sessions)")
        root = self.ctx.topic_root
        session: EegSession

        async def publish(doc: dict[str, Any]) -> None:
            await self.ctx.publish(f"{root}/eeg/{session.id}/feedback", json.dumps(doc), qos=0)
            self.ctx.emit("eeg.feedback", doc)

        session = EegSession(opts, self.ctx.data_dir / "sessions", publish, self.ctx.record,
                             self._classify if self.cfg.state_model else None)
        try:
            await session.start()
        except BoardError as exc:
            raise SessionError(400, "board_error", str(exc)) from None
        self.live[session.id] = session
        self.ctx.log.info("session %s started on %s (%s)", session.id, opts.board.board, opts.protocol.name)
        return session

    async def _classify(self, features: list[float]) -> str | None:
        try:
            out = await self.ctx.infer({"task": "eeg", "text": json.dumps(features), "budget_ms": 500})
        except Exception as exc:  # the fleet's trouble must not stop the feedback
            self.ctx.log.debug("state model: %r", exc)
            return None
        return str(out["output"]) if out.get("ok") and out.get("output") is not None else None

    def get(self, session_id: str) -> EegSession:
        check_session_id(session_id)
        s = self.live.get(session_id)
        if s is None:
            if session_id in self.done:
                raise SessionError(409, "stopped", f"session {session_id} has stopped")
            raise SessionError(404, "unknown_session", f"no session {session_id!r}")
        return s

    async def stop(self, session_id: str, reason: str = "stopped by request") -> dict[str, Any]:
        s = self.get(session_id)
        await s.stop(reason)
        del self.live[session_id]
        self.done[session_id] = s.summary()
        return self.done[session_id]

    async def stop_all(self) -> None:
        for sid in list(self.live):
            await self.stop(sid, "hub stopping")

    def document(self, s: EegSession) -> dict[str, Any]:
        return {**s.summary(), "last": s.last}

    def directory(self, session_id: str) -> Path:
        check_session_id(session_id)
        root = (self.ctx.data_dir / "sessions").resolve()
        d = (root / session_id).resolve()
        if not d.is_relative_to(root):  # a symlink planted in sessions/ must not lead elsewhere
            raise SessionError(400, "bad_id", f"session {session_id!r} is not inside {root}")
        if session_id not in self.live and session_id not in self.done and not (d / "summary.json").is_file():
            raise SessionError(404, "unknown_session", f"no session {session_id!r}")
        return d

    def on_gaze(self, event: PluginEvent) -> None:
        if event.plugin == "gaze" and event.kind == "gaze.attention":
            on = event.data.get("on_target")
            for s in self.live.values():
                s.gaze_on_target = bool(on) if on is not None else None


async def setup(ctx: PluginContext[EegConfig]) -> None:
    sessions = Sessions(ctx)
    ctx.on_stop(sessions.stop_all)
    ctx.bus.subscribe(PluginEvent, sessions.on_gaze)

    def error(exc: SessionError) -> web.Response:
        if exc.code == "bad_id":  # counted with the hub's own HTTP refusals
            ctx.state.count("http_refused")
            ctx.state.count("http_refused.bad_id")
        return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)

    async def body(request: web.Request) -> SessionKeys:
        raw = await request.read()
        try:
            return SessionKeys.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            raise _bad_request(exc, "body") from None

    async def create(request: web.Request) -> web.Response:
        try:
            s = await sessions.start(await body(request))
        except SessionError as exc:
            return error(exc)
        return web.json_response(sessions.document(s), status=201)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"sessions": [sessions.document(s) for s in sessions.live.values()],
                                  "stopped": list(sessions.done.values())})

    async def show(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        try:
            check_session_id(sid)
            if sid in sessions.done:
                return web.json_response(sessions.done[sid])
            return web.json_response(sessions.document(sessions.get(sid)))
        except SessionError as exc:
            return error(exc)

    async def remove(request: web.Request) -> web.Response:
        try:
            return web.json_response(await sessions.stop(request.match_info["id"]))
        except SessionError as exc:
            return error(exc)

    async def control(request: web.Request) -> web.Response:
        try:
            s = sessions.get(request.match_info["id"])
        except SessionError as exc:
            return error(exc)
        s.pause() if request.match_info["action"] == "pause" else s.resume()
        return web.json_response(sessions.document(s))

    async def report(request: web.Request) -> web.Response:
        from .report import render_report  # matplotlib: loaded only when a report is asked for
        sid = request.match_info["id"]
        try:
            d = sessions.directory(sid)
        except SessionError as exc:
            return error(exc)
        if sid in sessions.live:
            sessions.live[sid]._flush_files()
        path = await asyncio.to_thread(render_report, d)
        return web.json_response({"session": sid, "path": str(path)})

    ctx.add_route("POST", "/sessions", create)
    ctx.add_route("GET", "/sessions", listing)
    ctx.add_route("GET", "/sessions/{id}", show)
    ctx.add_route("DELETE", "/sessions/{id}", remove)
    ctx.add_route("POST", r"/sessions/{id}/{action:pause|resume}", control)
    ctx.add_route("POST", "/sessions/{id}/report", report)

    cmd_topic = f"{ctx.topic_root}/cmd/eeg"

    async def command(message: Message) -> None:
        props = getattr(message, "properties", None)
        reply_topic = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        answer: dict[str, Any]
        cmd_id = None
        try:
            try:
                cmd = Command.model_validate_json(message.payload)
            except ValidationError as exc:
                raise _bad_request(exc, "payload") from None
            cmd_id, reply_topic = cmd.id, reply_topic or cmd.reply_to
            keys = SessionKeys.model_validate(cmd.model_dump(exclude={"action", "session", "id", "reply_to"}))
            if cmd.action == "start":
                result: Any = sessions.document(await sessions.start(keys))
            elif cmd.action == "list":
                result = {"sessions": [sessions.document(s) for s in sessions.live.values()]}
            elif not cmd.session:
                raise SessionError(400, "bad_request", f"action {cmd.action} needs session")
            elif cmd.action == "stop":
                result = await sessions.stop(cmd.session)
            else:
                s = sessions.get(cmd.session)
                s.pause() if cmd.action == "pause" else s.resume()
                result = sessions.document(s)
            answer = {"v": 1, "id": cmd_id, "ok": True, "result": result}
        except SessionError as exc:
            answer = {"v": 1, "id": cmd_id, "ok": False, "error": {"code": exc.code, "message": exc.message}}
            ctx.log.warning("cmd/eeg refused: %s", exc.message)
        if reply_topic:
            await ctx.publish_reply(reply_topic, json.dumps(answer, default=_json_default), corr)

    def on_command(message: Message) -> None:
        ctx.create_task(command(message), "command")

    await ctx.subscribe(cmd_topic, on_command)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


PLUGIN = Plugin(name="eeg", version="1.0.0", description="EEG biofeedback sessions through BrainFlow",
                setup=setup, config_model=EegConfig)

__all__ = ["PLUGIN", "BANDS", "EegConfig", "Sessions"]
