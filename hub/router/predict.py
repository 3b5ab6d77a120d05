"""Per-prompt quality prediction: P(model M answers this request text well), learned online.

One logistic regression per (task, model) over hashed word unigrams, bigrams and a few shape
features of the request text, trained by AdaGrad from outcomes (a user's thumbs, a judge's
preference). Pure: no I/O, no clock, standard library only, so the router can call ``estimate``
on every request. Until a (task, model) has ``min_samples`` outcomes it has no estimate and the
caller falls back to its usual choice (cold start).
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from operator import and_, mul
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..capability import KNOWN_TASKS

Features = tuple[tuple[int, float], ...]  # (bucket, value); the bias is not a feature

STATE_VERSION = 1
MAX_WEIGHT = 1e6  # an outcome counts as at most this many: larger ones could overflow to NaN
_WORD = re.compile(r"\w+")
# ASCII fast path (most prompts): one bytes.translate lower-cases and turns every non-word byte
# into a space, so split() yields exactly the lower-cased runs of \w, 5x faster than the regex.
_ASCII_WORDS = bytes(c if chr(c).isalnum() or c == 95 else 32 for c in range(128)).lower()
_ASCII_WORDS += b" " * 128
# Two or more lines starting like "a)", "B.", "3)": a multiple-choice question.
_OPTION = re.compile(r"^[ \t]*(?:[A-Za-z]|\d{1,2})[.)][ \t]", re.MULTILINE)
# A stable hash (Python's hash() is salted per process and would scramble a saved state):
# crc32(data, seed) continues a crc, so crc32(token, crc32(prefix)) == crc32(prefix + token).
# A bigram w1 w2 is the crc of b"u\x1f" + w1 + b" " + w2, chained from w1's unigram crc; no
# unigram contains a space, so the two kinds cannot meet but by chance.
_UNI, _SHAPE = zlib.crc32(b"u\x1f"), zlib.crc32(b"s\x1f")


class PredictorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True  # False: estimate() returns {} (callers fall back); learning goes on
    #: Outcomes of a (task, model) before its estimate is used; before that the caller falls back.
    min_samples: int = Field(default=50, ge=1)
    #: Size of the hashed feature space (2**buckets_log2); part of a saved state.
    buckets_log2: int = Field(default=20, ge=8, le=24)
    learning_rate: float = Field(default=0.1, gt=0)  # AdaGrad base rate
    l2: float = Field(default=1e-6, ge=0)
    #: Bounds memory (~140 bytes a weight: 50,000 are ~7 MB per task and model): once a (task,
    #: model) has this many weights, features it has not seen yet are ignored by learn() (those
    #: already present keep learning). On MMLU-Pro, 2,240 questions give ~126,000 features;
    #: keeping the first 50,000 cost 0.002-0.005 of AUC (benchmarks/routing_quality.py).
    max_features_per_model: int = Field(default=50_000, ge=1000)
    #: The tasks whose answers depend on the prompt's difficulty (the live hub learns these).
    tasks: list[str] = Field(default_factory=lambda: ["qa", "summarize", "draft", "code", "reason"])
    #: A person's thumbs up or down counts as this many outcomes.
    feedback_weight: float = Field(default=3.0, gt=0, le=100)
    #: Answers remembered for feedback (their features, not their text), and for how long.
    remember_requests: int = Field(default=2_000, ge=1, le=100_000)
    feedback_within_s: float = Field(default=7 * 86400, gt=0)
    #: The learned state is written to the hub's SQLite at most this often (and at stop).
    save_every_s: float = Field(default=60.0, gt=0)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in KNOWN_TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r} (known: {', '.join(KNOWN_TASKS)})")
        return tasks


def featurize(text: str, buckets_log2: int = 20) -> Features:
    """Hashed lower-cased word unigrams and bigrams plus shape features (log2 of the length,
    log2 of the ASCII digit count, options on separate lines); duplicates summed, L2-normalised.
    Written with C-level map()s throughout: it runs on every request."""
    mask, data, crc = (1 << buckets_log2) - 1, text.encode(), zlib.crc32
    if text.isascii():
        words = data.translate(_ASCII_WORDS).split()
    else:
        words = [w.encode() for w in _WORD.findall(text.lower())]
    uni = list(map(crc, words, repeat(_UNI)))
    bi = map(crc, words[1:], map(crc, repeat(b" "), uni))
    counts = Counter(map(and_, chain(uni, bi), repeat(mask)))
    shape = [b"len%d" % min(len(text).bit_length(), 16)]  # 0 for "": never featureless
    if digits := len(data) - len(data.translate(None, b"0123456789")):
        shape.append(b"dig%d" % min(digits.bit_length(), 8))
    if "\n" in text and len(_OPTION.findall(text)) >= 2:
        shape.append(b"opts")
    for s in shape:
        counts[mask & crc(s, _SHAPE)] += 1
    inv = 1.0 / math.hypot(*counts.values())
    return tuple(zip(counts.keys(), map(mul, counts.values(), repeat(inv))))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # z < 0: exp cannot overflow
    return e / (1.0 + e)


class _Model:
    """One (task, model): bias and sparse weights with their AdaGrad accumulators."""
    __slots__ = ("n", "bias", "bias_g", "w", "g")

    def __init__(self) -> None:
        self.n, self.bias, self.bias_g = 0, 0.0, 0.0
        self.w: dict[int, float] = {}
        self.g: dict[int, float] = {}


class PromptPredictor:
    def __init__(self, cfg: PredictorConfig | None = None) -> None:
        self.cfg = cfg or PredictorConfig()
        self._tasks: dict[str, dict[str, _Model]] = {}

    def features(self, text: str) -> Features:
        return featurize(text, self.cfg.buckets_log2)

    def estimate(self, task: str, features: Features,
                 models: Iterable[str] | None = None) -> dict[str, float]:
        """P(good) per model with at least min_samples outcomes for this task (others absent)."""
        trained = self._tasks.get(task)
        if not trained or not self.cfg.enabled:
            return {}
        buckets, values = tuple(zip(*features)) or ((), ())
        out = {}
        for name in trained if models is None else models:
            m = trained.get(name)
            if m is not None and m.n >= self.cfg.min_samples:
                # C-level map/sum over the unzipped pairs (the unzip is shared by all models):
                # ~25% faster per model than a comprehension over (bucket, value) pairs.
                z = m.bias + sum(map(mul, map(m.w.get, buckets, repeat(0.0)), values))
                out[name] = _sigmoid(z)
        return out

    def learn(self, task: str, model: str, features: Features, good: float,
              weight: float = 1.0) -> None:
        """One AdaGrad step of logistic loss towards label ``good`` in [0, 1] (soft labels allowed).
        ``weight`` counts the outcome as that many identical ones (sqrt(weight) times the step of
        a fresh model): scaling only the gradient would cancel out in AdaGrad's normalisation."""
        _check_label(good)
        if not (isinstance(weight, (int, float)) and 0.0 < weight <= MAX_WEIGHT):
            raise ValueError(f"weight must be > 0 and <= {MAX_WEIGHT:g}, got {weight!r}")
        m = self._tasks.setdefault(task, {}).setdefault(model, _Model())
        self._step(m, features, float(good), float(weight))
        m.n += 1

    def _step(self, m: _Model, features: Features, y: float, h: float) -> None:
        cfg, w, g = self.cfg, m.w, m.g
        err = _sigmoid(m.bias + sum([w.get(b, 0.0) * x for b, x in features])) - y
        if err == 0.0:  # already exact: nothing to learn
            return
        # "or 1.0": a square that underflowed to 0 would divide by zero (its step is ~0 anyway).
        m.bias_g += h * err * err
        m.bias -= cfg.learning_rate * h * err / (math.sqrt(m.bias_g) or 1.0)  # no l2 on the bias
        room = cfg.max_features_per_model - len(w)
        for b, x in features:
            wb = w.get(b)
            if wb is None:
                if room <= 0:
                    continue
                room -= 1
                wb = 0.0
            grad = err * x + cfg.l2 * wb
            if grad:
                gb = g[b] = g.get(b, 0.0) + h * grad * grad
                w[b] = wb - cfg.learning_rate * h * grad / (math.sqrt(gb) or 1.0)

    def fit(self, task: str, model: str, rows: Iterable[tuple[Features, float]],
            epochs: int = 3, seed: int = 0) -> None:
        """Offline training: shuffled epochs of learn(). samples() grows by the number of rows,
        not rows x epochs: it counts outcomes seen, which is what min_samples is about."""
        rows = list(rows)
        for _, good in rows:
            _check_label(good)
        m = self._tasks.setdefault(task, {}).setdefault(model, _Model())
        rng, order = random.Random(seed), list(range(len(rows)))
        for _ in range(epochs):
            rng.shuffle(order)
            for i in order:
                self._step(m, rows[i][0], float(rows[i][1]), 1.0)
        m.n += len(rows)

    def samples(self, task: str, model: str) -> int:
        m = self._tasks.get(task, {}).get(model)
        return m.n if m else 0

    def models(self, task: str) -> list[str]:
        return sorted(self._tasks.get(task, {}))

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable; weights as [bucket, weight, accumulator] (JSON keys are strings)."""
        return {"version": STATE_VERSION, "buckets_log2": self.cfg.buckets_log2, "tasks": {
            task: {name: {"n": m.n, "bias": m.bias, "bias_g": m.bias_g,
                          "w": [[b, wb, m.g.get(b, 0.0)] for b, wb in m.w.items()]}
                   for name, m in models.items()}
            for task, models in self._tasks.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: PredictorConfig | None = None
                   ) -> PromptPredictor:
        """Rebuild from to_state(); ValueError naming the offending field on anything malformed.
        Without cfg, the defaults with the state's buckets_log2."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state.version: expected {STATE_VERSION}, got "
                             f"{state.get('version') if isinstance(state, dict) else state!r}")
        bits = _int(state.get("buckets_log2"), "state.buckets_log2", 8)
        cfg = cfg or PredictorConfig(buckets_log2=bits)  # its ValidationError is a ValueError
        if bits != cfg.buckets_log2:
            raise ValueError(f"state.buckets_log2: {bits} does not match the config's "
                             f"{cfg.buckets_log2} (features would land in other buckets)")
        self, tasks = cls(cfg), state.get("tasks")
        if not isinstance(tasks, dict):
            raise ValueError("state.tasks: expected an object")
        for task, models in tasks.items():
            if not isinstance(task, str) or not isinstance(models, dict):
                raise ValueError(f"state.tasks[{task!r}]: expected an object keyed by model")
            for name, s in models.items():
                at = f"state.tasks[{task!r}][{name!r}]"
                if not isinstance(name, str) or not isinstance(s, dict):
                    raise ValueError(f"{at}: expected an object")
                m = self._tasks.setdefault(task, {}).setdefault(name, _Model())
                m.n = _int(s.get("n"), f"{at}.n", 0)
                m.bias = _float(s.get("bias"), f"{at}.bias")
                m.bias_g = _float(s.get("bias_g"), f"{at}.bias_g", 0.0)
                if not isinstance(s.get("w"), list):
                    raise ValueError(f"{at}.w: expected a list")
                for i, row in enumerate(s["w"]):
                    if not isinstance(row, list | tuple) or len(row) != 3:
                        raise ValueError(f"{at}.w[{i}]: expected [bucket, weight, accumulator]")
                    b = _int(row[0], f"{at}.w[{i}] bucket", 0)
                    if b >> bits:
                        raise ValueError(f"{at}.w[{i}] bucket: {b} is outside 2**{bits}")
                    m.w[b] = _float(row[1], f"{at}.w[{i}] weight")
                    m.g[b] = _float(row[2], f"{at}.w[{i}] accumulator", 0.0)
        return self


def _check_label(good: Any) -> None:
    if not (isinstance(good, (int, float)) and 0.0 <= good <= 1.0):  # NaN fails the comparison
        raise ValueError(f"good must be a finite number in [0, 1], got {good!r}")


def _int(v: Any, at: str, lo: int) -> int:
    if type(v) is not int or v < lo:
        raise ValueError(f"{at}: expected an integer >= {lo}, got {v!r}")
    return v


def _float(v: Any, at: str, lo: float = -math.inf) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or v < lo:
        raise ValueError(f"{at}: expected a finite number >= {lo}, got {v!r}")
    return float(v)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC as the Mann–Whitney U statistic, ties given their average rank."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if not pos or not neg:
        raise ValueError("auc needs both classes among the labels")
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum, i = 0.0, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum += avg * sum(1 for k in order[i:j + 1] if labels[k])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
