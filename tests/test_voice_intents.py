"""The voice pipeline's local layers (hassil, the tiny classifier) and the rules bounding a
language model's answer (plugins/voice/intents.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import plugins.voice.intents as intents
from hub.agent.executors.base import InferCall
from hub.agent.executors.tflite import TfliteExecutor, bundled_models_dir
from hub.capability import ModelSpec
from plugins.voice.intents import (
    ACTION_SCHEMA,
    CLASSIFIER_THRESHOLD,
    SENSITIVE_DOMAINS,
    Action,
    Entity,
    HassilLayer,
    HomeVocabulary,
    action_from_label,
    is_sensitive,
    llm_prompt,
    parse_llm_actions,
)

HOME = HomeVocabulary.demo()


@pytest.fixture(scope="module")
def hassil() -> HassilLayer:
    return HassilLayer(HOME)


# -- layer 1: hassil ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, intent, slots, sensitive", [
    # an alias comes out as the entity's name, with its domain
    ("turn off the kitchen lamp", "HassTurnOff", {"name": "Kitchen Light", "domain": "light"}, False),
    ("Turn on the Bedroom Light", "HassTurnOn", {"name": "Bedroom Light", "domain": "light"}, False),
    ("turn on the lights in the living room", "HassTurnOn", {"area": "Living Room", "domain": "light"}, False),
    ("unlock the front door", "HassTurnOff", {"name": "Front Door", "domain": "lock"}, True),
    ("lock the front door lock", "HassTurnOn", {"name": "Front Door", "domain": "lock"}, True),
    ("open the garage door", "HassTurnOn", {"name": "Garage Door", "domain": "cover"}, True),
    ("close the garage door", "HassTurnOff", {"name": "Garage Door", "domain": "cover"}, True),
    ("set the thermostat to 20 degrees", "HassClimateSetTemperature",
     {"name": "Thermostat", "temperature": 20, "domain": "climate"}, False),
    # questions are actions too (published as intents), never sensitive
    ("is the front door locked", "HassGetState", {"name": "Front Door", "state": "locked", "domain": "lock"}, False),
    ("what time is it", "HassGetCurrentTime", {}, False),
    ("what's the weather", "HassGetWeather", {}, False),
    ("set a timer for 5 minutes", "HassStartTimer", {"minutes": 5}, False),
    ("add milk to my shopping list", "HassListAddItem", {"item": "milk", "name": "Shopping List", "domain": "todo"}, False),
])
def test_hassil_matches_demo_home(hassil: HassilLayer, text: str, intent: str, slots: dict[str, Any],
                                  sensitive: bool) -> None:
    action = hassil.match(text)
    assert action is not None, text
    assert (action.intent, action.layer, action.confidence, action.text) == (intent, "hassil", 1.0, text)
    assert action.slots == slots
    assert action.sensitive is sensitive
    assert action.to_dict() == {"intent": intent, "slots": slots, "sensitive": sensitive, "layer": "hassil",
                                "confidence": 1.0, "text": text}


def test_hassil_uses_the_microphones_area(hassil: HassilLayer) -> None:
    assert hassil.match("turn off the lights") is None  # "here" means nothing without an area
    action = hassil.match("turn off the lights", area="Kitchen")
    assert action is not None and action.intent == "HassTurnOff"
    assert action.slots == {"area": "Kitchen", "domain": "light"}


@pytest.mark.parametrize("text", [
    "uber please",
    "what are the nutrition facts for carrots",
    "can you unlock my bank account",
    "turn off sound",
    "tell me a joke",
    "who is jane goodall",  # "who is {anything}" asks about people; the demo home has none
    "turn on the garage light in the kitchen",  # a name and an area that do not go together
    "text samantha and let her know i will arrive in 10 minutes",  # a "timer" whose command is not one
    "",
])
def test_hassil_refuses_unrelated_sentences(hassil: HassilLayer, text: str) -> None:
    assert hassil.match(text) is None


def test_hassil_delayed_command_takes_the_commands_sensitivity(hassil: HassilLayer) -> None:
    later = hassil.match("in 10 minutes turn off the kitchen light")
    assert later is not None and later.intent == "HassStartTimer" and not later.sensitive
    assert later.slots["conversation_command"] == "turn off the kitchen light"
    risky = hassil.match("in 5 minutes unlock the front door")
    assert risky is not None and risky.sensitive


def test_hassil_loads_the_sentences_once() -> None:
    a, b = HassilLayer(HOME), HassilLayer(HomeVocabulary(areas=("Kitchen",), entities=()))
    assert intents._INTENTS["en"] is intents._load_intents("en")
    assert b.match("turn on the lights in the kitchen") is not None  # no entities: no domain filter
    assert a.home is HOME


# -- sensitivity ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("intent, slots, want", [
    ("HassTurnOff", {"name": "Front Door"}, True),                        # unlock
    ("HassTurnOn", {"name": "front door lock"}, True),                    # by alias
    ("HassTurnOn", {"name": "Alarm Panel"}, True),
    ("HassTurnOn", {"domain": "alarm_control_panel"}, True),
    ("HassTurnOn", {"name": "Garage Door"}, True),
    ("HassSetPosition", {"name": "Garage Door", "position": 50}, True),
    ("HassTurnOn", {"area": "Garage", "domain": "cover"}, True),          # the covers of the garage
    ("HassTurnOn", {"domain": "cover", "device_class": "gate"}, True),
    ("HassTurnOn", {"domain": "payment"}, True),
    ("HassTurnOn", {"name": "Pool Pump"}, True),                          # unknown: nobody can say it is safe
    ("HassTurnOn", {"name": "Kitchen Light"}, False),
    ("HassTurnOn", {"area": "Kitchen", "domain": "light"}, False),
    ("HassTurnOn", {"area": "Garage", "domain": "light"}, False),
    ("HassGetState", {"name": "Front Door", "state": "locked"}, False),   # a question
    ("HassStartTimer", {"minutes": 5}, False),
    ("HassCancelTimer", {"name": "pizza"}, False),                        # a timer's name, not an entity
    ("HassStartTimer", {"minutes": 5, "conversation_command": "open the garage"}, True),
])
def test_is_sensitive(intent: str, slots: dict[str, Any], want: bool) -> None:
    assert is_sensitive(intent, slots, HOME) is want


def test_sensitive_covers_by_class_or_name() -> None:
    assert {"lock", "alarm_control_panel"} <= SENSITIVE_DOMAINS
    assert Entity("Big One", "cover", device_class="garage").sensitive
    assert not Entity("Side Garage Blind", "cover", device_class="blind").sensitive  # the class decides
    assert Entity("Side Gate", "cover").sensitive                                   # no class: the name
    assert not Entity("Kitchen Blind", "cover").sensitive
    home = HomeVocabulary(areas=("Porch",), entities=(Entity("Kitchen Blind", "cover", "Porch"),))
    assert not is_sensitive("HassTurnOn", {"area": "Porch", "domain": "cover"}, home)


# -- layer 2: the tiny classifier -------------------------------------------------------------------------------

def test_action_from_label() -> None:
    off = action_from_label("lights_off", 0.97, "turn off the lights", 0.8)
    assert off == Action("HassTurnOff", {"domain": "light"}, False, "classifier", 0.97, "turn off the lights")
    lock = action_from_label("lock_door", 0.99, "lock up", 0.8)
    assert lock is not None and lock.sensitive and lock.slots == {"domain": "lock"}
    assert action_from_label("lights_off", 0.79, "dim it", 0.8) is None        # below the threshold
    assert action_from_label("lights_off", 0.8, "x", 0.8) is not None           # at it
    assert action_from_label("lights_off", math.nan, "x", 0.0) is None
    assert action_from_label("unknown", 1.0, "uber please", 0.0) is None        # the rejection class
    with pytest.raises(ValueError, match="open_sesame"):
        action_from_label("open_sesame", 1.0, "x", 0.5)


def test_threshold_is_the_shipped_calibration() -> None:
    meta = json.loads((bundled_models_dir() / "intent-tiny.json").read_text())
    assert CLASSIFIER_THRESHOLD == meta["threshold"]
    assert 0.5 <= CLASSIFIER_THRESHOLD < 1.0
    assert meta["reject_label"] == "unknown" and "unknown" in meta["labels"]
    assert set(meta["labels"]) - {"unknown"} == set(intents.LABEL_ACTIONS)
    val = meta["calibration"]["validation"]
    assert val["false_action_rate_upper95"] <= 0.01


MODEL = ModelSpec(name="intent-tiny", runtime="tflite", tasks=["intent"])


@pytest.fixture(scope="module")
def executor() -> TfliteExecutor:
    return TfliteExecutor(bundled_models_dir())


async def classify(executor: TfliteExecutor, text: str) -> Action | None:
    out = await executor.run(InferCall(id="t", task="intent", model=MODEL, text=text))
    assert out.confidence is not None
    return action_from_label(out.output, out.confidence, text, CLASSIFIER_THRESHOLD)


@pytest.mark.parametrize("text", [
    # the issue's examples: the old model gave these lock_door 1.00, play_music, lights_off
    "uber please",
    "what are the nutrition facts for carrots",
    "turn off sound",
    "can you unlock my bank account",
])
async def test_shipped_classifier_rejects_known_bad_examples(executor: TfliteExecutor, text: str) -> None:
    assert await classify(executor, text) is None


@pytest.mark.parametrize("text, intent, domain", [
    ("turn off the lights", "HassTurnOff", "light"),
    ("lock the front door", "HassTurnOn", "lock"),
    ("set a timer for ten minutes", "HassStartTimer", None),
])
async def test_shipped_classifier_still_acts_on_commands(executor: TfliteExecutor, text: str, intent: str,
                                                         domain: str | None) -> None:
    action = await classify(executor, text)
    assert action is not None and action.intent == intent and action.slots.get("domain") == domain
    assert action.sensitive is (domain == "lock")


# -- layer 3: a language model's answer ----------------------------------------------------------------------

@pytest.fixture(params=["jsonschema", "by hand"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each check runs with jsonschema and with the hand-written validator it falls back to."""
    if request.param == "by hand":
        monkeypatch.setattr(intents, "_schema_error", intents._validate_by_hand)
    else:
        pytest.importorskip("jsonschema")
    return str(request.param)


def test_parse_llm_actions_accepts_a_valid_answer(validator: str) -> None:
    answer = ('Here you go:\n```json\n{"actions": [{"intent": "HassTurnOff", "slots": {"name": "kitchen lamp"}},'
              ' {"intent": "HassTurnOn", "slots": {"name": "Garage Door"}},'
              ' {"intent": "HassTurnOn", "slots": {"area": "living room", "domain": "light"}}]}\n```')
    actions = parse_llm_actions(answer, "kitchen lamp off, open the garage, living room lights on", HOME)
    assert [(a.intent, a.slots, a.sensitive, a.layer) for a in actions] == [
        ("HassTurnOff", {"name": "Kitchen Light", "domain": "light"}, False, "llm"),
        ("HassTurnOn", {"name": "Garage Door", "domain": "cover"}, True, "llm"),
        ("HassTurnOn", {"area": "Living Room", "domain": "light"}, False, "llm"),
    ]
    assert all(a.text == "kitchen lamp off, open the garage, living room lights on" for a in actions)


def test_parse_llm_actions_no_action(validator: str) -> None:
    assert parse_llm_actions('{"actions": []}', "what is the capital of France", HOME) == []
    assert parse_llm_actions('thinking... {"actions": []} done', "hello", HOME) == []


@pytest.mark.parametrize("answer, why", [
    ("I cannot help with that.", "no JSON object"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {}', "no valid JSON object"),
    ('["HassTurnOff"]', "no JSON object"),
    ('{"actions": [{"intent": "HassUnlockEverything", "slots": {}}]}', "HassUnlockEverything"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {"name": "Pool Pump"}}]}', "'Pool Pump' is not an entity"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {"area": "Attic"}}]}', "'Attic' is not one of this home's areas"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {"domain": "vacuum"}}]}', "no entity of that domain"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {"name": "Kitchen Light"}, "reason": "asked"}]}',
     "'reason' was unexpected"),
    ('{"actions": [], "comment": "nothing to do"}', "'comment' was unexpected"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {"colour": "red"}}]}', "'colour' is not one of"),
    ('{"actions": [{"intent": "HassTurnOff"}]}', "'slots' is a required property"),
    ('{"actions": "none"}', "not of type 'array'"),
    ('{"actions": [{"intent": "HassTurnOff", "slots": {"name": {"id": 1}}}]}', "slots/name"),
])
def test_parse_llm_actions_refuses(validator: str, answer: str, why: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_llm_actions(answer, "s", HOME)
    assert why in str(err.value)


def test_parse_llm_actions_refuses_too_many_actions(validator: str) -> None:
    many = json.dumps({"actions": [{"intent": "HassGetCurrentTime", "slots": {}}] * 9})
    with pytest.raises(ValueError, match="actions"):
        parse_llm_actions(many, "s", HOME)


def test_action_schema_is_a_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(ACTION_SCHEMA)
    allowed = ACTION_SCHEMA["properties"]["actions"]["items"]["properties"]["intent"]["enum"]
    assert {"HassTurnOn", "HassTurnOff", "HassGetState", "HassStartTimer", "CallContact"} <= set(allowed)
    jsonschema.validate({"actions": []}, ACTION_SCHEMA)


def test_llm_prompt_says_what_may_be_answered() -> None:
    prompt = llm_prompt('turn "off" everything', HOME)
    assert '{"actions": []}' in prompt  # the "no action" answer
    for name in ("Kitchen Light", "Front Door", "Garage Door", "Living Room", "HassTurnOff", "CallContact"):
        assert name in prompt
    assert '"additionalProperties":false' in prompt  # the schema
    assert prompt.rstrip().endswith(json.dumps('turn "off" everything'))  # quoted, never spliced in


# -- the home's names -------------------------------------------------------------------------------------------

def test_home_vocabulary_from_config() -> None:
    home = HomeVocabulary.from_config({
        "areas": ["Kitchen", "Garage"], "floors": ["Ground Floor"],
        "entities": [{"name": "Kitchen  Light", "domain": "light", "area": "kitchen", "aliases": ["big lamp"]},
                     {"name": "Big Door", "domain": "cover", "area": "Garage", "device_class": "garage"}],
    }, "voice.home")
    assert home.areas == ("Kitchen", "Garage") and home.floors == ("Ground Floor",)
    assert home.entities[0] == Entity("Kitchen Light", "light", "Kitchen", ("big lamp",))
    assert home.entities[1].sensitive
    assert HomeVocabulary.from_config({}, "voice.home") == HomeVocabulary((), (), ())


@pytest.mark.parametrize("doc, why", [
    (["Kitchen"], "voice.home: expected a table"),
    ({"rooms": []}, "voice.home: unknown key 'rooms'"),
    ({"areas": "Kitchen"}, "voice.home.areas: expected a list"),
    ({"areas": ["Kitchen", "kitchen"]}, "voice.home.areas[1]: 'kitchen' is given twice"),
    ({"areas": [""]}, "voice.home.areas[0]: expected a non-empty name"),
    ({"floors": [3]}, "voice.home.floors[0]: expected a non-empty name"),
    ({"entities": {"name": "x"}}, "voice.home.entities: expected a list"),
    ({"entities": ["lamp"]}, "voice.home.entities[0]: expected a table"),
    ({"entities": [{"domain": "light"}]}, "voice.home.entities[0].name: expected a non-empty name"),
    ({"entities": [{"name": "Lamp", "domain": "Light!"}]}, "voice.home.entities[0].domain: 'Light!'"),
    ({"entities": [{"name": "Lamp", "domain": "light", "area": "Attic"}]},
     "voice.home.entities[0].area: 'Attic' is not one of the areas"),
    ({"entities": [{"name": "Lamp", "domain": "light", "aliases": "lampy"}]}, "voice.home.entities[0].aliases: expected a list"),
    ({"entities": [{"name": "Lamp", "domain": "light", "colour": "red"}]}, "voice.home.entities[0]: unknown key 'colour'"),
    ({"entities": [{"name": "Door", "domain": "cover", "device_class": "Garage Door"}]},
     "voice.home.entities[0].device_class"),
    ({"entities": [{"name": "Lamp", "domain": "light"}, {"name": "Desk", "domain": "light", "aliases": ["lamp"]}]},
     "voice.home.entities[1]: the name 'lamp' is already used by voice.home.entities[0]"),
    ({"entities": [{"name": "x" * 101, "domain": "light"}]}, "at most 100"),
])
def test_home_vocabulary_from_config_errors(doc: Any, why: str) -> None:
    with pytest.raises(ValueError) as err:
        HomeVocabulary.from_config(doc, "voice.home")
    assert why in str(err.value)


def test_same_name_in_two_domains_is_allowed() -> None:
    home = HomeVocabulary.from_config({"entities": [{"name": "Garden", "domain": "light"},
                                                    {"name": "Garden", "domain": "valve"}]}, "h")
    assert [e.domain for e in home.entities_named("garden")] == ["light", "valve"]


def test_parse_llm_actions_takes_the_answer_not_a_piece_of_it(validator: str) -> None:
    # prose with braces before the answer
    assert parse_llm_actions('Using {the} rules: {"actions": []}', "hi", HOME) == []
    # the first object, when it is the answer even with a typo, is what gets explained
    with pytest.raises(ValueError, match="'action' was unexpected"):
        parse_llm_actions('{"action": []}', "hi", HOME)
