"""Writes examples/trace.jsonl: a week of a home's AI tasks for `sovereign simulate`.

Deterministic (seed 7). Per day: 300 intents (voice commands, from the phone and the watch),
100 EEG state classifications (a biofeedback session), 200 embeddings (notes indexed in the
background, deferrable), 40 transcriptions, 40 questions, 20 summaries (half deferrable overnight
digests), 10 drafts, 15 code questions, 5 multi-step reasoning tasks. Times follow a waking day
(07:00-23:00) except the deferrable batch work. Transcriptions and EEG windows refer to their
input (a 5 s, 16 kHz, 16-bit clip: 160 kB; a 4 s window of 8 channels at 250 Hz as float32: 32 kB).

    python examples/make_trace.py > examples/trace.jsonl
"""

from __future__ import annotations

import json
import random

rng = random.Random(7)
DAY = 86400
INTENTS = ["turn off the lights", "schedule a meeting with Ana tomorrow at ten", "play some music",
           "set a timer for ten minutes", "what's the weather", "call mum", "lock the front door"]
# Questions and notes differ from day to day: only the voice commands repeat word for word
# (the cache answers those; it should not answer a week of questions from three).
QUESTIONS = ["when does the bakery open", "how long to boil an egg", "who wrote Middlemarch", "what is the capital of Peru",
             "how many grams in a cup of flour", "when is the next bin collection", "what time is sunset today",
             "how far is it to the station", "what's a good substitute for eggs", "how do I descale the kettle"]
TOPICS = ["trip", "garden", "budget", "car", "school", "energy bill", "holiday", "roof", "bike", "birthday"]
REFS = {"transcribe": ("audio", 160_000), "eeg": ("eeg", 32_000)}
MIX = [  # task, per day, budget ms, quality floor, requester, deadline (s) or None, text maker
    ("intent", 300, 300, 0.0, "phone", None, lambda: rng.choice(INTENTS)),
    ("eeg", 100, 100, 0.0, "watch", None, lambda: None),
    ("embed", 200, 2000, 0.0, None, 12 * 3600, lambda: "note: " + " ".join(rng.choice(["energy", "garden", "tax", "school", "car"]) for _ in range(30))),
    ("transcribe", 40, 5000, 0.0, "phone", None, lambda: None),
    ("qa", 40, 8000, 0.0, "phone", None, lambda: f"{rng.choice(QUESTIONS)} ({rng.choice(TOPICS)})"),
    ("summarize", 20, 15000, 0.0, None, None,
     lambda: f"Meeting notes about the {rng.choice(TOPICS)}. " + " ".join(
         f"We discussed the {rng.choice(TOPICS)} and agreed on item {rng.randint(1, 999)}." for _ in range(40))),
    ("draft", 10, 20000, 0.0, "laptop", None,
     lambda: f"write a short reply to the school about the {rng.choice(TOPICS)} on day {rng.randint(1, 28)}"),
    ("code", 15, 30000, 0.8, "laptop", None,
     lambda: f"```python\ndef total_{rng.randint(1, 9999)}(xs):\n    return sum(xs)\n```\nwhy is this slow for big lists?"),
    ("reason", 5, 60000, 0.75, "laptop", None,
     lambda: f"compare the two mortgage offers step by step: {rng.randint(20, 40) / 10}% over 25 years vs "
             f"{rng.randint(20, 40) / 10}% with a {rng.randint(5, 30) * 100} fee; explain why"),
]

tasks = []
for day in range(7):
    for task, per_day, budget, floor, requester, deadline, text in MIX:
        for i in range(per_day):
            if task == "summarize" and i % 2:
                t, dl = day * DAY + 22 * 3600 + rng.uniform(0, 1800), 10 * 3600  # overnight digest
            elif deadline:
                t, dl = day * DAY + rng.uniform(7 * 3600, 23 * 3600), deadline
            else:
                t, dl = day * DAY + rng.uniform(7 * 3600, 23 * 3600), None
            item = {"t": round(t, 1), "task": task, "budget_ms": budget}
            body = text()
            if body:
                item["text"] = body
            elif task in REFS:
                prefix, size = REFS[task]
                item["ref"], item["input_size"] = f"{prefix}/{day}-{i}", size
            if floor:
                item["quality_floor"] = floor
            if requester:
                item["requester"] = requester if task != "intent" else rng.choice(["phone", "watch"])
            if dl:
                item["deadline_s"] = dl
            tasks.append(item)
for item in sorted(tasks, key=lambda x: x["t"]):
    print(json.dumps(item))
