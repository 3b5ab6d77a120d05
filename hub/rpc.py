"""Request/response envelopes on ``<root>/device/<id>/rpc`` (MQTT 5 response topic and
correlation data; MQTT 3.1.1 clients name the reply topic in ``reply_to``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .capability import PROTOCOL_VERSION


class RpcRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION
    id: str = Field(min_length=1, max_length=128, description="Request id, echoed in the response")
    method: str = Field(min_length=1, max_length=64, description="health | echo (inference methods: see the execution issue)")
    params: dict[str, Any] = Field(default_factory=dict)
    #: MQTT 3.1.1 clients have no response-topic property: they name it here.
    reply_to: str | None = Field(default=None, max_length=512, description="Reply topic for MQTT 3.1.1 clients; must be under the topic root")


class RpcTimings(BaseModel):
    queue_ms: float = Field(ge=0, description="From receipt to start of work")
    compute_ms: float = Field(ge=0, description="Work itself")


class RpcErrorBody(BaseModel):
    code: str = Field(description="bad_request | too_large | unknown_method | busy | timeout | internal")
    message: str


class RpcResponse(BaseModel):
    v: int = PROTOCOL_VERSION
    id: str | None = Field(description="The request's id; null when the request could not be parsed")
    ok: bool
    result: dict[str, Any] | None = None
    timings: RpcTimings | None = None
    error: RpcErrorBody | None = None
