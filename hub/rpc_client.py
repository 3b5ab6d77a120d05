"""The hub's side of device RPC: requests out on ``<root>/device/<id>/rpc`` with this hub's
reply topic and a correlation id, replies (and streamed chunks) matched back to the waiting call.

A call ends with the device's response, with its timeout, or at once when the device is seen
going offline (its last will): a killed agent costs the broker's detection time, not the whole
timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .mqtt import Message, MqttLink, publish_properties
from .rpc import OnChunk, RpcChunk, RpcErrorBody, RpcRequest, RpcResponse
from .topics import Topics

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    device_id: str
    done: asyncio.Future[RpcResponse]
    on_chunk: OnChunk | None
    chunks: asyncio.Queue[RpcChunk | None] = field(default_factory=asyncio.Queue)
    #: A streamed call's deadline, moved on by each chunk (RpcClient.call).
    deadline: asyncio.Timeout | None = None
    idle_s: float = 0.0


def failed(request_id: str, code: str, message: str) -> RpcResponse:
    return RpcResponse(id=request_id, ok=False, error=RpcErrorBody(code=code, message=message))


class RpcClient:
    def __init__(self, topics: Topics, hub_id: str, link: MqttLink | None = None) -> None:
        self.link = link  # set once the hub's connection exists (it subscribes to reply_topic)
        self.topics = topics
        self.reply_topic = f"{topics.root}/hub/{hub_id}/reply"
        self._pending: dict[bytes, _Pending] = {}
        self._ids = itertools.count(1)
        self._prefix = hub_id
        self.rejected = 0

    def handle(self, message: Message) -> bool:
        """A message on the reply topic (True), or not ours (False)."""
        if message.topic != self.reply_topic:
            return False
        corr = getattr(getattr(message, "properties", None), "CorrelationData", None)
        try:
            doc = json.loads(message.payload)
        except ValueError as exc:
            self.rejected += 1
            log.warning("invalid RPC reply on %s: %s", message.topic, exc)
            return True
        if corr is None and isinstance(doc, dict) and isinstance(doc.get("id"), str):
            # MQTT 3.1.1 devices (the MicroPython firmware) cannot send correlation data; the
            # request's id is unique per call, and they echo it.
            corr = doc["id"].encode()
        pending = self._pending.get(corr) if corr is not None else None
        if pending is None:
            return True  # a late answer to a call that timed out, or a stray: nothing waits for it
        try:
            if isinstance(doc, dict) and doc.get("type") == "chunk":
                pending.chunks.put_nowait(RpcChunk.model_validate(doc))
                if pending.deadline is not None:
                    pending.deadline.reschedule(asyncio.get_running_loop().time() + pending.idle_s)
                return True
            resp = RpcResponse.model_validate(doc)
        except ValidationError as exc:
            self.rejected += 1
            log.warning("invalid RPC reply from %s: %s", pending.device_id, str(exc).splitlines()[0])
            return True
        pending.chunks.put_nowait(None)
        if not pending.done.done():
            pending.done.set_result(resp)
        return True

    def device_offline(self, device_id: str) -> None:
        """Fail the calls waiting on a device that just went offline."""
        for p in self._pending.values():
            if p.device_id == device_id and not p.done.done():
                p.done.set_result(failed("", "unavailable", f"{device_id} went offline mid-request"))
                p.chunks.put_nowait(None)

    async def call(self, device_id: str, method: str, params: dict[str, Any], timeout_s: float,
                   request_id: str | None = None, on_chunk: OnChunk | None = None) -> RpcResponse:
        rid = request_id or f"{self._prefix}-{next(self._ids)}"
        # One id per call (a task's escalations and consensus members are separate calls): it is
        # the correlation data, and the request id for devices that cannot read properties.
        call_id = f"{rid}#{next(self._ids)}"
        corr = call_id.encode()
        loop = asyncio.get_running_loop()
        pending = _Pending(device_id, loop.create_future(), on_chunk)
        self._pending[corr] = pending
        props = publish_properties(corr, self.reply_topic)
        body = RpcRequest(id=call_id, method=method, params=params,
                          reply_to=self.reply_topic).model_dump_json(exclude_none=True)
        forward = asyncio.create_task(self._forward_chunks(pending)) if on_chunk else None
        try:
            if self.link is None or not await self.link.publish(self.topics.device(device_id, "rpc"), body, qos=1, properties=props):
                return failed(rid, "unavailable", "not connected to the broker")
            try:
                async with asyncio.timeout(timeout_s) as deadline:  # not wait_for: see Hub._publish_energy
                    if on_chunk is not None:
                        # Streamed: timeout_s bounds each silence (until the first chunk, between
                        # chunks, after the last), not the whole answer: text that keeps coming
                        # on a busy machine is not cut mid-sentence. The caller bounds the total.
                        pending.deadline, pending.idle_s = deadline, timeout_s
                    resp = await asyncio.shield(pending.done)
            except TimeoutError:
                # Tell the device to stop: its answer would arrive to nobody.
                await self.link.publish(self.topics.device(device_id, "rpc"),
                                        RpcRequest(id=f"{call_id}.cancel", method="cancel",
                                                   params={"id": call_id}).model_dump_json(), qos=0)
                return failed(rid, "timeout", f"{device_id} did not answer within {timeout_s * 1000:.0f} ms"
                              + (" of silence" if on_chunk is not None else ""))
            if forward is not None:
                await forward
            return resp.model_copy(update={"id": rid})
        finally:
            self._pending.pop(corr, None)
            if forward is not None and not forward.done():
                forward.cancel()

    async def _forward_chunks(self, pending: _Pending) -> None:
        assert pending.on_chunk is not None
        expected = 0
        while True:
            chunk = await pending.chunks.get()
            if chunk is None:
                return
            if chunk.seq != expected:
                log.warning("chunk %d from %s arrived as %d", chunk.seq, pending.device_id, expected)
            expected = chunk.seq + 1
            await pending.on_chunk(chunk.chunk)
