"""The voice plugin's wire documents as models: what clients send (``VoicePost``) is validated
with them; what the hub sends (utterances, actions, summaries) is described by them for
docs/protocol.md's JSON Schemas, and the tests validate the real documents against those."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Layer = Literal["hassil", "classifier", "llm", "confirmation", "none"]
Status = Literal["published", "awaiting_confirmation", "confirmed", "cancelled", "expired", "no_action", "no_speech",
                 "no_wake", "error"]


class VoicePost(BaseModel):
    """``POST /api/voice`` and ``<root>/cmd/voice``: text, or audio, or an answer to a held action."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, max_length=128, description="echoed in an MQTT reply")
    text: str | None = Field(default=None, max_length=4096)
    data: str | None = Field(default=None, description="base64 WAV, or raw 16-bit mono PCM with pcm_rate")
    pcm_rate: int | None = Field(default=None, ge=8000, le=48000)
    wake: bool = Field(default=False, description="the audio starts with the wake word: act only if it is heard")
    confirm: str | None = Field(default=None, max_length=64, description="the id of a held utterance to answer")
    yes: bool = Field(default=True, description="with confirm: false cancels the held action")
    reply_to: str | None = Field(default=None, max_length=512, description="MQTT 3.1.1 clients' reply topic")


class ActionDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intent: str = Field(description="Home Assistant's intent name (HassTurnOff...), or the hub's own")
    slots: dict[str, Any]
    sensitive: bool = Field(description="locks, alarms, doors that open the house: held until confirmed")
    layer: Layer
    confidence: float = Field(ge=0, le=1)
    text: str


class ActionMessage(ActionDoc):
    """``<root>/voice/action`` (QoS 1, not retained): one action to carry out."""

    utterance: str = Field(description="the utterance that asked for it (the held one, once confirmed)")
    confirmed: bool = Field(description="true when it was held and then confirmed")
    source: str


class StageDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["wake", "transcribe", "hassil", "classifier", "llm", "publish"]
    ms: float = Field(ge=0)
    joules: float = Field(ge=0)
    device: str | None = None
    model: str | None = None
    note: str | None = None


class UtteranceDoc(BaseModel):
    """``<root>/voice/utterance``, ``POST /api/voice``'s answer, ``GET /api/voice``'s items."""

    model_config = ConfigDict(extra="forbid")
    id: str
    at: float = Field(description="Unix seconds")
    source: str = Field(description="api | mqtt | wyoming | device:<id>")
    text: str
    layer: Layer
    status: Status
    reason: str = Field(description="why this layer answered, or why nothing was done")
    actions: list[ActionDoc]
    stages: list[StageDoc]
    joules: float = Field(ge=0)
    latency_ms: float = Field(ge=0)
    speech: str = Field(description="what a speaker says back")
    audio_s: float | None = None
    partial: str | None = Field(default=None, description="why the audio is incomplete (a streamed one)")
    error: dict[str, Any] | None = Field(default=None, description="stage, code, message")
    confirms: str | None = Field(default=None, description="the held utterance a yes or no answered")
    expires_at: float | None = Field(default=None, description="a held action's confirmation deadline")
