"""The voice pipeline's decisions (plugins/voice/pipeline.py) with the real hassil layer and a
scripted ``infer``: the seam where the hub's dispatcher plugs in. What the routed models answer
is set per test, so every branch (each layer, escalation, refusals, confirmation, expiry, the
deferred summary) is reached without waiting for a model; tests/test_voice_live.py runs the same
pipeline against real agents."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from hub.plugin_api import Audio
from plugins.voice.intents import HassilLayer, HomeVocabulary
from plugins.voice.pipeline import PipelineSettings, Utterance, VoicePipeline
from plugins.voice.schema import ActionMessage, UtteranceDoc

HOME = HomeVocabulary.demo()
_HASSIL: list[HassilLayer] = []


def hassil() -> HassilLayer:
    if not _HASSIL:  # loading Home Assistant's sentences once for the module
        _HASSIL.append(HassilLayer(HOME))
    return _HASSIL[0]


class Fleet:
    """Answers routed requests by task, as the dispatcher's outcome documents."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(req)
        answer = self.answers.get(req["task"])
        if answer is None:
            return {"ok": False, "error": {"code": "no_route", "message": f"no device can run {req['task']}"}}
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            answer = answer(req)
        return {"ok": True, "served_by": {"device": "phone", "model": "m", "layer": "tiny"}, "joules": 0.25,
                **answer}

    def tasks(self) -> list[str]:
        return [r["task"] for r in self.requests]


class Broker:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> bool:
        doc = json.loads(payload)
        if topic.endswith("/action"):
            ActionMessage.model_validate(doc)  # what docs/protocol.md's schema says
        self.messages.append((topic, doc))
        return True

    def actions(self) -> list[dict[str, Any]]:
        return [doc for topic, doc in self.messages if topic == "sovereign/voice/action"]


def documented(u: Utterance) -> None:
    UtteranceDoc.model_validate(u.to_dict())  # every utterance is what docs/protocol.md's schema says


def pipeline(fleet: Fleet, broker: Broker, now: list[float] | None = None, **settings: Any) -> VoicePipeline:
    clock = (lambda: now[0]) if now is not None else (lambda: 1000.0)
    return VoicePipeline(fleet, broker, HOME, PipelineSettings(**settings), "sovereign", clock=clock,
                         hassil=hassil(), on_utterance=documented)


def speechlike(seconds: float) -> Audio:
    t = np.arange(int(seconds * 16000)) / 16000
    return Audio((np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16), 16000, 1)


async def test_hassil_answers_first_and_the_action_is_published() -> None:
    fleet, broker = Fleet(), Broker()
    u = await pipeline(fleet, broker).handle_text("turn off the kitchen light", source="test")
    assert (u.layer, u.status) == ("hassil", "published")
    assert fleet.requests == [], "no model was asked"
    (action,) = broker.actions()
    assert action["intent"] == "HassTurnOff" and action["slots"]["name"] == "Kitchen Light"
    assert action["confirmed"] is False and action["utterance"] == u.id


async def test_the_classifier_answers_above_its_threshold() -> None:
    fleet, broker = Fleet(intent={"output": "set_timer", "confidence": 0.97}), Broker()
    p = pipeline(fleet, broker, classifier_threshold=0.9)
    u = await p.handle_text("could you get a countdown going for the pasta", source="test")
    assert (u.layer, u.status) == ("classifier", "published")
    assert fleet.requests[0]["model"] == "intent-tiny", "the calibrated model, not any intent model"
    assert broker.actions()[0]["intent"] == "HassStartTimer"
    assert [s.name for s in u.stages] == ["hassil", "classifier", "publish"]
    assert u.joules == pytest.approx(0.25)


async def test_the_classifier_action_gets_the_area_the_sentence_names() -> None:
    fleet, broker = Fleet(intent={"output": "lights_off", "confidence": 0.99}), Broker()
    p = pipeline(fleet, broker, classifier_threshold=0.9)
    u = await p.handle_text("Turned off lights in the kitchen.", source="test")  # a mishearing hassil misses
    assert u.layer == "classifier" and broker.actions()[-1]["slots"] == {"domain": "light", "area": "Kitchen"}
    await p.handle_text("lights off in the kitchen and the bedroom please", source="test")
    assert "area" not in broker.actions()[-1]["slots"], "two areas: the classifier cannot say which"


async def test_unsure_classifier_escalates_to_a_validated_language_model_answer() -> None:
    llm = {"output": 'Sure! {"actions": [{"intent": "HassTurnOn", "slots": {"name": "Bedroom Fan"}}]}'}
    fleet, broker = Fleet(intent={"output": "lights_on", "confidence": 0.6}, format=llm), Broker()
    u = await pipeline(fleet, broker, classifier_threshold=0.9).handle_text(
        "it is stuffy in here, get some air moving in the bedroom", source="test")
    assert (u.layer, u.status) == ("llm", "published"), u.reason
    assert "below its threshold 0.90" in u.reason
    assert fleet.tasks() == ["intent", "format"]
    assert broker.actions()[0]["slots"]["name"] == "Bedroom Fan"


async def test_a_language_model_answer_that_does_not_validate_acts_on_nothing() -> None:
    for output, why in [("I think you want the lights on.", "no JSON"),
                        ('{"actions": [{"intent": "HassUnlockEverything", "slots": {}}]}', "HassUnlockEverything"),
                        ('{"actions": [{"intent": "HassTurnOn", "slots": {"name": "Dungeon"}}]}', "Dungeon")]:
        fleet, broker = Fleet(intent={"output": "unknown", "confidence": 0.99}, format={"output": output}), Broker()
        u = await pipeline(fleet, broker).handle_text("do the thing with the stuff", source="test")
        assert u.status == "no_action" and "refused" in u.reason, (output, u.reason)
        assert broker.actions() == []


async def test_no_action_is_an_answer_too() -> None:
    fleet, broker = Fleet(intent={"output": "unknown", "confidence": 0.99}, format={"output": '{"actions": []}'}), Broker()
    u = await pipeline(fleet, broker).handle_text("what is the capital of france", source="test")
    assert u.status == "no_action" and "no action" in u.reason and broker.actions() == []
    off = await pipeline(fleet, broker, escalate=False).handle_text("what is the capital of france", source="test")
    assert "no escalation" in off.reason and fleet.tasks()[-1] == "intent"


async def test_a_sensitive_action_waits_for_confirmation() -> None:
    now = [1000.0]
    fleet, broker = Fleet(), Broker()
    p = pipeline(fleet, broker, now, confirm_timeout_s=30)
    held = await p.handle_text("unlock the front door", source="kitchen-speaker")
    assert held.status == "awaiting_confirmation" and held.actions[0].sensitive
    assert broker.actions() == [] and held.id in p.pending
    other = await p.handle_text("yes", source="another-room")
    assert other.layer != "confirmation", "a yes from elsewhere confirms nothing"
    assert broker.actions() == []
    yes = await p.handle_text("yes please", source="kitchen-speaker")
    assert (yes.layer, yes.status, yes.confirms) == ("confirmation", "published", held.id)
    (action,) = broker.actions()
    assert action["confirmed"] is True and action["utterance"] == held.id and held.status == "confirmed"


async def test_cancelled_and_expired_holds_publish_nothing() -> None:
    now = [1000.0]
    fleet, broker = Fleet(), Broker()
    p = pipeline(fleet, broker, now, confirm_timeout_s=30)
    held = await p.handle_text("unlock the front door", source="s")
    no = await p.confirm(held.id, False)
    assert no.status == "cancelled" and held.status == "cancelled"
    again = await p.handle_text("unlock the front door", source="s")
    now[0] += 31
    late = await p.handle_text("yes", source="s")
    assert late.layer != "confirmation" and again.status == "expired"
    with pytest.raises(KeyError):
        await p.confirm(again.id, True)
    assert broker.actions() == []


async def test_audio_goes_through_routed_transcription() -> None:
    fleet, broker = Fleet(transcribe={"output": "Turn off the kitchen light."}), Broker()
    u = await pipeline(fleet, broker).handle_audio(speechlike(1.5), source="mic")
    assert (u.text, u.layer, u.status) == ("Turn off the kitchen light.", "hassil", "published")
    req = fleet.requests[0]
    assert req["task"] == "transcribe" and req["options"] == {"language": "en"} and req["data"]
    assert u.audio_s == pytest.approx(1.5)


async def test_silence_costs_no_transcription() -> None:
    fleet, broker = Fleet(), Broker()
    u = await pipeline(fleet, broker).handle_audio(Audio(np.zeros(16000, np.int16), 16000, 1), source="mic")
    assert u.status == "no_speech" and fleet.requests == []


async def test_wake_word_gates_and_trims_the_audio() -> None:
    seen: list[int] = []

    def transcribe(req: dict[str, Any]) -> dict[str, Any]:
        import base64
        seen.append(len(base64.b64decode(req["data"])))
        return {"output": "turn on the kitchen light"}

    fleet = Fleet(wakeword={"output": {"detected": True, "at_s": 1.0, "wake_word": "okay_nabu"}}, transcribe=transcribe)
    u = await pipeline(fleet, Broker()).handle_audio(speechlike(3.0), source="mic", wake=True)
    assert u.status == "published" and fleet.tasks()[:2] == ["wakeword", "transcribe"]
    assert fleet.requests[0]["model"] == "okay_nabu"
    assert seen[0] == 44 + 2 * 16000 * 2, "only the 2 s after the wake word are transcribed"
    silent = Fleet(wakeword={"output": {"detected": False, "at_s": None}})
    v = await pipeline(silent, Broker()).handle_audio(speechlike(2.0), source="mic", wake=True)
    assert v.status == "no_wake" and silent.tasks() == ["wakeword"]


async def test_failures_are_recorded_with_their_stage() -> None:
    class Refused(Exception):
        code, message = "over_budget", "600.0 s of audio: over the 300 ms budget"

    fleet = Fleet(transcribe=Refused())
    u = await pipeline(fleet, Broker()).handle_audio(speechlike(1.0), source="mic", partial="1 chunk never came")
    assert u.status == "error" and u.error == {"stage": "transcribe", "code": "over_budget",
                                               "message": "600.0 s of audio: over the 300 ms budget"}
    assert u.to_dict()["partial"] == "1 chunk never came"
    down = await pipeline(Fleet(), Broker()).handle_audio(speechlike(1.0), source="mic")
    assert down.status == "error" and down.error["code"] == "no_route"
    # The classifier being unavailable is a reason to escalate, not a failure.
    fallback = Fleet(format={"output": '{"actions": []}'})
    w = await pipeline(fallback, Broker()).handle_text("hmm what now", source="s")
    assert w.status == "no_action" and w.error is None and "classifier unavailable" in w.reason


async def test_a_simulated_model_is_not_a_transcript() -> None:
    fleet = Fleet(transcribe={"output": "[simulated] whisper on phone would answer", "simulated": True})
    u = await pipeline(fleet, Broker()).handle_audio(speechlike(1.0), source="mic")
    assert u.status == "error" and u.error["code"] == "simulated" and u.text == ""


async def test_thirty_seconds_of_dictation_are_summarised_as_deferred_work() -> None:
    now = [1000.0]
    fleet = Fleet(transcribe={"output": "notes about the garden"}, intent={"output": "unknown", "confidence": 1.0},
                  format={"output": '{"actions": []}'}, summarize={"output": "Garden notes.", "deferred_s": 120.0})
    broker = Broker()
    p = pipeline(fleet, broker, now, summary_after_s=30, analysis_deadline_s=3600)
    for _ in range(3):
        await p.handle_audio(speechlike(10.5), source="dictaphone")
        now[0] += 11
    await asyncio.sleep(0)  # the summary runs in the background
    await asyncio.sleep(0)
    summarize = [r for r in fleet.requests if r["task"] == "summarize"]
    assert len(summarize) == 1 and summarize[0]["deadline"] == pytest.approx(1000.0 + 22 + 3600)
    assert summarize[0]["text"].count("notes about the garden") == 3
    assert p.summaries[0]["status"] == "done" and p.summaries[0]["summary"] == "Garden notes."
    assert [t for t, _ in broker.messages if t.endswith("/summary")] == ["sovereign/voice/summary"]
