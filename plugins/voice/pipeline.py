"""One utterance from sound to action: wake word → transcription → Home Assistant's sentences
(hassil, no model) → the tiny intent classifier → a language model → the action published.

Each model step is a task the hub routes like any other (the wake word and the classifier on a
tiny device, Whisper where the energy and the budget say), so this module only decides what to
ask and what the answers mean. A layer answers only when it is sure: hassil matches a sentence
template exactly; the classifier must clear its calibrated threshold and not say ``unknown``;
the language model must return JSON that validates against :data:`ACTION_SCHEMA` and names only
the home's own intents and entities. An action in a sensitive class (locks, alarms, doors that
open the house) is held until it is confirmed: by ``POST /api/voice/{id}/confirm``, an MQTT
command, or a spoken "yes" from the same source within ``confirm_timeout_s``.

Every utterance records which layer answered and why, the milliseconds and joules of each stage
and the device that ran it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from hub.plugin_api import SAMPLE_RATE, Audio

from .intents import Action, HassilLayer, HomeVocabulary, action_from_label, llm_prompt, parse_llm_actions

log = logging.getLogger(__name__)

Infer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Publish = Callable[[str, bytes | str, int, bool], Awaitable[bool]]

#: Spoken answers to a pending confirmation.
YES = re.compile(r"^\s*(yes|yeah|yep|confirm|confirmed|do it|go ahead|ok(ay)?)\b", re.I)
NO = re.compile(r"^\s*(no|nope|cancel|stop|don'?t|never ?mind)\b", re.I)


@dataclass(frozen=True)
class PipelineSettings:
    wake_word: str = "okay_nabu"
    language: str = "en"
    transcribe_budget_ms: float = 5000
    classifier_model: str = "intent-tiny"
    classifier_threshold: float = 0.9
    escalate: bool = True
    escalate_task: str = "format"
    llm_budget_ms: float = 15000
    confirm_timeout_s: float = 30.0
    summary_after_s: float = 30.0
    analysis_deadline_s: float = 3600.0
    feed_size: int = 100


@dataclass
class Stage:
    name: str  # wake | transcribe | hassil | classifier | llm | publish
    ms: float
    joules: float = 0.0
    device: str | None = None
    model: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "ms": round(self.ms, 3), "joules": round(self.joules, 6)}
        if self.device:
            doc["device"], doc["model"] = self.device, self.model
        if self.note:
            doc["note"] = self.note
        return doc


@dataclass
class Utterance:
    id: str
    at: float
    source: str
    text: str = ""
    layer: str = "none"  # hassil | classifier | llm | confirmation | none
    status: str = "no_action"
    reason: str = ""
    actions: list[Action] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    audio_s: float | None = None
    partial: str = ""  # why the audio is incomplete ("" when it is whole)
    error: dict[str, Any] | None = None
    confirms: str | None = None  # the utterance a "yes" or "no" answered
    expires_at: float | None = None  # a held action's confirmation deadline

    @property
    def joules(self) -> float:
        return sum(s.joules for s in self.stages)

    @property
    def speech(self) -> str:
        """What a speaker would say back (Wyoming's ``handled`` text)."""
        if self.status == "published":
            return "Done." if self.layer != "confirmation" else "Confirmed."
        if self.status == "awaiting_confirmation":
            return f"Please confirm: {self.actions[0].intent} {_slots_words(self.actions[0])}. Say yes or no."
        if self.status == "cancelled":
            return "Cancelled."
        if self.status == "no_speech":
            return "I didn't hear anything."
        return "Sorry, I can't do that."

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id, "at": self.at, "source": self.source, "text": self.text, "layer": self.layer,
            "status": self.status, "reason": self.reason, "actions": [a.to_dict() for a in self.actions],
            "stages": [s.to_dict() for s in self.stages], "joules": round(self.joules, 6),
            "latency_ms": round(sum(s.ms for s in self.stages), 3), "speech": self.speech}
        if self.audio_s is not None:
            doc["audio_s"] = round(self.audio_s, 3)
        if self.partial:
            doc["partial"] = self.partial
        if self.error:
            doc["error"] = self.error
        if self.confirms:
            doc["confirms"] = self.confirms
        if self.expires_at is not None:
            doc["expires_at"] = self.expires_at
        return doc


def _slots_words(a: Action) -> str:
    return " ".join(str(v) for k, v in a.slots.items() if k in ("name", "area", "domain"))


def _with_area(action: Action, text: str, home: HomeVocabulary) -> Action:
    """The classifier names no place: "lights off in the kitchen" would be every light in the
    house. The one area of the home the sentence names, when it names exactly one."""
    if not action.slots.get("domain") or {"name", "area", "floor"} & action.slots.keys():
        return action
    folded = text.casefold()
    named = [a for a in home.areas if re.search(rf"\b{re.escape(a.casefold())}\b", folded)]
    return dataclasses.replace(action, slots={**action.slots, "area": named[0]}) if len(named) == 1 else action


def _stage(name: str, t0: float, outcome: dict[str, Any] | None, note: str = "") -> Stage:
    served = (outcome or {}).get("served_by") or {}
    return Stage(name, (time.perf_counter() - t0) * 1000, float((outcome or {}).get("joules") or 0.0),
                 served.get("device"), served.get("model"), note)


class VoicePipeline:
    def __init__(self, infer: Infer, publish: Publish, home: HomeVocabulary, settings: PipelineSettings,
                 topic_root: str, clock: Callable[[], float] = time.time,
                 on_utterance: Callable[[Utterance], None] | None = None,
                 forward: Callable[[Action], Awaitable[str | None]] | None = None,
                 hassil: HassilLayer | None = None,
                 spawn: Callable[[Coroutine[Any, Any, None]], Any] | None = None) -> None:
        self.infer, self.publish, self.home, self.cfg = infer, publish, home, settings
        self.root, self.clock = topic_root, clock
        self.on_utterance, self.forward = on_utterance, forward
        self._hassil = hassil
        self._spawn = spawn or self._own_task
        self._tasks: set[asyncio.Task[None]] = set()
        self.feed: collections.deque[Utterance] = collections.deque(maxlen=settings.feed_size)
        self.pending: dict[str, Utterance] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        #: source → (time, audio seconds, text) of its recent utterances, for the rolling summary.
        self._buffers: dict[str, collections.deque[tuple[float, float, str]]] = {}
        self.summaries: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)

    async def _hassil_layer(self) -> HassilLayer:
        # Built on first use, in a thread: loading Home Assistant's sentences takes a while, a hub
        # that never hears a voice should not pay for it at start, and the event loop must not
        # stall for it (hassil caches the parsed sentences per process, so a race loads once).
        if self._hassil is None:
            self._hassil = await asyncio.to_thread(HassilLayer, self.home, self.cfg.language)
        return self._hassil

    # -- entry points ----------------------------------------------------------------------------

    async def handle_audio(self, audio: Audio, *, source: str, wake: bool = False, partial: str = "") -> Utterance:
        u = Utterance(uuid.uuid4().hex[:12], self.clock(), source, audio_s=audio.duration_s, partial=partial)
        if wake:
            at_s = await self._wake(u, audio)
            if at_s is None:
                return self._done(u)
            audio = Audio(audio.samples[int(at_s * SAMPLE_RATE):], audio.source_rate, audio.source_channels)
        if audio.is_silent():
            u.status, u.reason = "no_speech", "silence: nothing to transcribe"
            return self._done(u)
        t0 = time.perf_counter()
        out = await self._run(u, "transcribe", {
            "task": "transcribe", "data": base64.b64encode(audio.wav_bytes()).decode(),
            "budget_ms": self.cfg.transcribe_budget_ms, "options": {"language": self.cfg.language}})
        u.stages.append(_stage("transcribe", t0, out))
        if out is None or not out.get("ok"):
            return self._done(u)
        u.text = str(out.get("output") or "").strip()
        if not u.text:
            u.status, u.reason = "no_speech", "the transcription is empty"
            return self._done(u)
        self._remember(source, u)
        return await self._interpret(u)

    async def handle_text(self, text: str, *, source: str) -> Utterance:
        u = Utterance(uuid.uuid4().hex[:12], self.clock(), source, text=text.strip())
        if not u.text:
            u.status, u.reason = "no_speech", "empty text"
            return self._done(u)
        return await self._interpret(u)

    # added for wyoming
    async def transcribe_only(self, audio: Audio, source: str) -> tuple[str, dict[str, Any]]:
        """The routed transcription alone (Wyoming's ``asr``: no intents, nothing in the feed).
        Returns the text ("" for silence, without asking any device) and the outcome document
        (``ok``, ``served_by``, ``joules``…; ``ok`` false with ``error`` when it failed or the hub
        refused the request)."""
        if audio.is_silent():
            return "", {"ok": True, "output": "", "note": "silence: nothing to transcribe"}
        try:
            out = await self.infer({"task": "transcribe", "data": base64.b64encode(audio.wav_bytes()).decode(),
                                    "budget_ms": self.cfg.transcribe_budget_ms,
                                    "options": {"language": self.cfg.language}})
        except Exception as exc:  # refused before routing: the reason
            return "", {"ok": False, "error": {"code": getattr(exc, "code", "bad_request"),
                                               "message": getattr(exc, "message", str(exc))}}
        log.debug("voice: transcribed %.1f s for %s", audio.duration_s, source)
        return (str(out.get("output") or "").strip() if out.get("ok") else ""), out

    async def confirm(self, utterance_id: str, yes: bool, *, source: str = "api") -> Utterance:
        """Publish (or drop) a held action. KeyError: no such pending utterance."""
        self._expire()
        held = self.pending.pop(utterance_id)
        u = Utterance(uuid.uuid4().hex[:12], self.clock(), source, text="yes" if yes else "no",
                      layer="confirmation", confirms=held.id, actions=held.actions)
        if yes:
            await self._publish(u, confirmed=True)
            held.status = "confirmed"
        else:
            u.status, u.reason, held.status = "cancelled", "the held action was cancelled", "cancelled"
        return self._done(u)

    # -- the layers ------------------------------------------------------------------------------

    async def _interpret(self, u: Utterance) -> Utterance:
        self._expire()
        answered = self._answer_to_pending(u)
        if answered is not None:
            return await self.confirm(answered.id, bool(YES.match(u.text)), source=u.source)
        t0 = time.perf_counter()
        action = (await self._hassil_layer()).match(u.text)
        u.stages.append(_stage("hassil", t0, None))
        if action is not None:
            u.layer, u.reason = "hassil", "matched a Home Assistant sentence template"
            return await self._act(u, [action])
        t0 = time.perf_counter()
        out = await self._run(u, "classifier", {"task": "intent", "text": u.text, "model": self.cfg.classifier_model,
                                                "budget_ms": 1000})
        u.error = None  # a classifier that cannot run is a reason to escalate, not a failure
        if out is not None and out.get("ok"):
            label, conf = str(out.get("output")), float(out.get("confidence") or 0.0)
            action = action_from_label(label, conf, u.text, self.cfg.classifier_threshold)
            if action is not None:
                action = _with_area(action, u.text, self.home)
            u.stages.append(_stage("classifier", t0, out, f"{label} {conf:.2f}"))
            if action is not None:
                u.layer = "classifier"
                u.reason = f"classifier: {label} at {conf:.2f} (threshold {self.cfg.classifier_threshold:.2f})"
                return await self._act(u, [action])
            why = (f"classifier: {label} at {conf:.2f}, below its threshold {self.cfg.classifier_threshold:.2f}"
                   if label != "unknown" else "classifier: not a command it knows")
        else:
            u.stages.append(_stage("classifier", t0, out, "unavailable"))
            why = "classifier unavailable"
        if not self.cfg.escalate:
            u.reason = f"{why}; no escalation (voice.escalate is off)"
            return self._done(u)
        return await self._escalate(u, why)

    async def _escalate(self, u: Utterance, why: str) -> Utterance:
        t0 = time.perf_counter()
        out = await self._run(u, "llm", {"task": self.cfg.escalate_task, "text": llm_prompt(u.text, self.home),
                                         "budget_ms": self.cfg.llm_budget_ms,
                                         "options": {"temperature": 0, "max_tokens": 200}})
        u.stages.append(_stage("llm", t0, out))
        if out is None or not out.get("ok"):
            if u.error and u.error.get("code") == "simulated":  # the demo's: nothing to act on, not a fault
                u.reason, u.error = f"{why}; not escalated: {u.error['message']}", None
            else:
                u.reason = f"{why}; the language model did not answer"
            return self._done(u)
        u.error = None
        try:
            actions = parse_llm_actions(str(out.get("output") or ""), u.text, self.home)
        except ValueError as exc:
            u.reason = f"{why}; the language model's answer was refused: {exc}"
            self.counts["llm_refused"] += 1
            return self._done(u)
        if not actions:
            u.reason = f"{why}; the language model found no action"
            return self._done(u)
        u.layer, u.reason = "llm", f"{why}; escalated: the language model returned {len(actions)} valid action(s)"
        return await self._act(u, actions)

    async def _act(self, u: Utterance, actions: list[Action]) -> Utterance:
        u.actions = actions
        if any(a.sensitive for a in actions):
            u.status = "awaiting_confirmation"
            u.expires_at = self.clock() + self.cfg.confirm_timeout_s
            u.reason += "; held: a sensitive action needs confirmation"
            self.pending[u.id] = u
            self.counts["held"] += 1
            return self._done(u)
        await self._publish(u, confirmed=False)
        return self._done(u)

    async def _publish(self, u: Utterance, confirmed: bool) -> None:
        t0 = time.perf_counter()
        notes = []
        for a in u.actions:
            doc = {**a.to_dict(), "utterance": u.confirms or u.id, "confirmed": confirmed, "source": u.source}
            sent = await self.publish(f"{self.root}/voice/action", json.dumps(doc), 1, False)
            if not sent:
                notes.append(f"{a.intent}: not published (MQTT down)")
            if self.forward is not None:
                note = await self.forward(a)
                if note:
                    notes.append(note)
        u.stages.append(Stage("publish", (time.perf_counter() - t0) * 1000, note="; ".join(notes)))
        u.status = "published"
        self.counts["actions"] += len(u.actions)

    # -- helpers ---------------------------------------------------------------------------------

    async def _wake(self, u: Utterance, audio: Audio) -> float | None:
        t0 = time.perf_counter()
        out = await self._run(u, "wake", {"task": "wakeword", "model": self.cfg.wake_word, "budget_ms": 2000,
                                          "data": base64.b64encode(audio.wav_bytes()).decode()})
        result = (out or {}).get("output") if out and out.get("ok") else None
        detected = isinstance(result, dict) and bool(result.get("detected"))
        u.stages.append(_stage("wake", t0, out, "detected" if detected else "not detected"))
        if out is None or not out.get("ok"):
            return None
        if not detected:
            u.status, u.reason = "no_wake", f"the wake word {self.cfg.wake_word!r} was not heard"
            return None
        return float(result.get("at_s") or 0.0)

    async def _run(self, u: Utterance, stage: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """A routed task; its failure is recorded on the utterance (``error``) and returns the
        outcome (``ok`` false) or None when the hub refused the request outright."""
        try:
            out = await self.infer(request)
        except Exception as exc:  # a refusal before routing (RequestError, validation): the reason
            u.error = {"stage": stage, "code": getattr(exc, "code", "bad_request"),
                       "message": getattr(exc, "message", str(exc))}
            return None
        if not out.get("ok"):
            u.error = {"stage": stage, **(out.get("error") or {"message": "failed"})}
        elif out.get("simulated"):
            # The demo's simulated runtime: its "answer" says no model ran; acting on it would
            # be acting on nothing.
            served = out.get("served_by") or {}
            u.error = {"stage": stage, "code": "simulated",
                       "message": f"{served.get('model')} on {served.get('device')} is simulated: no model ran"}
            return {**out, "ok": False}
        return out

    def _answer_to_pending(self, u: Utterance) -> Utterance | None:
        if not (YES.match(u.text) or NO.match(u.text)):
            return None
        mine = [p for p in self.pending.values() if p.source == u.source]
        return max(mine, key=lambda p: p.at) if mine else None

    def _expire(self) -> None:
        now = self.clock()
        for uid, held in list(self.pending.items()):
            if held.expires_at is not None and held.expires_at <= now:
                del self.pending[uid]
                held.status, held.reason = "expired", held.reason + "; not confirmed in time"
                self.counts["expired"] += 1

    def _remember(self, source: str, u: Utterance) -> None:
        """The rolling buffer of what a source said; its summary is non-urgent work, deferred
        to the hub's next cheap window rather than run now."""
        buf = self._buffers.setdefault(source, collections.deque())
        buf.append((u.at, u.audio_s or 0.0, u.text))
        while buf and buf[0][0] < u.at - max(self.cfg.summary_after_s * 4, 120.0):
            buf.popleft()
        if sum(s for _, s, _ in buf) >= self.cfg.summary_after_s:
            text = " ".join(t for _, _, t in buf)
            buf.clear()
            record: dict[str, Any] = {"source": source, "at": u.at, "status": "queued", "words": len(text.split())}
            self.summaries.append(record)
            self._spawn(self._summarise(text, u.at + self.cfg.analysis_deadline_s, record))

    async def _summarise(self, text: str, deadline: float, record: dict[str, Any]) -> None:
        try:
            out = await self.infer({"task": "summarize", "text": text, "deadline": deadline})
        except Exception as exc:  # refused (too large, say): the record says why
            record.update(status="refused", reason=str(getattr(exc, "message", exc)))
            return
        record.update(status="done" if out.get("ok") else "failed", summary=out.get("output"),
                      served_by=out.get("served_by"), deferred_s=out.get("deferred_s", 0.0))
        await self.publish(f"{self.root}/voice/summary", json.dumps(record), 1, False)

    def _own_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _done(self, u: Utterance) -> Utterance:
        if u.status == "no_action" and u.error:
            u.status = "error"
        self.counts[u.status] += 1
        self.counts[f"layer_{u.layer}"] += 1
        self.feed.append(u)
        if self.on_utterance is not None:
            self.on_utterance(u)
        return u
