"""From a transcript to the home's intents: the local layers of the voice pipeline, and the rules
that bound what a language model may ask for.

A transcript goes through these layers in order, and the first that answers wins:

1. :class:`HassilLayer`: Home Assistant's own English sentences (the ``home-assistant-intents``
   package, matched by ``hassil``) against this home's names (:class:`HomeVocabulary`). It is
   deterministic: a sentence matches a template or it does not, so its answers carry confidence
   1.0 and its slots are the home's own entity, area and floor names.
2. The tiny intent classifier (``intent-tiny``, run by ``hub/agent/executors/tflite.py``): 8 action
   labels and a rejection class, ``unknown``, trained on broad out-of-scope text from public
   corpora (``models/intent/README.md``). :func:`action_from_label` turns its answer into an
   :class:`Action` only at or above :data:`CLASSIFIER_THRESHOLD`, calibrated on a validation
   split so that at most 1 % of sentences asking for no action fire one.
3. A language model, told :func:`llm_prompt` and answering JSON that :func:`parse_llm_actions`
   validates against :data:`ACTION_SCHEMA` and the home's names; anything else is refused.

Every :class:`Action` says whether it is ``sensitive`` (:func:`is_sensitive`: locks, alarm panels,
garage doors, doors and gates among covers, payments): those are held for a confirmation before
they are published, whichever layer produced them. A read-only intent (a question such as
``HassGetState`` on a lock) is never sensitive, but it is still an action: it is published as an
intent like any other.

Everything here is pure CPU and needs no network; ``HassilLayer.match`` takes p50 ~1.3 ms,
p95 ~2-3 ms per sentence on x86-64 (benchmarks/voice_intents.py measures it; the first call
after start parses the sentences, ~0.1 s, and the first match ~0.1 s more).
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# -- the home's names ---------------------------------------------------------------------------------

#: Domains whose every state-changing action needs a confirmation: a lock, an alarm panel, and
#: ``payment`` (no allowed intent pays today; an intent that did would carry this domain).
SENSITIVE_DOMAINS: frozenset[str] = frozenset({"lock", "alarm_control_panel", "payment"})
#: Covers that open the house: Home Assistant's device classes for them.
SENSITIVE_COVER_CLASSES: frozenset[str] = frozenset({"garage", "door", "gate"})
#: A cover with no device class is taken for one of those when its name or an alias has one of
#: these words ("Garage Door", "Side Gate"); a blind or a curtain is not.
_SENSITIVE_COVER_WORDS = frozenset({"garage", "door", "doors", "gate", "gates"})
#: Intents that change nothing in the home: answering them is never sensitive.
READ_ONLY_INTENTS: frozenset[str] = frozenset({
    "HassGetState", "HassGetWeather", "HassGetCurrentTime", "HassGetCurrentDate",
    "HassClimateGetTemperature", "HassTimerStatus", "HassNevermind", "HassRespond",
})

#: Intents about the hub's timers: their ``name`` is the timer's ("the pizza timer"), not an
#: entity of the home, and they act on no device (unless they carry a command to run later).
TIMER_INTENTS: frozenset[str] = frozenset({
    "HassStartTimer", "HassCancelTimer", "HassCancelAllTimers", "HassIncreaseTimer", "HassDecreaseTimer",
    "HassPauseTimer", "HassUnpauseTimer", "HassTimerStatus",
})

_DOMAIN_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_NAME = 100
_MAX_NAMES = 2000


def _fold(text: str) -> str:
    """How names compare: NFKC, casefolded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True, slots=True)
class Entity:
    """One thing in the home a sentence may name. ``device_class`` (optional, Home Assistant's:
    ``garage``, ``door``, ``window``...) tells a garage door from a blind among covers."""

    name: str
    domain: str
    area: str | None = None
    aliases: tuple[str, ...] = ()
    device_class: str | None = None

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def sensitive(self) -> bool:
        """Whether changing it needs a confirmation."""
        if self.domain in SENSITIVE_DOMAINS:
            return True
        if self.domain != "cover":
            return False
        if self.device_class is not None:
            return self.device_class in SENSITIVE_COVER_CLASSES
        words = {w for n in self.names() for w in re.findall(r"\w+", _fold(n))}
        return bool(words & _SENSITIVE_COVER_WORDS)


@dataclass(frozen=True)
class HomeVocabulary:
    """The names the home's sentences may use: its areas, floors and entities."""

    areas: tuple[str, ...]
    entities: tuple[Entity, ...]
    floors: tuple[str, ...] = ()

    @classmethod
    def demo(cls) -> "HomeVocabulary":
        """A small example home: a light in each of four rooms, the front door's lock, the garage
        door, a thermostat, an alarm panel, a speaker, a fan, a temperature sensor and a shopping list."""
        return cls(
            areas=("Kitchen", "Living Room", "Bedroom", "Garage", "Hallway"),
            floors=("Ground Floor", "First Floor"),
            entities=(
                Entity("Kitchen Light", "light", "Kitchen", ("kitchen lamp",)),
                Entity("Living Room Light", "light", "Living Room", ("living room lamp",)),
                Entity("Bedroom Light", "light", "Bedroom", ("bedside lamp",)),
                Entity("Garage Light", "light", "Garage"),
                Entity("Front Door", "lock", "Hallway", ("front door lock",)),
                Entity("Garage Door", "cover", "Garage", (), "garage"),
                Entity("Thermostat", "climate", "Living Room", ("heating",)),
                Entity("Alarm Panel", "alarm_control_panel", "Hallway", ("alarm",)),
                Entity("Living Room Speaker", "media_player", "Living Room", ("speaker",)),
                Entity("Bedroom Fan", "fan", "Bedroom"),
                Entity("Outdoor Temperature", "sensor", None, ("outside temperature",)),
                Entity("Shopping List", "todo", None),
            ),
        )

    @classmethod
    def from_config(cls, doc: Mapping[str, Any], where: str) -> "HomeVocabulary":
        """Build from a configuration document::

            areas: [Kitchen, Garage]
            floors: [Ground Floor]                      # optional
            entities:
              - {name: Kitchen Light, domain: light, area: Kitchen, aliases: [kitchen lamp]}
              - {name: Garage Door, domain: cover, area: Garage, device_class: garage}

        ValueError names the key (prefixed with ``where``) and why. Names compare without case;
        two areas, two floors, or two entities of one domain may not share a name or alias, since
        a sentence naming it could mean either."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"{where}: expected a table with areas, floors and entities, got {type(doc).__name__}")
        unknown = sorted(set(doc) - {"areas", "floors", "entities"})
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: areas, floors, entities)")
        areas = _names_list(doc.get("areas", []), f"{where}.areas")
        floors = _names_list(doc.get("floors", []), f"{where}.floors")
        raw = doc.get("entities", [])
        if not isinstance(raw, list):
            raise ValueError(f"{where}.entities: expected a list of tables, got {type(raw).__name__}")
        if len(raw) > _MAX_NAMES:
            raise ValueError(f"{where}.entities: {len(raw)} entities; at most {_MAX_NAMES}")
        area_by_fold = {_fold(a): a for a in areas}
        entities: list[Entity] = []
        seen: dict[tuple[str, str], str] = {}  # (domain, folded name) → where it was first given
        for i, item in enumerate(raw):
            at = f"{where}.entities[{i}]"
            if not isinstance(item, Mapping):
                raise ValueError(f"{at}: expected a table with name and domain, got {type(item).__name__}")
            extra = sorted(set(item) - {"name", "domain", "area", "aliases", "device_class"})
            if extra:
                raise ValueError(f"{at}: unknown key {extra[0]!r} (allowed: name, domain, area, aliases, device_class)")
            name = _name(item.get("name"), f"{at}.name")
            domain = item.get("domain")
            if not isinstance(domain, str) or not _DOMAIN_RE.match(domain):
                raise ValueError(f"{at}.domain: {domain!r} is not a Home Assistant domain (lowercase, like 'light' or 'lock')")
            area = item.get("area")
            if area is not None:
                if not isinstance(area, str) or _fold(area) not in area_by_fold:
                    raise ValueError(f"{at}.area: {area!r} is not one of the areas ({', '.join(areas) or 'none given'})")
                area = area_by_fold[_fold(area)]
            aliases_raw = item.get("aliases", [])
            if not isinstance(aliases_raw, list):
                raise ValueError(f"{at}.aliases: expected a list of names, got {type(aliases_raw).__name__}")
            aliases = tuple(_name(a, f"{at}.aliases[{j}]") for j, a in enumerate(aliases_raw))
            device_class = item.get("device_class")
            if device_class is not None and (not isinstance(device_class, str) or not _DOMAIN_RE.match(device_class)):
                raise ValueError(f"{at}.device_class: {device_class!r} is not a device class (lowercase, like 'garage')")
            for n in (name, *aliases):
                key = (domain, _fold(n))
                if key in seen:
                    raise ValueError(f"{at}: the name {n!r} is already used by {seen[key]} (same domain {domain!r}); "
                                     f"a sentence naming it would be ambiguous")
                seen[key] = f"{at}"
            entities.append(Entity(name, domain, area, aliases, device_class))
        return cls(tuple(areas), tuple(entities), tuple(floors))

    # -- look-ups ------------------------------------------------------------------------------------

    def entities_named(self, name: str) -> list[Entity]:
        """Entities whose name or alias is ``name`` (any case)."""
        key = _fold(name)
        return [e for e in self.entities if any(_fold(n) == key for n in e.names())]

    def area_named(self, name: str) -> str | None:
        key = _fold(name)
        return next((a for a in self.areas if _fold(a) == key), None)

    def floor_named(self, name: str) -> str | None:
        key = _fold(name)
        return next((f for f in self.floors if _fold(f) == key), None)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(e.domain for e in self.entities)


def _name(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{at}: expected a non-empty name, got {value!r}")
    if len(value) > _MAX_NAME:
        raise ValueError(f"{at}: a name of {len(value)} characters; at most {_MAX_NAME}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{at}: {value!r} holds control characters")
    return " ".join(value.split())


def _names_list(value: Any, at: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{at}: expected a list of names, got {type(value).__name__}")
    if len(value) > _MAX_NAMES:
        raise ValueError(f"{at}: {len(value)} names; at most {_MAX_NAMES}")
    out: list[str] = []
    seen: set[str] = set()
    for i, v in enumerate(value):
        n = _name(v, f"{at}[{i}]")
        if _fold(n) in seen:
            raise ValueError(f"{at}[{i}]: {n!r} is given twice")
        seen.add(_fold(n))
        out.append(n)
    return out


# -- actions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """One intent to publish. ``sensitive`` ones wait for a confirmation."""

    intent: str                 # Home Assistant intent name, e.g. "HassTurnOff"
    slots: dict[str, Any]       # e.g. {"name": "Kitchen Light", "area": "Kitchen", "domain": "light"}
    sensitive: bool             # needs confirmation before it is published
    layer: str                  # "hassil" | "classifier" | "llm"
    confidence: float           # 1.0 for hassil and for a validated language-model answer
    text: str                   # the sentence

    def to_dict(self) -> dict[str, Any]:
        return {"intent": self.intent, "slots": dict(self.slots), "sensitive": self.sensitive,
                "layer": self.layer, "confidence": self.confidence, "text": self.text}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _targets(slots: Mapping[str, Any], home: HomeVocabulary) -> tuple[list[Entity], bool]:
    """The home's entities an intent with these slots would act on, and whether a named target is
    not in the home at all (then nobody can tell what it is)."""
    names = [n for n in _as_list(slots.get("name")) if isinstance(n, str)]
    domains = {d for d in _as_list(slots.get("domain")) if isinstance(d, str)}
    classes = {c for c in _as_list(slots.get("device_class")) if isinstance(c, str)}
    areas = {_fold(a) for a in _as_list(slots.get("area")) if isinstance(a, str)}
    if not (names or domains or classes or areas or slots.get("floor")):
        return [], False  # a timer, the weather, a list item: no device of the home
    if names:
        found = [e for n in names for e in home.entities_named(n)]
        if domains:
            found = [e for e in found if e.domain in domains] or found
        return found, len(found) == 0 or any(not home.entities_named(n) for n in names)
    found = [e for e in home.entities
             if (not domains or e.domain in domains)
             and (not areas or (e.area is not None and _fold(e.area) in areas))
             and (not classes or e.device_class in classes or e.device_class is None)]
    return found, False


def is_sensitive(intent: str, slots: Mapping[str, Any], home: HomeVocabulary) -> bool:
    """Whether publishing this intent needs a confirmation first: it changes something and
    targets (by name, or by domain, area and device class) a lock, an alarm panel, a payment, or
    a cover that opens the house (garage door, door, gate). A named target the home does not
    have counts as sensitive, since nothing says it is not, and so does a command to run later
    (a timer's ``conversation_command``). Read-only intents never are."""
    if intent in READ_ONLY_INTENTS:
        return False
    if slots.get("conversation_command"):
        return True  # "in ten minutes, <command>": the command runs later, unseen here
    if intent in TIMER_INTENTS:
        return False
    domains = {d for d in _as_list(slots.get("domain")) if isinstance(d, str)}
    if domains & SENSITIVE_DOMAINS:
        return True
    classes = {c for c in _as_list(slots.get("device_class")) if isinstance(c, str)}
    if classes & SENSITIVE_COVER_CLASSES and (not domains or "cover" in domains):
        return True
    targets, unknown_name = _targets(slots, home)
    return unknown_name or any(e.sensitive for e in targets)


# -- layer 1: hassil ---------------------------------------------------------------------------------------

_INTENTS_LOCK = threading.Lock()
_INTENTS: dict[str, Any] = {}  # language → hassil Intents, parsed once per process


def _load_intents(language: str) -> Any:
    with _INTENTS_LOCK:
        if language not in _INTENTS:
            import home_assistant_intents
            from hassil import Intents
            data = home_assistant_intents.get_intents(language)
            if data is None:
                raise ValueError(f"home-assistant-intents has no sentences for language {language!r}")
            _INTENTS[language] = Intents.from_dict(data)
        return _INTENTS[language]


class HassilLayer:
    """Home Assistant's sentences, matched against this home's names.

    ``match`` answers an :class:`Action` whose slots use the home's own names (an alias comes
    out as the entity's name; a name also brings its ``domain``), or None when no template matches,
    when a matched name is not in the matched area, or when a delayed command ("in ten minutes,
    ...") is not itself one this layer understands. ``area`` (keyword only) is the area of the
    microphone that heard the sentence, for "turn off the lights" and other sentences that mean
    "here"; without it they do not match. Only the sentences about domains the home has are
    tried, as Home Assistant scopes them (a home that lists no entities is not scoped)."""

    def __init__(self, home: HomeVocabulary, language: str = "en") -> None:
        from hassil import TextSlotList

        self.home = home
        self.language = language
        intents = _load_intents(language)
        if home.entities:
            # Only the sentences about domains this home has, as Home Assistant scopes them: "who
            # is {anything}" asks about people, and a home without person entities has none.
            # (A home that lists no entity at all has unknown domains: nothing is left out.)
            from hassil import filter_intents
            intents = filter_intents(intents, domains=home.domains)
        self._intents = intents
        # Names are plain text, never templates: an entity called "Light (left)" is that name.
        # The context carries the domain, so that "unlock {name}" only takes locks, as in
        # Home Assistant's own agent; the metadata says which entity it was.
        name_values = [(n, e.name, {"domain": e.domain}, {"entity": i})
                       for i, e in enumerate(home.entities) for n in e.names()]
        self._slot_lists = {
            "name": TextSlotList.from_tuples(name_values, allow_template=False, name="name"),
            "area": TextSlotList.from_strings(home.areas, allow_template=False, name="area"),
            "floor": TextSlotList.from_strings(home.floors, allow_template=False, name="floor"),
        }
        for slot_list in self._slot_lists.values():
            slot_list.get_candidates("")  # build the look-up index now, not in a concurrent first match

    def match(self, text: str, *, area: str | None = None) -> Action | None:
        return self._match(text, area, nested=False)

    def _match(self, text: str, area: str | None, nested: bool) -> Action | None:
        from hassil import recognize_best

        if not text or not text.strip():
            return None
        context = {"area": area} if area else None
        result = recognize_best(text, self._intents, slot_lists=self._slot_lists, intent_context=context,
                                best_slot_name="name", language=self.language)
        if result is None:
            return None
        slots: dict[str, Any] = {}
        entity: Entity | None = None
        for slot, matched in result.entities.items():
            value = matched.value
            if isinstance(value, (set, frozenset, tuple)):
                value = sorted(value) if all(isinstance(v, str) for v in value) else list(value)
            elif isinstance(value, str):
                value = value.strip()
            if slot == "name" and isinstance(matched.metadata, dict) and "entity" in matched.metadata:
                entity = self.home.entities[int(matched.metadata["entity"])]
                value = entity.name
            slots[slot] = value
        if entity is not None:
            slots.setdefault("domain", entity.domain)
            # "turn on the garage light in the kitchen": Home Assistant answers "no such entity
            # in that area"; acting on the garage light would not be what was asked.
            # (An area that came from the microphone's context, not the sentence, has no text.)
            said_area = result.entities.get("area")
            if (said_area is not None and (said_area.text or "").strip() and isinstance(slots.get("area"), str)
                    and entity.area is not None and _fold(slots["area"]) != _fold(entity.area)):
                return None
        intent = result.intent.name
        sensitive = is_sensitive(intent, slots, self.home)
        command = slots.get("conversation_command")
        if isinstance(command, str) and command:
            # "in ten minutes, turn off the lights": only when the command itself is one this
            # layer understands; its sensitivity is the command's.
            inner = None if nested else self._match(command, area, nested=True)
            if inner is None:
                return None
            sensitive = is_sensitive(intent, {k: v for k, v in slots.items() if k != "conversation_command"},
                                     self.home) or inner.sensitive
        return Action(intent, slots, sensitive, "hassil", 1.0, text)


# -- layer 2: the tiny classifier ------------------------------------------------------------------------------

#: The classifier's rejection class.
REJECT_LABEL = "unknown"
#: Each action label of intent-tiny → the intent it stands for, with the slots it implies. The
#: classifier finds no names: the pipeline adds the microphone's area, the query or the duration.
LABEL_ACTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "lights_on": ("HassTurnOn", {"domain": "light"}),
    "lights_off": ("HassTurnOff", {"domain": "light"}),
    "lock_door": ("HassTurnOn", {"domain": "lock"}),
    "play_music": ("HassMediaSearchAndPlay", {"media_class": "music"}),
    "set_timer": ("HassStartTimer", {}),
    "weather": ("HassGetWeather", {}),
    "call_contact": ("CallContact", {}),
    "schedule_meeting": ("ScheduleMeeting", {}),
}
#: Labels whose action is sensitive whatever the slots.
SENSITIVE_LABELS: frozenset[str] = frozenset({"lock_door"})

#: The classifier's confidence below which its answer is rejected (escalated). Calibrated by
#: models/intent/build.py on its validation split (6,301 sentences of four public intent sets,
#: never trained on): the lowest threshold whose one-sided 95 % upper bound of the out-of-scope
#: sentences given an action label is <= 1 % (0.75 % seen, 37 of 4,916; 93.0 % of in-scope
#: sentences acted on), on the temperature-scaled softmax the shipped model outputs. The sidecar
#: (intent-tiny.json, "threshold") records the same number; models/intent/README.md, "Calibration".
CLASSIFIER_THRESHOLD: float = 0.823


def action_from_label(label: str, confidence: float, text: str, threshold: float) -> Action | None:
    """The tiny classifier's answer → an Action, or None for the rejection class or a confidence
    below ``threshold`` (then the sentence goes to the next layer). ValueError for a label the
    classifier does not have."""
    if label == REJECT_LABEL:
        return None
    if label not in LABEL_ACTIONS:
        raise ValueError(f"label {label!r} is not one of intent-tiny's labels "
                         f"({', '.join(sorted(LABEL_ACTIONS))}, {REJECT_LABEL})")
    if not confidence >= threshold:  # NaN too
        return None
    intent, slots = LABEL_ACTIONS[label]
    return Action(intent, dict(slots), label in SENSITIVE_LABELS, "classifier", float(confidence), text)


# -- layer 3: a language model ----------------------------------------------------------------------------------

#: Intents of the hub itself (the classifier's labels that Home Assistant has no intent for),
#: with their free-text slots.
HUB_INTENTS: dict[str, dict[str, str]] = {
    "CallContact": {"contact": "who to call, as the person said it"},
    "ScheduleMeeting": {"with": "who the meeting is with", "when": "when, as the person said it",
                        "subject": "what it is about"},
}
#: Slots whose values must be the home's names.
_NAME_SLOTS = ("name", "area", "floor")
MAX_LLM_ACTIONS = 8
_MAX_ANSWER_CHARS = 65536
_MAX_SLOT_CHARS = 200


def _intent_catalogue() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Allowed intent → {slot: description}, and intent → what it does: Home Assistant's supported
    intents that have English sentences, and the hub's own."""
    import home_assistant_intents

    info = home_assistant_intents.get_intent_info() or {}
    english = set((home_assistant_intents.get_intents("en") or {}).get("intents", {}))
    slots: dict[str, dict[str, str]] = {}
    described: dict[str, str] = {}
    for name in sorted(info):
        meta = info[name]
        if not meta.get("supported", True) or name not in english:
            continue
        slots[name] = {slot: str((d or {}).get("description", "")) for slot, d in (meta.get("slots") or {}).items()}
        described[name] = str(meta.get("description", ""))
    slots.update(HUB_INTENTS)
    described.update({"CallContact": "Phones a contact", "ScheduleMeeting": "Puts a meeting in the calendar"})
    return slots, described


INTENT_SLOTS, INTENT_DESCRIPTIONS = _intent_catalogue()

_SLOT_VALUE = {"anyOf": [
    {"type": "string", "minLength": 1, "maxLength": _MAX_SLOT_CHARS},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1, "maxLength": _MAX_SLOT_CHARS}},
]}

#: What a language model must answer: one JSON object, ``{"actions": [...]}``, each action an
#: allowed intent with only that intent's slots; ``{"actions": []}`` when the sentence asks for
#: no action.
ACTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Home actions",
    "type": "object",
    "additionalProperties": False,
    "required": ["actions"],
    "properties": {
        "actions": {
            "type": "array",
            "maxItems": MAX_LLM_ACTIONS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["intent", "slots"],
                "properties": {
                    "intent": {"enum": sorted(INTENT_SLOTS)},
                    "slots": {"type": "object", "maxProperties": 16, "additionalProperties": _SLOT_VALUE},
                },
                "allOf": [
                    {"if": {"properties": {"intent": {"const": name}}, "required": ["intent"]},
                     "then": {"properties": {"slots": {"propertyNames": {"enum": sorted(slots)}}}}}
                    for name, slots in sorted(INTENT_SLOTS.items())
                ],
            },
        },
    },
}


def _first_json_object(text: str) -> Any:
    """The JSON object of a model's answer (it may wrap it in prose or a code fence): the first
    ``{...}`` that parses and has an ``actions`` key, else the first that parses, unless a ``{``
    before it did not parse (then the answer is broken, and an object found inside it is a piece
    of the answer, not the answer). ValueError when there is none."""
    if len(text) > _MAX_ANSWER_CHARS:
        raise ValueError(f"the answer is {len(text)} characters; at most {_MAX_ANSWER_CHARS} are read")
    decoder = json.JSONDecoder()
    first_error: str | None = None
    first_object: dict[str, Any] | None = None
    start = text.find("{")
    tries = 0
    while start != -1 and tries < 64:
        tries += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            first_error = first_error or f"{exc.msg} at character {exc.pos}"
        except RecursionError:
            first_error = first_error or "nested too deeply"
        else:
            if isinstance(value, dict):
                if "actions" in value:
                    return value
                if first_object is None and first_error is None:
                    first_object = value
        start = text.find("{", start + 1)
    if first_object is not None:
        return first_object
    if first_error is None:
        raise ValueError("the answer holds no JSON object")
    raise ValueError(f"the answer holds no valid JSON object ({first_error})")


def _schema_error(doc: Any) -> str | None:
    """Why ``doc`` does not match ACTION_SCHEMA, or None: with jsonschema when it is installed,
    else by hand (the same rules)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - exercised by the tests through _validate_by_hand
        return _validate_by_hand(doc)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(ACTION_SCHEMA).iter_errors(doc))
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"at {path}: {error.message}"


def _validate_by_hand(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"at the top level: {type(doc).__name__} is not an object"
    extra = sorted(set(doc) - {"actions"})
    if extra:
        return f"at the top level: additional properties are not allowed ({extra[0]!r} was unexpected)"
    actions = doc.get("actions")
    if not isinstance(actions, list):
        return "at the top level: 'actions' is a required array" if "actions" not in doc \
            else f"at actions: {json.dumps(actions)[:40]} is not of type 'array'"
    if len(actions) > MAX_LLM_ACTIONS:
        return f"at actions: {len(actions)} actions; at most {MAX_LLM_ACTIONS}"
    for i, act in enumerate(actions):
        at = f"actions/{i}"
        if not isinstance(act, dict):
            return f"at {at}: {type(act).__name__} is not an object"
        extra = sorted(set(act) - {"intent", "slots"})
        if extra:
            return f"at {at}: additional properties are not allowed ({extra[0]!r} was unexpected)"
        for key in ("intent", "slots"):
            if key not in act:
                return f"at {at}: {key!r} is a required property"
        if act["intent"] not in INTENT_SLOTS:
            return f"at {at}/intent: {act['intent']!r} is not one of the allowed intents"
        slots = act["slots"]
        if not isinstance(slots, dict):
            return f"at {at}/slots: {type(slots).__name__} is not an object"
        if len(slots) > 16:
            return f"at {at}/slots: {len(slots)} slots; at most 16"
        for key, value in slots.items():
            if key not in INTENT_SLOTS[act["intent"]]:
                return f"at {at}/slots: {key!r} is not one of {sorted(INTENT_SLOTS[act['intent']])}"
            ok = (isinstance(value, str) and 0 < len(value) <= _MAX_SLOT_CHARS) \
                or (isinstance(value, (int, float)) and not isinstance(value, bool)) or isinstance(value, bool) \
                or (isinstance(value, list) and len(value) <= 16
                    and all(isinstance(v, str) and 0 < len(v) <= _MAX_SLOT_CHARS for v in value))
            if not ok:
                return f"at {at}/slots/{key}: {json.dumps(value)[:40]} is not a name, a number, a boolean or a list of names"
    return None


def parse_llm_actions(text: str, sentence: str, home: HomeVocabulary) -> list[Action]:
    """A language model's answer → the actions it asks for (``[]`` for "no action").

    Takes the first JSON object in ``text``, checks it against :data:`ACTION_SCHEMA` (extra keys,
    unknown intents, slots the intent does not have, values of the wrong type are refused), then
    against the home: ``name``, ``area`` and ``floor`` must be the home's names (they come out
    spelled as the home spells them, an alias as its entity's name; a timer's ``name`` is the
    timer's own) and ``domain`` one the home has. ValueError says which action and why."""
    doc = _first_json_object(text)
    why = _schema_error(doc)
    if why is not None:
        raise ValueError(f"the answer does not match the action schema {why}")
    actions: list[Action] = []
    for i, act in enumerate(doc["actions"]):
        intent, slots = act["intent"], dict(act["slots"])
        at = f"action {i} ({intent})"
        for key in _NAME_SLOTS:
            if key not in slots or (key == "name" and intent in TIMER_INTENTS):
                continue
            values = _as_list(slots[key])
            resolved = []
            for v in values:
                if key == "name":
                    found = home.entities_named(v)
                    if not found:
                        known = ", ".join(e.name for e in home.entities) or "none"
                        raise ValueError(f"{at}: name {v!r} is not an entity of this home (known: {known})")
                    wanted = {d for d in _as_list(slots.get("domain")) if isinstance(d, str)}
                    found = [e for e in found if not wanted or e.domain in wanted]
                    if not found:
                        raise ValueError(f"{at}: name {v!r} is not an entity of domain {sorted(wanted)} in this home")
                    resolved.append(found[0].name)
                else:
                    canonical = home.area_named(v) if key == "area" else home.floor_named(v)
                    if canonical is None:
                        known = ", ".join(home.areas if key == "area" else home.floors) or "none"
                        raise ValueError(f"{at}: {key} {v!r} is not one of this home's {key}s ({known})")
                    resolved.append(canonical)
            slots[key] = resolved if isinstance(slots[key], list) else resolved[0]
        for d in _as_list(slots.get("domain")):
            if d not in home.domains:
                raise ValueError(f"{at}: domain {d!r}: this home has no entity of that domain "
                                 f"({', '.join(sorted(home.domains)) or 'none'})")
        if "name" in slots and "domain" not in slots and intent not in TIMER_INTENTS:
            entity = home.entities_named(_as_list(slots["name"])[0])[0]
            slots["domain"] = entity.domain
        actions.append(Action(intent, slots, is_sensitive(intent, slots, home), "llm", 1.0, sentence))
    return actions


def _describe_home(home: HomeVocabulary) -> Iterable[str]:
    yield "Areas: " + (", ".join(home.areas) or "none")
    if home.floors:
        yield "Floors: " + ", ".join(home.floors)
    yield "Entities (name | domain | area | other names):"
    for e in home.entities:
        yield f"- {e.name} | {e.domain} | {e.area or '-'} | {', '.join(e.aliases) or '-'}"


def llm_prompt(sentence: str, home: HomeVocabulary) -> str:
    """The instruction for a language model that gets the sentences the local layers could not
    place: what it may answer (the allowed intents and their slots, the home's names, the
    schema) and that ``{"actions": []}`` is the answer when the sentence asks for no action."""
    skeleton = {k: v for k, v in ACTION_SCHEMA.items() if k != "properties"}
    skeleton["properties"] = {"actions": {**ACTION_SCHEMA["properties"]["actions"],
                                          "items": {k: v for k, v in ACTION_SCHEMA["properties"]["actions"]["items"].items()
                                                    if k != "allOf"}}}
    lines = [
        "You turn one sentence spoken in a home into the home-automation actions it asks for.",
        'Answer with exactly one JSON object and nothing else: {"actions": [{"intent": ..., "slots": {...}}]}.',
        'When the sentence asks for no action in this home (a question about anything else, chit-chat, '
        'a request this home cannot do), answer {"actions": []}.',
        "Use only the intents below, only the slots listed for each, and only the names of this home "
        "exactly as written here. Never invent a name. Leave out a slot you do not know.",
        "",
        "Intents (name: what it does; slots):",
    ]
    for name in sorted(INTENT_SLOTS):
        lines.append(f"- {name}: {INTENT_DESCRIPTIONS.get(name, '')}; slots: {', '.join(sorted(INTENT_SLOTS[name])) or 'none'}")
    lines += ["", *_describe_home(home), "", "JSON Schema of the answer:",
              json.dumps(skeleton, separators=(",", ":")), "",
              "The sentence (a JSON string):", json.dumps(sentence, ensure_ascii=False)]
    return "\n".join(lines)


__all__ = [
    "ACTION_SCHEMA", "Action", "CLASSIFIER_THRESHOLD", "Entity", "HassilLayer", "HomeVocabulary",
    "INTENT_SLOTS", "LABEL_ACTIONS", "READ_ONLY_INTENTS", "REJECT_LABEL", "SENSITIVE_COVER_CLASSES",
    "SENSITIVE_DOMAINS", "TIMER_INTENTS", "action_from_label", "is_sensitive", "llm_prompt", "parse_llm_actions",
]

