"""Derive the voice benchmark's and the intent classifier's data from public repositories.

    .venv/bin/python benchmarks/data/voice/derive.py [--mirror DIR] [--check]

Reads bare git directories (``DIR/<owner>+<name>/repo``, as the ``fetch`` tool of this
project's sessions writes them; any bare clone works: ``git clone --bare URL DIR/owner+name/repo``)
with ``git show``, and writes:

- ``benchmarks/data/voice/ha_tests_en.json.gz``: Home Assistant's English test sentences
  (``tests/en/<Intent>/<slot combination>.yaml``), each file with its own small home (entities,
  areas, floors) and each sentence's expected intent and slots;
- ``benchmarks/data/voice/public_test.csv.gz``: the test splits of four public intent sets, each
  sentence with its scope for this hub (``positive`` for one of intent-tiny's labels, ``adjacent``
  for a home request some other layer may serve, ``oos`` for out of scope), with every sentence
  that also occurs, exactly or after normalisation, in the classifier's training or validation
  text removed;
- ``models/intent/public.csv.gz``: the training and validation splits the classifier is built
  and calibrated on (``models/intent/build.py``).

The mapping of each public intent to a scope and a training label is the tables below; the README
next to this file says why. ``--check`` derives in memory and compares with the files on disk.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import subprocess
import sys
import unicodedata
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
HA_OUT = HERE / "ha_tests_en.json.gz"
TEST_OUT = HERE / "public_test.csv.gz"
TRAIN_OUT = ROOT / "models" / "intent" / "public.csv.gz"
HAND_WRITTEN = (ROOT / "models" / "intent" / "data.csv", ROOT / "models" / "intent" / "test.csv")

#: repository → the commit these files were derived from (a different HEAD is reported).
SOURCES = {
    "OHF-Voice/intents": "3e74ab7ed8d4319293f3cc24e9895d593959e701",
    "clinc/oos-eval": "828f8093932c8fe6ca7936c3d2e52903b1c523de",
    "sonos/nlu-benchmark": "b86ac7f1577868c42158d0dec77db50956046696",
    "PolyAI-LDN/task-specific-datasets": "57ec275d8078af65b7731c2a98be812d844a6d6b",
    "xliuhw/NLU-Evaluation-Data": "f6071b496b17d71e6eb43f543af0707f4ff30557",
}
HWU_FOLDS = "CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation"

LABELS = ("call_contact", "lights_off", "lights_on", "lock_door", "play_music", "schedule_meeting",
          "set_timer", "weather")
UNKNOWN = "unknown"
DROP = ""  # not used for training

# -- what each public intent is for this hub ----------------------------------------------------------
# scope: positive (one of the classifier's labels), adjacent (a home or assistant request that
# Home Assistant's intents or a language model may serve: never counted as out of scope), oos.
# train: the classifier's label for it in training; DROP when its sentences mix a label's meaning
# with others (training them as "unknown" would teach the model to reject real commands).

POSITIVE = {
    ("clinc150", "make_call"): "call_contact", ("clinc150", "timer"): "set_timer",
    ("clinc150", "play_music"): "play_music", ("clinc150", "weather"): "weather",
    ("snips", "PlayMusic"): "play_music", ("snips", "GetWeather"): "weather",
    ("hwu64", "iot_hue_lighton"): "lights_on", ("hwu64", "iot_hue_lightoff"): "lights_off",
    ("hwu64", "weather_query"): "weather", ("hwu64", "play_music"): "play_music",
}
ADJACENT = {
    "clinc150": {"smart_home": DROP, "calendar_update": DROP, "schedule_meeting": DROP, "next_song": DROP,
                 "meeting_schedule": UNKNOWN, "calendar": UNKNOWN, "alarm": UNKNOWN, "reminder": UNKNOWN,
                 "reminder_update": UNKNOWN, "todo_list": UNKNOWN, "todo_list_update": UNKNOWN,
                 "shopping_list": UNKNOWN, "shopping_list_update": UNKNOWN, "time": UNKNOWN, "date": UNKNOWN,
                 "change_volume": UNKNOWN, "what_song": UNKNOWN, "update_playlist": UNKNOWN, "cancel": UNKNOWN,
                 "whisper_mode": UNKNOWN},
    "snips": {"AddToPlaylist": UNKNOWN},
    "hwu64": {"calendar_set": DROP, "play_audiobook": DROP, "play_podcasts": DROP, "play_radio": DROP,
              "general_quirky": DROP, "general_commandstop": DROP, "iot_hue_lightup": DROP,
              "iot_hue_lightchange": DROP,
              "alarm_query": UNKNOWN, "alarm_remove": UNKNOWN, "alarm_set": UNKNOWN,
              "audio_volume_down": UNKNOWN, "audio_volume_mute": UNKNOWN, "audio_volume_up": UNKNOWN,
              "calendar_query": UNKNOWN, "calendar_remove": UNKNOWN, "datetime_query": UNKNOWN,
              "iot_cleaning": UNKNOWN, "iot_coffee": UNKNOWN, "iot_hue_lightdim": UNKNOWN,
              "iot_wemo_off": UNKNOWN, "iot_wemo_on": UNKNOWN, "lists_createoradd": UNKNOWN,
              "lists_query": UNKNOWN, "lists_remove": UNKNOWN, "music_likeness": UNKNOWN,
              "music_query": UNKNOWN, "music_settings": UNKNOWN},
    "banking77": {},
}
#: At most this many training sentences per (source, intent): keeps the file small and stops the
#: two big sets (SNIPS ~1,900 per intent, Banking77 ~130) from drowning the others.
TRAIN_CAP = {"clinc150": 100, "snips": 250, "banking77": 30, "hwu64": 200}
#: SNIPS's PlayMusic and GetWeather are the largest pool of positives: more of them.
POSITIVE_TRAIN_CAP = {"snips": 1000}
#: Validation is not capped: it sets the classifier's threshold, and a false-action rate of 1 % is
#: only measured with a few thousand out-of-scope sentences of every source (SNIPS's and
#: Banking77's split would otherwise shrink to a few hundred).
VAL_CAP = {"clinc150": 10**6, "snips": 10**6, "banking77": 10**6, "hwu64": 10**6}

_TOKENS = re.compile(r"[\w']+")


def normalise(text: str) -> str:
    """The text as intent-tiny's featurizer sees it (NFKC, casefold, word tokens): two texts that
    normalise alike get the same features."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    return " ".join(_TOKENS.findall(text))


def bucket(text: str, n: int = 100) -> int:
    """A stable pseudo-random 0..n-1 from the text, for the splits a source does not have."""
    return zlib.crc32(normalise(text).encode("utf-8")) % n


@dataclass
class Row:
    text: str
    source: str
    intent: str  # the source's own intent
    scope: str  # positive | adjacent | oos
    label: str  # intent-tiny label for training, UNKNOWN, or DROP
    split: str  # train | val | test


class Mirror:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.heads: dict[str, str] = {}
        self.broken: list[str] = []
        self.skipped = 0

    def git(self, repo: str, *args: str) -> str:
        gd = self.root / (repo.replace("/", "+")) / "repo"
        if not gd.is_dir():
            raise SystemExit(f"{gd}: no bare clone of {repo} (git clone --bare https://github.com/{repo} {gd})")
        out = subprocess.run(["git", "--git-dir", str(gd), *args], capture_output=True, check=True).stdout
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:  # SNIPS's PlayMusic "full" training file has a few broken bytes
            self.broken.append(args[-1])
            return out.decode("utf-8", errors="replace")

    def head(self, repo: str) -> str:
        if repo not in self.heads:
            self.heads[repo] = self.git(repo, "rev-parse", "HEAD").strip()
        return self.heads[repo]

    def show(self, repo: str, path: str) -> str:
        return self.git(repo, "show", f"{self.head(repo)}:{path}")

    def ls(self, repo: str, path: str) -> list[str]:
        return self.git(repo, "ls-tree", "-r", "--name-only", self.head(repo), path).split()


def scope_of(source: str, intent: str) -> tuple[str, str]:
    if (source, intent) in POSITIVE:
        return "positive", POSITIVE[(source, intent)]
    if intent in ADJACENT[source]:
        return "adjacent", ADJACENT[source][intent]
    return "oos", UNKNOWN


# -- the four public sets ---------------------------------------------------------------------------------

def clinc(m: Mirror) -> list[Row]:
    d = json.loads(m.show("clinc/oos-eval", "data/data_full.json"))
    rows = []
    for part, split in (("train", "train"), ("val", "val"), ("test", "test"),
                        ("oos_train", "train"), ("oos_val", "val"), ("oos_test", "test")):
        for text, intent in d[part]:
            scope, label = scope_of("clinc150", intent)
            rows.append(Row(text, "clinc150", intent, scope, label, split))
    return rows


def snips(m: Mirror) -> list[Row]:
    base = "2017-06-custom-intent-engines"
    rows = []
    for intent in ("AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
                   "SearchCreativeWork", "SearchScreeningEvent"):
        scope, label = scope_of("snips", intent)
        for fname, split in ((f"train_{intent}_full.json", None), (f"validate_{intent}.json", "test")):
            raw = m.git("sonos/nlu-benchmark", "show", f"{m.head('sonos/nlu-benchmark')}:{base}/{intent}/{fname}")
            doc = json.loads(raw)
            for ex in doc[intent]:
                text = "".join(chunk["text"] for chunk in ex["data"]).strip()
                if "\ufffd" in text:  # a sentence with bytes that were not UTF-8: left out
                    m.skipped += 1
                    continue
                s = split or ("val" if bucket(text) < 10 else "train")
                rows.append(Row(text, "snips", intent, scope, label, s))
    return rows


def banking(m: Mirror) -> list[Row]:
    rows = []
    for fname, split in (("train.csv", None), ("test.csv", "test")):
        for r in csv.DictReader(io.StringIO(m.show("PolyAI-LDN/task-specific-datasets", f"banking_data/{fname}"))):
            text = r["text"].strip()
            s = split or ("val" if bucket(text) < 10 else "train")
            rows.append(Row(text, "banking77", r["category"], "oos", UNKNOWN, s))
    return rows


def hwu(m: Mirror) -> list[Row]:
    """HWU64's ten cross-validation test folds together hold each of its 11,036 sentences once."""
    rows = []
    for path in sorted(m.ls("xliuhw/NLU-Evaluation-Data", HWU_FOLDS)):
        if "/testset/annotated/" not in path or not path.endswith(".json"):
            continue
        for r in json.loads(m.show("xliuhw/NLU-Evaluation-Data", path))["test_data_annotation"]:
            text = r["text"].strip()
            b = bucket(text)
            split = "train" if b < 70 else "val" if b < 80 else "test"
            scope, label = scope_of("hwu64", r["intent"])
            rows.append(Row(text, "hwu64", r["intent"], scope, label, split))
    return rows


# -- Home Assistant's test sentences -----------------------------------------------------------------------

def ha_tests(m: Mirror) -> dict[str, Any]:
    repo = "OHF-Voice/intents"
    files = []
    for path in sorted(m.ls(repo, "tests/en")):
        parts = path.split("/")
        if len(parts) != 4 or not path.endswith(".yaml"):
            continue  # tests/en/_fixtures.yaml belongs to the old flat format; en has none left
        doc = yaml.safe_load(m.show(repo, path))
        intent, combo = parts[2], parts[3][:-5]
        entities = [{"name": e["name"], "domain": e["domain"], "area": e.get("area"),
                     "device_class": (e.get("attributes") or {}).get("device_class")}
                    for e in doc.get("entities") or []]
        areas = [{"name": a["name"], **({"floor": a["floor"]} if a.get("floor") else {}),
                  **({"context_area": True} if a.get("context_area") else {})} for a in doc.get("areas") or []]
        floors = [f["name"] for f in doc.get("floors") or []]
        tests = [{"sentences": t["sentences"], "slots": t.get("slots") or {}} for t in doc["tests"]]
        files.append({"file": path, "intent": intent, "slot_combination": combo, "entities": entities,
                      "areas": areas, "floors": floors, "tests": tests})
    return {"source": f"https://github.com/{repo}", "commit": m.head(repo), "licence": "CC-BY-4.0",
            "files": files}


# -- splits, caps and de-duplication ------------------------------------------------------------------------

def hand_written() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    out = []
    for path in HAND_WRITTEN:
        with path.open(newline="", encoding="utf-8") as f:
            out.append([(r["utterance"], r["label"]) for r in csv.DictReader(f)])
    return out[0], out[1]


def cap(rows: list[Row], limits: dict[str, int], positive_limits: dict[str, int] | None = None) -> list[Row]:
    """At most ``limits[source]`` rows per (source, intent) (``positive_limits[source]`` for the
    positives' intents), chosen by a stable hash of the text."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.source, r.intent)].append(r)
    out = []
    for (source, _), group in sorted(groups.items()):
        group.sort(key=lambda r: (zlib.crc32(r.text.encode("utf-8")), r.text))
        limit = limits[source]
        if positive_limits and group[0].scope == "positive":
            limit = positive_limits.get(source, limit)
        out += group[:limit]
    return out


def derive(m: Mirror) -> tuple[dict[str, Any], list[Row], list[Row], dict[str, Any]]:
    rows = clinc(m) + snips(m) + banking(m) + hwu(m)
    stats: dict[str, Any] = {"read": dict(Counter(r.source for r in rows))}
    data_csv, test_csv = hand_written()

    # Training: capped, minus DROP labels, minus any sentence whose normalised text has two labels.
    train = cap([r for r in rows if r.split == "train" and r.label != DROP], TRAIN_CAP, POSITIVE_TRAIN_CAP)
    labels_of: dict[str, set[str]] = defaultdict(set)
    for r in train:
        labels_of[normalise(r.text)].add(r.label)
    for text, label in data_csv:
        labels_of[normalise(text)].add(label)
    conflicted = {k for k, v in labels_of.items() if len(v) > 1}
    held_out = {normalise(t) for t, _ in test_csv}  # the hand-written test set is never trained on
    seen: set[str] = {normalise(t) for t, _ in data_csv}
    kept = []
    dup_train = in_test_csv = 0
    for r in train:
        k = normalise(r.text)
        if k in conflicted:
            continue
        if k in held_out:
            in_test_csv += 1
            continue
        if k in seen:
            dup_train += 1
            continue
        seen.add(k)
        kept.append(r)
    stats["train"] = {"rows": len(kept), "dropped_conflicting_labels": sum(normalise(r.text) in conflicted for r in train),
                      "dropped_duplicates": dup_train, "dropped_as_in_test_csv": in_test_csv}
    train_keys = set(seen)

    # Validation: capped (DROP rows stay out of calibration too), nothing seen in training.
    val_all = cap([r for r in rows if r.split == "val" and r.label != DROP], VAL_CAP)
    val, removed = [], Counter()
    for r in val_all:
        k = normalise(r.text)
        if k in held_out:
            removed["in models/intent/test.csv"] += 1
            continue
        if k in train_keys or k in seen - train_keys:
            removed["in training" if k in train_keys else "repeated"] += 1
            continue
        seen.add(k)
        val.append(r)
    stats["val"] = {"rows": len(val), "removed": dict(removed)}
    val_keys = seen - train_keys

    # Test: every test row, nothing seen in training or validation (nor hand-written test.csv's
    # training twin), each normalised text once.
    exact_train = {r.text.strip() for r in kept} | {t.strip() for t, _ in data_csv}
    exact_val = {r.text.strip() for r in val}
    test, removed = [], Counter()
    test_keys: set[str] = set()
    for r in (r for r in rows if r.split == "test"):
        k = normalise(r.text)
        if k in train_keys:
            removed["exact duplicate of training text" if r.text.strip() in exact_train
                    else "normalised duplicate of training text"] += 1
            continue
        if k in val_keys:
            removed["exact duplicate of validation text" if r.text.strip() in exact_val
                    else "normalised duplicate of validation text"] += 1
            continue
        if k in test_keys:
            removed["repeated within the test sets"] += 1
            continue
        test_keys.add(k)
        test.append(r)
    stats["test"] = {"rows": len(test), "removed": dict(removed),
                     "by_scope": dict(Counter(r.scope for r in test)),
                     "oos_by_source": dict(Counter(r.source for r in test if r.scope == "oos")),
                     "positive_by_label": dict(Counter(r.label for r in test if r.scope == "positive"))}
    stats["hand_written_test_in_training"] = sum(normalise(t) in train_keys for t, _ in test_csv)
    return ha_tests(m), kept + val, test, stats


def csv_gz(rows: list[Row], with_split: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "source", "intent", "scope", "label", *(["split"] if with_split else [])])
    for r in rows:
        w.writerow([r.text, r.source, r.intent, r.scope, r.label, *([r.split] if with_split else [])])
    return gzip.compress(buf.getvalue().encode("utf-8"), mtime=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path, default=Path("/work/.mirror"),
                    help="directory of bare clones, <owner>+<name>/repo (default /work/.mirror)")
    ap.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    args = ap.parse_args()
    m = Mirror(args.mirror)
    for repo, commit in SOURCES.items():
        if m.head(repo) != commit:
            print(f"note: {repo} is at {m.head(repo)}, these files were derived from {commit}", file=sys.stderr)
    ha, trainval, test, stats = derive(m)
    outputs = {
        HA_OUT: gzip.compress(json.dumps(ha, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), mtime=0),
        TEST_OUT: csv_gz(test, with_split=False),
        TRAIN_OUT: csv_gz(trainval, with_split=True),
    }
    stats["ha_tests"] = {"files": len(ha["files"]),
                         "sentences": sum(len(t["sentences"]) for f in ha["files"] for t in f["tests"])}
    stats["commits"] = {repo: m.head(repo) for repo in SOURCES}
    stats["files_with_bad_utf8"] = [p.split(":", 1)[-1] for p in m.broken]
    stats["sentences_left_out_for_bad_utf8"] = m.skipped
    print(json.dumps(stats, indent=1))
    differ = 0
    for path, blob in outputs.items():
        if args.check:
            same = path.is_file() and path.read_bytes() == blob
            differ += not same
            print(f"{path.relative_to(ROOT)}: {'identical' if same else 'DIFFERS'}")
        else:
            path.write_bytes(blob)
            print(f"wrote {path.relative_to(ROOT)} ({len(blob):,} bytes)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
