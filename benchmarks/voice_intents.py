"""Voice intents: what the local layers understand, and how often they act when nobody asked.

    .venv/bin/python benchmarks/voice_intents.py [--json] [--limit N]

Layers (plugins/voice/intents.py): hassil against Home Assistant's English sentences, then the tiny
intent classifier (intent-tiny through the tflite executor, at CLASSIFIER_THRESHOLD); what
neither answers would go to a language model, which is not run here. "local" is the two in
that order.

Measured on derived public data (benchmarks/data/voice/README.md says where each file comes
from, at which commit, under which licence, and how it was derived):

- Home Assistant's English test sentences (1,110 in 205 files, each file with its own small home,
  given to hassil as the home's names; the microphone's area is the file's context area): the
  share each layer resolves, and how many of its answers have the right intent (and, for hassil,
  the right slots). The classifier knows 8 labels: an answer of it is right when its intent is
  the sentence's and, for the light and lock labels, the domain is the sentence's too.
- In-scope commands of public sets (CLINC150, SNIPS, HWU64 test splits: sentences of the
  classifier's labels) and models/intent/test.csv, against the demo home: the share acted on and
  the share acted on rightly.
- Out-of-scope sentences (the test splits of CLINC150, SNIPS, Banking77 and HWU64 minus every
  intent a home assistant could serve; none of them occurs, exactly or after normalisation, in
  the classifier's training or validation text): the false action rate. An action is anything
  that would be published as an intent, questions included (HassGetState, HassGetWeather...):
  on these sentences every one is false.

Sensitive actions (locks, alarm panels, garage doors, doors and gates): the pipeline holds each
for a confirmation. Counted: how many would have fired, and, checked independently of
``is_sensitive`` from the sentences' expected slots and the homes' entities, how many the layers
failed to flag (those would fire without confirmation; the target is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import summary  # noqa: E402

from hub.agent.executors.base import InferCall  # noqa: E402
from hub.agent.executors.tflite import TfliteExecutor, bundled_models_dir  # noqa: E402
from hub.capability import ModelSpec  # noqa: E402
from plugins.voice.intents import (  # noqa: E402
    CLASSIFIER_THRESHOLD,
    LABEL_ACTIONS,
    READ_ONLY_INTENTS,
    SENSITIVE_COVER_CLASSES,
    SENSITIVE_DOMAINS,
    Action,
    Entity,
    HassilLayer,
    HomeVocabulary,
    action_from_label,
)

DATA = ROOT / "benchmarks" / "data" / "voice"
HA_TESTS = DATA / "ha_tests_en.json.gz"
PUBLIC_TEST = DATA / "public_test.csv.gz"
HAND_TEST = ROOT / "models" / "intent" / "test.csv"
MODEL = ModelSpec(name="intent-tiny", runtime="tflite", tasks=["intent"])
#: The area a sentence is heard in when the benchmark gives hassil one (a microphone's area):
#: "play {anything}" and "turn on the lights" only match with one.
DEMO_AREA = "Living Room"
CONTEXT_AREA = "__context_area__"  # as Home Assistant's tests name a context area they do not mark

SWEEP = (0.0, 0.5, 0.6, 0.7, 0.8, CLASSIFIER_THRESHOLD, 0.9, 0.95, 0.99)
TARGETS = {"resolved_locally_min": 0.80, "false_action_rate_max": 0.01, "in_scope_acted_on_min": 0.90}


# -- the classifier, through the executor the hub runs ----------------------------------------------------

class Classifier:
    def __init__(self) -> None:
        self.executor = TfliteExecutor(bundled_models_dir())
        self.compute_us: list[float] = []
        self._cache: dict[str, tuple[str, float]] = {}

    async def label(self, text: str) -> tuple[str, float]:
        if text not in self._cache:
            out = await self.executor.run(InferCall(id="bench", task="intent", model=MODEL, text=text))
            self.compute_us.append(float(out.stats["compute_us"]))
            self._cache[text] = (out.output, float(out.confidence or 0.0))
        return self._cache[text]

    async def action(self, text: str) -> tuple[Action | None, str, float]:
        label, conf = await self.label(text)
        return action_from_label(label, conf, text, CLASSIFIER_THRESHOLD), label, conf


class Hassil:
    """HassilLayer with its per-sentence time recorded."""

    def __init__(self, home: HomeVocabulary, ms: list[float]) -> None:
        self.layer = HassilLayer(home)
        self.ms = ms

    def match(self, text: str, area: str | None) -> Action | None:
        t0 = time.perf_counter()
        action = self.layer.match(text, area=area)
        self.ms.append((time.perf_counter() - t0) * 1000)
        return action


# -- what is right --------------------------------------------------------------------------------------------

def _values(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple, set)) else [v]


def slot_matches(expected: Any, actual: Any) -> bool:
    """Home Assistant's own rule (tests/test_slot_combinations.py): a list on either side means
    "one of", numbers compare as numbers."""
    if actual is None:
        return False
    exp, act = _values(expected), _values(actual)
    if isinstance(expected, list) and isinstance(actual, list):
        return set(map(str, act)) <= set(map(str, exp))
    if isinstance(expected, list):
        return act[0] in exp or str(act[0]) in map(str, exp)
    if isinstance(actual, list):
        return expected in act or str(expected) in map(str, act)
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return float(expected) == float(actual)
    return str(expected) == str(actual)


def target_domain(slots: dict[str, Any], home: HomeVocabulary) -> str | None:
    d = slots.get("domain")
    if isinstance(d, str):
        return d
    if isinstance(d, list) and len(d) == 1:
        return str(d[0])
    name = slots.get("name")
    if isinstance(name, str):
        found = home.entities_named(name)
        if found:
            return found[0].domain
    return None


def label_of(action: Action, home: HomeVocabulary) -> str:
    """The classifier label an action stands for, or "other:<intent>"."""
    domain = target_domain(action.slots, home)
    if action.intent == "HassTurnOn" and domain == "light":
        return "lights_on"
    if action.intent == "HassTurnOff" and domain == "light":
        return "lights_off"
    if action.intent == "HassTurnOn" and domain == "lock":
        return "lock_door"
    for label, (intent, slots) in LABEL_ACTIONS.items():
        if action.intent == intent and "domain" not in slots:
            return label
    if action.intent == "HassMediaUnpause":
        return "play_music"
    return f"other:{action.intent}"


def expected_sensitive(intent: str, slots: dict[str, Any], home: HomeVocabulary) -> bool:
    """Independently of is_sensitive: does this expected intent change a lock, an alarm panel or a
    cover that opens the house?"""
    if intent in READ_ONLY_INTENTS:
        return False
    domains = {str(d) for d in _values(slots.get("domain"))} if slots.get("domain") is not None else set()
    classes = {str(c) for c in _values(slots.get("device_class"))} if slots.get("device_class") is not None else set()
    if domains & SENSITIVE_DOMAINS or classes & SENSITIVE_COVER_CLASSES:
        return True
    for n in _values(slots.get("name")) if slots.get("name") is not None else []:
        for e in home.entities_named(str(n)):
            if e.domain in SENSITIVE_DOMAINS or (e.domain == "cover" and e.device_class in SENSITIVE_COVER_CLASSES):
                return True
    return False


# -- Home Assistant's test sentences ---------------------------------------------------------------------------

@dataclass
class LayerTally:
    n: int = 0
    resolved: int = 0
    right_intent: int = 0
    right_slots: int = 0
    slots_compared: int = 0
    by_layer: Counter = field(default_factory=Counter)

    def figures(self) -> dict[str, Any]:
        n = max(self.n, 1)
        out = {"sentences": self.n, "resolved": self.resolved, "resolved_share": round(self.resolved / n, 4),
               "right_intent": self.right_intent, "accuracy": round(self.right_intent / n, 4),
               "precision": round(self.right_intent / max(self.resolved, 1), 4)}
        if self.slots_compared:
            out["right_intent_and_slots"] = self.right_slots
            out["accuracy_with_slots"] = round(self.right_slots / n, 4)
        if self.by_layer:
            out["by_layer"] = dict(self.by_layer)
        return out


def home_of(f: dict[str, Any]) -> HomeVocabulary:
    return HomeVocabulary(
        areas=tuple(a["name"] for a in f["areas"]),
        entities=tuple(Entity(e["name"], e["domain"], e.get("area"), (), e.get("device_class")) for e in f["entities"]),
        floors=tuple(f["floors"]))


async def run_ha_tests(ha: dict[str, Any], clf: Classifier, hassil_ms: list[float], limit: int) -> dict[str, Any]:
    tallies = {k: LayerTally() for k in ("hassil", "classifier", "local")}
    per_intent: dict[str, Counter] = {}
    sensitive = Counter()
    misses: list[dict[str, Any]] = []
    count = 0
    for f in ha["files"]:
        home = home_of(f)
        hassil = Hassil(home, hassil_ms)
        area = next((a["name"] for a in f["areas"] if a.get("context_area")), CONTEXT_AREA)
        for group in f["tests"]:
            expected = group["slots"]
            for sentence in group["sentences"]:
                if limit and count >= limit:
                    break
                count += 1
                intent = f["intent"]
                h = hassil.match(sentence, area)
                c, _, _ = await clf.action(sentence)
                want_domain = target_domain(expected, home)
                pi = per_intent.setdefault(intent, Counter())
                pi["n"] += 1
                for name, act in (("hassil", h), ("classifier", c), ("local", h or c)):
                    t = tallies[name]
                    t.n += 1
                    if act is None:
                        continue
                    t.resolved += 1
                    if name == "local":
                        t.by_layer[act.layer] += 1
                    right = act.intent == intent
                    if right and act.layer == "classifier" and "domain" in act.slots and want_domain is not None:
                        right = act.slots["domain"] == want_domain  # lights_on is not "turn on the fan"
                    pi[f"{name}_resolved"] += 1
                    if right:
                        t.right_intent += 1
                        pi[f"{name}_right"] += 1
                    if name != "classifier":
                        t.slots_compared += 1  # the classifier finds no slots: its answers never count here
                        if right and act.layer == "hassil" and all(slot_matches(v, act.slots.get(k))
                                                                   for k, v in expected.items()):
                            t.right_slots += 1
                if h is None or h.intent != intent:
                    if len(misses) < 12:
                        misses.append({"sentence": sentence, "want": intent, "hassil": h and h.intent,
                                       "classifier": c and c.intent})
                # Sensitive: expected from the test's own slots, acted from our layers.
                if expected_sensitive(intent, expected, home):
                    sensitive["expected"] += 1
                    act = h or c
                    if act is not None:
                        sensitive["acted"] += 1
                        sensitive["flagged" if act.sensitive else "unflagged"] += 1
    out = {k: t.figures() for k, t in tallies.items()}
    out["per_intent"] = {k: dict(v) for k, v in sorted(per_intent.items())}
    out["hassil_misses_sample"] = misses
    out["sensitive"] = {"sentences": sensitive["expected"], "acted": sensitive["acted"],
                        "held_for_confirmation": sensitive["flagged"],
                        "would_fire_without_confirmation": sensitive["unflagged"]}
    return out


# -- public sentences ---------------------------------------------------------------------------------------

def read_public(limit: int) -> list[dict[str, str]]:
    with gzip.open(PUBLIC_TEST, "rt", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hand = []
    with HAND_TEST.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            scope = "oos_hand" if r["label"] == "unknown" else "positive"
            hand.append({"text": r["utterance"], "source": "intent-test.csv", "intent": r["label"],
                         "scope": scope, "label": r["label"]})
    rows += hand
    if limit:
        rows = rows[::max(1, len(rows) // limit)][:limit]
    return rows


@dataclass
class Outcome:
    fired: int = 0
    right: int = 0
    sensitive: int = 0
    unflagged_sensitive: int = 0
    intents: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    by_layer: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def tally(o: Outcome, act: Action | None, row: dict[str, str], home: HomeVocabulary) -> None:
    if act is None:
        return
    o.fired += 1
    o.intents[act.intent if act.layer != "classifier" else f"{act.intent} (classifier)"] += 1
    o.by_source[row["source"]] += 1
    o.by_layer[act.layer] += 1
    if label_of(act, home) == row["label"]:
        o.right += 1
    if act.sensitive:
        o.sensitive += 1
    elif expected_sensitive(act.intent, act.slots, home):
        o.unflagged_sensitive += 1
    if len(o.examples) < 8:
        o.examples.append(f"{row['text']!r} -> {act.intent} {json.dumps(act.slots)} [{act.layer}]")


async def run_public(rows: list[dict[str, str]], clf: Classifier, hassil_ms: list[float]) -> dict[str, Any]:
    home = HomeVocabulary.demo()
    hassil = Hassil(home, hassil_ms)
    sets = {"positive": [r for r in rows if r["scope"] == "positive"],
            "oos": [r for r in rows if r["scope"] == "oos"],
            "adjacent": [r for r in rows if r["scope"] == "adjacent"]}
    variants = ("classifier", "classifier_argmax", "hassil", "hassil_area", "local", "local_area")
    result: dict[str, Any] = {"demo_area": DEMO_AREA}
    for scope, subset in sets.items():
        outs = {v: Outcome() for v in variants}
        for row in subset:
            text = row["text"]
            c, label, conf = await clf.action(text)
            argmax = action_from_label(label, conf, text, 0.0)
            h = hassil.match(text, None)
            ha = hassil.match(text, DEMO_AREA)
            for v, act in (("classifier", c), ("classifier_argmax", argmax), ("hassil", h), ("hassil_area", ha),
                           ("local", h or c), ("local_area", ha or c)):
                tally(outs[v], act, row, home)
        n = len(subset)
        block: dict[str, Any] = {"sentences": n, "by_source": dict(Counter(r["source"] for r in subset))}
        for v, o in outs.items():
            fig: dict[str, Any] = {"fired": o.fired, "rate": round(o.fired / max(n, 1), 4)}
            fig["by_source"] = {s: {"fired": o.by_source[s], "of": c, "rate": round(o.by_source[s] / c, 4)}
                                for s, c in block["by_source"].items()}
            if scope == "positive":
                fig["right"] = o.right
                fig["right_rate"] = round(o.right / max(n, 1), 4)
                public = [s for s in block["by_source"] if s != "intent-test.csv"]
                of = sum(block["by_source"][s] for s in public)
                fig["public_only"] = {"fired": sum(o.by_source[s] for s in public), "of": of,
                                      "rate": round(sum(o.by_source[s] for s in public) / max(of, 1), 4)}
            else:
                fig["intents"] = dict(o.intents.most_common(8))
                fig["examples"] = o.examples[:5]
            if o.by_layer:
                fig["by_layer"] = dict(o.by_layer)
            fig["sensitive_held"] = o.sensitive
            fig["sensitive_unflagged"] = o.unflagged_sensitive
            block[v] = fig
        result[scope] = block
    # The classifier's trade-off on these test sentences at other thresholds: information only
    # (the shipped threshold is set on the validation split, models/intent/build.py).
    sweep = []
    for t in SWEEP:
        row: dict[str, Any] = {"threshold": t}
        for scope in ("positive", "oos"):
            fired = 0
            for r in sets[scope]:
                label, conf = await clf.label(r["text"])
                fired += label != "unknown" and conf >= t
            row[scope] = round(fired / max(len(sets[scope]), 1), 4)
        sweep.append(row)
    result["classifier_threshold_sweep"] = sweep
    return result


# -- report --------------------------------------------------------------------------------------------------

def targets(res: dict[str, Any]) -> dict[str, Any]:
    ha, pub = res["ha_tests"], res["public"]
    pos_n = pub["positive"]["sentences"]
    # In-scope commands of the local layers: HA's test sentences and the public in-scope ones.
    local_in = (ha["local"]["resolved"] + pub["positive"]["local"]["fired"]) / max(ha["local"]["sentences"] + pos_n, 1)
    checks = {
        "resolved_locally_ha": {"value": ha["local"]["resolved_share"], "min": TARGETS["resolved_locally_min"]},
        "false_action_rate_classifier": {"value": pub["oos"]["classifier"]["rate"], "max": TARGETS["false_action_rate_max"]},
        "false_action_rate_local": {"value": pub["oos"]["local"]["rate"], "max": TARGETS["false_action_rate_max"]},
        "false_action_rate_local_area": {"value": pub["oos"]["local_area"]["rate"], "max": TARGETS["false_action_rate_max"]},
        "in_scope_acted_on_classifier": {"value": pub["positive"]["classifier"]["rate"], "min": TARGETS["in_scope_acted_on_min"]},
        "in_scope_acted_on_local": {"value": round(local_in, 4), "min": TARGETS["in_scope_acted_on_min"]},
        "sensitive_without_confirmation": {"value": ha["sensitive"]["would_fire_without_confirmation"]
                                           + sum(pub[s][v]["sensitive_unflagged"] for s in ("positive", "oos", "adjacent")
                                                 for v in ("classifier", "hassil", "hassil_area", "local", "local_area")),
                                           "max": 0},
    }
    for c in checks.values():
        c["met"] = (c["value"] >= c["min"]) if "min" in c else (c["value"] <= c["max"])
    return checks


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def format_report(res: dict[str, Any]) -> str:
    ha, pub = res["ha_tests"], res["public"]
    lines = [f"intent-tiny threshold {res['threshold']} (sha256 {res['model']['sha256'][:12]}); "
             f"Home Assistant sentences at {res['sources']['ha_commit'][:12]}",
             "", f"Home Assistant's English test sentences ({ha['hassil']['sentences']}):",
             f"  {'layer':11} {'resolved':>9} {'accuracy':>9} {'precision':>9} {'+slots':>9}"]
    for k in ("hassil", "classifier", "local"):
        f = ha[k]
        lines.append(f"  {k:11} {pct(f['resolved_share']):>9} {pct(f['accuracy']):>9} {pct(f['precision']):>9} "
                     f"{pct(f['accuracy_with_slots']) if 'accuracy_with_slots' in f else '-':>9}")
    lines.append(f"  local by layer: {ha['local'].get('by_layer')}; sensitive: {ha['sensitive']}")
    p, o, a = pub["positive"], pub["oos"], pub["adjacent"]
    lines += ["", f"In-scope commands ({p['sentences']}: {p['by_source']}), demo home:",
              f"  {'layer':18} {'acted on':>9} {'rightly':>9}"]
    for v in ("classifier", "classifier_argmax", "hassil", "hassil_area", "local", "local_area"):
        lines.append(f"  {v:18} {pct(p[v]['rate']):>9} {pct(p[v]['right_rate']):>9}   public sets only: "
                     f"{pct(p[v]['public_only']['rate'])} ({p[v]['public_only']['fired']}/{p[v]['public_only']['of']})")
    lines += ["", f"Out-of-scope sentences ({o['sentences']}: {o['by_source']}): false actions",
              f"  {'layer':18} {'fired':>6} {'rate':>8}  sensitive (held / unflagged)"]
    for v in ("classifier", "classifier_argmax", "hassil", "hassil_area", "local", "local_area"):
        lines.append(f"  {v:18} {o[v]['fired']:6d} {pct(o[v]['rate']):>8}  {o[v]['sensitive_held']} / "
                     f"{o[v]['sensitive_unflagged']}   {o[v]['intents']}")
    lines.append("  per source (local): " + ", ".join(f"{s} {pct(x['rate'])} ({x['fired']}/{x['of']})"
                                                      for s, x in o["local"]["by_source"].items()))
    lines.append("  classifier at other thresholds (in scope acted on / false actions): " + ", ".join(
        f"{x['threshold']:g}: {pct(x['positive'])} / {pct(x['oos'])}" for x in pub["classifier_threshold_sweep"]))
    lines += ["", f"Home requests out of the classifier's labels ({a['sentences']}; not counted as false actions): "
                  f"resolved locally {pct(a['local']['rate'])}, with area {pct(a['local_area']['rate'])}"]
    lat = res["latency"]
    lines += ["", f"hassil per sentence: p50 {lat['hassil_ms']['p50']:.2f} ms, p95 {lat['hassil_ms']['p95']:.2f} ms "
                  f"({lat['hassil_ms']['n']} matches); classifier compute p50 {lat['classifier_us']['p50']:.0f} µs",
              "", "Targets:"]
    for k, c in res["targets"].items():
        bound = f">= {c['min']}" if "min" in c else f"<= {c['max']}"
        lines.append(f"  {k:32} {c['value']!s:>8} {bound:>8}  {'met' if c['met'] else 'NOT MET'}")
    return "\n".join(lines)


async def run(limit: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with gzip.open(HA_TESTS, "rt", encoding="utf-8") as f:
        ha = json.load(f)
    clf = Classifier()
    hassil_ms: list[float] = []
    ha_res = await run_ha_tests(ha, clf, hassil_ms, limit)
    pub_res = await run_public(read_public(limit), clf, hassil_ms)
    meta = json.loads((bundled_models_dir() / "intent-tiny.json").read_text())
    res: dict[str, Any] = {
        "threshold": CLASSIFIER_THRESHOLD,
        "model": {"sha256": meta["sha256"], "size_bytes": meta["size_bytes"], "sidecar_threshold": meta.get("threshold")},
        "sources": {"ha_commit": ha["commit"], "ha_source": ha["source"], "data": "benchmarks/data/voice/README.md"},
        "ha_tests": ha_res,
        "public": pub_res,
        "latency": {"hassil_ms": summary(hassil_ms), "classifier_us": summary(clf.compute_us)},
    }
    res["targets"] = targets(res)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--limit", type=int, default=0, help="only about N sentences of each kind (a quick look)")
    args = ap.parse_args()
    res = asyncio.run(run(args.limit))
    print(json.dumps(res, indent=1) if args.json else format_report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
