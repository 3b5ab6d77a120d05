"""The per-prompt quality predictor (hub/router/predict.py): features, learning, state, AUC."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from hub.router.predict import PredictorConfig, PromptPredictor, auc, featurize

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["What is the capital of France?", "Prove the theorem: every integral, 42 times!",
         "Quelle est la capitale de l'Été? ÉTÉ été 3", "Pick one:\nA) red\nB) blue\nC) green", ""]


def _word_buckets(text: str, bits: int = 20) -> set[int]:
    """The documented scheme, computed independently: crc32 of b"u\\x1f" + word (+ b" " + next)."""
    words = [w.encode() for w in re.findall(r"\w+", text.lower())]
    toks = words + [a + b" " + b for a, b in zip(words, words[1:])]
    return {zlib.crc32(b"u\x1f" + t) & ((1 << bits) - 1) for t in toks}


# --- features ---------------------------------------------------------------------------------

def test_featurize_is_stable_across_processes_with_other_hash_seeds():
    code = ("import json, sys; from hub.router.predict import featurize; "
            "print(json.dumps([featurize(t) for t in json.loads(sys.argv[1])]))")
    mine = json.loads(json.dumps([featurize(t) for t in TEXTS]))
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], cwd=ROOT, timeout=60,
                             capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == mine


@pytest.mark.parametrize("text", TEXTS[:4])
def test_featurize_unigrams_bigrams_normalised(text):
    feats = featurize(text)
    buckets = [b for b, _ in feats]
    assert len(buckets) == len(set(buckets))  # duplicates summed into one entry
    assert math.isclose(sum(v * v for _, v in feats), 1.0, rel_tol=1e-12)
    words = _word_buckets(text)
    assert words <= set(buckets)  # both the ASCII fast path and the Unicode path
    assert 1 <= len(set(buckets) - words) <= 3  # length, digits, options


def test_featurize_sums_duplicates_and_sizes_buckets():
    feats = dict(featurize("go go go", buckets_log2=8))
    uni, bi = (zlib.crc32(b"u\x1f" + t) & 255 for t in (b"go", b"go go"))
    assert math.isclose(feats[uni], 1.5 * feats[bi])  # 3 "go" vs 2 "go go"
    assert all(0 <= b < 256 for b in feats)
    assert set(dict(featurize("Go, GO... go!", buckets_log2=8))) == set(feats)


def test_featurize_empty_and_shape_features():
    assert [v for _, v in featurize("")] == [1.0]  # the length feature alone
    plain, opts = featurize("Pick one: red or blue"), featurize("Pick one:\na) red\nb) blue")
    assert len(opts) - len(_word_buckets("Pick one:\na) red\nb) blue")) == 2  # length + options
    assert len(plain) - len(_word_buckets("Pick one: red or blue")) == 1
    assert len(featurize("Pick 1 of 2")) - len(_word_buckets("Pick 1 of 2")) == 2  # + digits


# --- learning ---------------------------------------------------------------------------------

HARD = ["Compute the integral of {} from 0 to {}.", "Find the derivative of {} at x = {}.",
        "Prove the theorem that {} is bounded for n > {}."]
EASY = ["What is the capital of {}? Answer in {} words.", "What colour is a {}? Give {} examples.",
        "Name the capital city of {}, please, in {} sentences."]
TRAIN_FILL = ["sin x", "x squared", "e to the x", "France", "banana", "Peru", "tomato", "log x",
              "Japan", "the sea", "cos x", "Kenya"]
TEST_FILL = ["tan x", "x cubed", "Chile", "lemon", "sqrt x", "Norway", "grass", "arctan x"]


def _rows(fill: list[str], n: int, seed: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        template, label = (rng.choice(HARD), 0.0) if i % 2 else (rng.choice(EASY), 1.0)
        rows.append((template.format(rng.choice(fill), rng.randint(1, 9)), label))
    return rows


def test_learning_separates_hard_from_easy_questions():
    p = PromptPredictor()
    p.fit("qa", "small", [(p.features(t), y) for t, y in _rows(TRAIN_FILL, 300, seed=1)])
    assert p.samples("qa", "small") == 300 and p.models("qa") == ["small"]
    held_out = _rows(TEST_FILL, 60, seed=2)
    scores = [p.estimate("qa", p.features(t))["small"] for t, _ in held_out]
    for score, (text, label) in zip(scores, held_out):
        assert (score > 0.5) == (label == 1.0), (text, score)
    assert auc(scores, [y == 1.0 for _, y in held_out]) > 0.9


def test_fit_is_deterministic_per_seed():
    rows = [(featurize(t), y) for t, y in _rows(TRAIN_FILL, 60, seed=3)]
    states = []
    for seed in (0, 0, 1):
        p = PromptPredictor()
        p.fit("qa", "m", rows, seed=seed)
        states.append(p.to_state())
    assert states[0] == states[1] != states[2]


def test_cold_start_omits_models_below_min_samples():
    p = PromptPredictor(PredictorConfig(min_samples=3))
    f = featurize("What is the capital of Peru?")
    for _ in range(2):
        p.learn("qa", "a", f, 1.0)
    for _ in range(3):
        p.learn("qa", "b", f, 0.0)
    assert set(p.estimate("qa", f)) == {"b"}
    assert set(p.estimate("qa", f, ["a", "b", "never-seen"])) == {"b"}
    assert p.estimate("other-task", f) == {}
    p.learn("qa", "a", f, 1.0)
    est = p.estimate("qa", f)
    assert set(est) == {"a", "b"} and est["a"] > 0.5 > est["b"]
    assert p.estimate("qa", f, ["a"]).keys() == {"a"}
    p.cfg = PredictorConfig(min_samples=3, enabled=False)
    assert p.estimate("qa", f) == {}


def test_soft_labels_converge_to_the_label():
    p = PromptPredictor(PredictorConfig(min_samples=1))
    rows = [(featurize(t), 0.7) for t, _ in _rows(TRAIN_FILL, 100, seed=4)]
    p.fit("summarise", "m", rows, epochs=10)
    for feats, _ in rows[:10]:
        assert abs(p.estimate("summarise", feats)["m"] - 0.7) < 0.05


def test_weight_moves_the_estimate_further():
    f = featurize("Find the derivative of x squared.")
    moved = []
    for weight in (1.0, 5.0):
        p = PromptPredictor(PredictorConfig(min_samples=1))
        p.learn("qa", "m", f, 0.0, weight=weight)
        moved.append(0.5 - p.estimate("qa", f)["m"])
    assert 0 < moved[0] < moved[1]


@pytest.mark.parametrize("good, weight", [(1.5, 1.0), (-0.1, 1.0), (math.nan, 1.0), (math.inf, 1.0),
                                          ("1", 1.0), (1.0, 0.0), (1.0, -1.0), (1.0, math.nan),
                                          (1.0, math.inf), (1.0, 1e7)])
def test_learn_rejects_bad_labels_and_weights(good, weight):
    p = PromptPredictor()
    with pytest.raises(ValueError):
        p.learn("qa", "m", featurize("hi"), good, weight=weight)
    assert p.samples("qa", "m") == 0 and p.models("qa") == []
    with pytest.raises(ValueError):
        p.fit("qa", "m", [(featurize("hi"), 1.0), (featurize("ho"), 2.0)])
    assert p.to_state()["tasks"] == {}


def test_max_features_per_model_bounds_memory():
    p = PromptPredictor(PredictorConfig(max_features_per_model=1000, min_samples=1))
    rng = random.Random(5)
    for _ in range(100):  # ~40 features each: far more than 1000 in all
        p.learn("qa", "m", featurize(" ".join(f"w{rng.randrange(10**6)}" for _ in range(20))), 1.0)
    assert len(p.to_state()["tasks"]["qa"]["m"]["w"]) == 1000
    assert p.estimate("qa", featurize("w1 w2"))["m"] > 0.5  # the bias still learns


# --- state ------------------------------------------------------------------------------------

def _trained() -> PromptPredictor:
    p = PromptPredictor(PredictorConfig(min_samples=5))
    for model, seed in (("small", 6), ("large", 7)):
        p.fit("qa", model, [(featurize(t), y) for t, y in _rows(TRAIN_FILL, 40, seed)])
    p.learn("chat", "small", featurize("hello there"), 0.3, weight=2.0)
    return p


def test_state_round_trip_through_json():
    p = _trained()
    state = json.loads(json.dumps(p.to_state()))
    assert state["version"] == 1
    q = PromptPredictor.from_state(state, PredictorConfig(min_samples=5))
    for text in TEST_FILL + TEXTS:
        f = featurize(text)
        assert q.estimate("qa", f) == p.estimate("qa", f) and len(q.estimate("qa", f)) == 2
    assert q.samples("chat", "small") == 1 and q.models("qa") == ["large", "small"]
    assert q.to_state() == state
    assert PromptPredictor.from_state(state).cfg.buckets_log2 == 20


@pytest.mark.parametrize("corrupt, field", [
    (lambda s: s.update(version=2), "version"),
    (lambda s: s.pop("version"), "version"),
    (lambda s: s.update(buckets_log2=7), "buckets_log2"),
    (lambda s: s.update(tasks=[]), "tasks"),
    (lambda s: s["tasks"]["qa"]["small"].update(n="5"), "['small'].n"),
    (lambda s: s["tasks"]["qa"]["small"].update(n=-1), "['small'].n"),
    (lambda s: s["tasks"]["qa"]["small"].update(bias=math.inf), "bias"),
    (lambda s: s["tasks"]["qa"]["small"].update(bias_g=-1.0), "bias_g"),
    (lambda s: s["tasks"]["qa"]["small"].pop("w"), "['small'].w"),
    (lambda s: s["tasks"]["qa"]["small"]["w"][0].__setitem__(1, math.nan), "w[0] weight"),
    (lambda s: s["tasks"]["qa"]["small"]["w"][1].__setitem__(2, "x"), "w[1] accumulator"),
    (lambda s: s["tasks"]["qa"]["small"]["w"][2].__setitem__(0, 1 << 20), "w[2] bucket"),
    (lambda s: s["tasks"]["qa"]["small"]["w"][2].__setitem__(0, 1.5), "w[2] bucket"),
    (lambda s: s["tasks"]["qa"]["small"]["w"].append([1, 2.0]), "w[%d]"),
    (lambda s: s["tasks"]["qa"].update(large=None), "['large']"),
])
def test_corrupted_state_raises_naming_the_field(corrupt, field):
    state = json.loads(json.dumps(_trained().to_state()))
    corrupt(state)
    state = json.loads(json.dumps(state))  # NaN and inf survive json as Python allows them
    if "%d" in field:
        field = field % (len(state["tasks"]["qa"]["small"]["w"]) - 1)
    with pytest.raises(ValueError, match=re.escape(field)):
        PromptPredictor.from_state(state)


def test_from_state_rejects_another_feature_space():
    state = _trained().to_state()
    with pytest.raises(ValueError, match="buckets_log2"):
        PromptPredictor.from_state(state, PredictorConfig(buckets_log2=18))


def test_from_state_rejects_non_dict():
    with pytest.raises(ValueError, match="version"):
        PromptPredictor.from_state([])  # type: ignore[arg-type]


# --- auc --------------------------------------------------------------------------------------

def test_auc_known_cases():
    assert auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auc([0.5] * 4, [True, False, True, False]) == 0.5
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # 3 of 4 pairs
    # pairs (pos, neg): (.5, .2) 1, (.5, .5) tie 0.5, (.9, .2) 1, (.9, .5) 1 -> 3.5 / 4
    assert auc([0.2, 0.5, 0.5, 0.9], [False, True, False, True]) == 0.875


def test_auc_needs_both_classes_and_matching_lengths():
    with pytest.raises(ValueError):
        auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError):
        auc([], [])
    with pytest.raises(ValueError):
        auc([0.1, 0.2], [True])
