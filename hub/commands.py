"""Commands from other devices on ``<root>/cmd/infer``: a phone, a voice satellite or an
automation publishes a task; the answer goes to the MQTT 5 response topic with the request's
correlation data, or — for MQTT 3.1.1 clients, which have neither — to ``reply_to`` named in the
payload, with the payload's ``id`` echoed. Hubs sharing a fleet subscribe through an MQTT 5
shared subscription, so each command is taken by exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field, ValidationError

from .config import HubConfig, format_validation_error
from .deferred import DeferredStore, ReplyRoute, Waiting
from .router.request import InferOutcome, InferRequest, RequestError
from .mqtt import Message, MqttLink, publish_properties
from .rpc import RpcChunk, RpcErrorBody, RpcResponse

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .rejects import Rejections
    from .topics import Topics

log = logging.getLogger(__name__)


class CommandsHub(Protocol):
    """What :class:`Commands` uses of the hub (hub/runtime.py's ``Hub`` is one)."""

    config: HubConfig
    topics: Topics
    dispatcher: Dispatcher
    deferred_store: DeferredStore
    rejections: Rejections
    mqtt: MqttLink | None


class InferCommand(InferRequest):
    """The payload on ``<root>/cmd/infer``."""

    reply_to: str | None = Field(default=None, max_length=512,
                                 description="Reply topic for MQTT 3.1.1 clients; must be under the topic root")


class Commands:
    def __init__(self, hub: CommandsHub) -> None:
        self.hub = hub
        root = hub.topics.root
        self.topic = f"{root}/cmd/infer"
        group = hub.config.mqtt.share_group
        self.subscription = f"$share/{group}/{self.topic}" if group else self.topic
        # Text up to the input cap, as JSON (escaping) plus the envelope.
        self.max_bytes = hub.config.dispatch.max_body_bytes()
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, message: Message) -> bool:
        if message.topic != self.topic:
            return False
        props = getattr(message, "properties", None)
        self._spawn(self._run(message.payload, getattr(props, "ResponseTopic", None),
                              getattr(props, "CorrelationData", None)))
        return True

    def resume_deferred(self) -> int:
        """Run the deferred requests a previous hub process left waiting (hub/deferred.py)."""
        waiting = self.hub.deferred_store.waiting()
        for w in waiting:
            self._spawn(self._resume(w))
        return len(waiting)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self, w: Waiting) -> None:
        hub = self.hub
        await asyncio.sleep(hub.config.dispatch.resume_after_s)
        reply = self._reply(w.reply.topic, w.reply.correlation) if w.reply else None
        try:
            outcome = await hub.dispatcher.infer(w.request, reply=w.reply)
            body, doc = _response(outcome), outcome.to_dict()
        except RequestError as exc:  # its requester is gone from the registry, say
            body = RpcResponse(id=w.request.id, ok=False, error=RpcErrorBody(code=exc.code, message=exc.message))
            doc = body.model_dump(exclude_none=True)
        # A hub stopping meanwhile cancels this before here: the request stays waiting.
        await asyncio.to_thread(hub.deferred_store.finish, w.request.id, doc)
        log.info("resumed deferred request %s: %s", w.request.id, "ok" if body.ok else body.error)
        if reply is not None:
            await reply(body.model_dump_json(exclude_none=True))

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _bad_reply(self, topic: str) -> str:
        return f"reply topic {topic!r} is not under {self.hub.topics.reply_root}<client>/ or has a wildcard"

    def _reject(self, why: str) -> None:
        self.hub.rejections.reject(self.topic, why, counter="rejected_commands")

    async def _run(self, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        hub = self.hub
        request_id: str | None = None
        cmd: InferCommand | None = None
        body: RpcResponse
        reply = None
        try:
            if len(payload) > self.max_bytes:
                raise RequestError("too_large", f"command of {len(payload)} bytes exceeds {self.max_bytes}")
            try:
                cmd = InferCommand.model_validate_json(payload)
            except ValidationError as exc:
                raise RequestError("bad_request", format_validation_error(exc).replace("\n", "; ")) from None
            request_id = cmd.id or None
            reply_topic = response_topic or cmd.reply_to
            if not reply_topic:
                raise RequestError("bad_request", "no response topic: give an MQTT 5 response topic or reply_to")
            reply = self._reply(reply_topic, correlation)
            if reply is None:
                raise RequestError("bad_request", self._bad_reply(reply_topic))
            seq = 0

            async def send_chunk(text: str) -> None:
                nonlocal seq
                await reply(RpcChunk(id=cmd.id or "", seq=seq, chunk=text).model_dump_json())
                seq += 1
            emit = send_chunk if cmd.stream else None
            # An InferCommand is an InferRequest; the reply route is kept if it is deferred.
            route = ReplyRoute(response_topic or cmd.reply_to or "", correlation)
            body = _response(await hub.dispatcher.infer(cmd, emit, route))
            request_id = body.id
        except RequestError as exc:
            # Counted once, here, whatever went wrong (an unusable reply topic used to be
            # counted up to three times: when checked, when refused, and when checked again).
            self._reject(exc.message)
            body = RpcResponse(id=request_id, ok=False, error=RpcErrorBody(code=exc.code, message=exc.message))
            if reply is None and response_topic is not None:
                reply = self._reply(response_topic, correlation)  # None again for a refused topic
        if reply is not None:
            await reply(body.model_dump_json(exclude_none=True))

    def _reply(self, topic: str | None, correlation: bytes | None) -> Any:
        """A publisher on ``topic``, or None when it is missing or outside the reply namespace (a
        command must not make the hub publish anywhere it likes). Counts nothing: the caller
        rejects the command, once."""
        if not topic or not self.hub.topics.allows_command_reply(topic):
            return None
        props = publish_properties(correlation)
        link = self.hub.mqtt

        async def reply(text: str) -> None:
            if link is not None:
                await link.publish(topic, text, qos=1, properties=props)

        return reply


def _response(outcome: InferOutcome) -> RpcResponse:
    err = None if outcome.ok else RpcErrorBody(**outcome.error) if outcome.error else None
    return RpcResponse(id=outcome.id, ok=outcome.ok, result=outcome.to_dict(), error=err)
