"""Train the tiny intent classifier and write hub/agent/models/intent-tiny.{tflite,json}.

Needs TensorFlow, which the hub itself never does: run it from a throwaway venv (see README.md).
The featurizer is imported from the executor that runs the model, so the two cannot drift.

    python models/intent/build.py [--check]   # --check: build in memory, compare with the shipped files

Training text: data.csv (hand-written, all 9 labels) and the ``train`` rows of public.csv.gz
(four public intent sets, derived by benchmarks/data/voice/derive.py: their sentences of our
labels as positives, everything else as ``unknown``). The ``val`` rows of public.csv.gz are never
trained on: they set the softmax temperature (calibration) and the confidence threshold below
which the hub rejects an answer (plugins/voice/intents.py CLASSIFIER_THRESHOLD).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hub.agent.executors.tflite import FEATURES, Featurizer, bundled_models_dir  # noqa: E402
from models.litert_build import ship, tflite_predict, to_tflite  # noqa: E402

NAME = "intent-tiny"
#: Training seeds tried; the build keeps the one whose calibrated model acts on the most in-scope
#: validation sentences at its threshold (then the fewest false actions). Runs differ by a few
#: points on 217 in-scope validation sentences: picking on validation, never on the test sets.
SEEDS = (20240611, 7, 1)
HIDDEN = 32
EPOCHS = 45
BATCH = 64
LEARNING_RATE = 0.005
#: Class weights (n / (k · n_class)) ** CLASS_WEIGHT_POWER: the rejection class has ~24,000
#: sentences, lights_on ~50; full balancing (power 1) made the model fire on out-of-scope text.
CLASS_WEIGHT_POWER = 0.75
#: 4,096 hashed buckets instead of the executor's default 512: at the same validation false-action
#: rate, the in-scope sentences acted on rose from 74-76 % to 87-91 % (README.md, "Why 4,096").
FEATURE_SETTINGS: dict[str, Any] = {**FEATURES, "buckets": 4096}
#: The threshold keeps the one-sided 95 % upper bound of the validation false-action rate
#: within this (README.md, "Calibration").
MAX_FALSE_ACTION_RATE = 0.01
MIN_THRESHOLD = 0.5  # below it another label, or "unknown", is more likely than the one answered
REJECT = "unknown"
HERE = Path(__file__).resolve().parent


def read(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["utterance"] for r in rows], [r["label"] for r in rows]


def read_public(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train(x: np.ndarray, y: np.ndarray, weights: np.ndarray, n_labels: int, seed: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(x.shape[1],), name="features"),
        tf.keras.layers.Dense(HIDDEN, activation="relu", kernel_regularizer=tf.keras.regularizers.l2(1e-4)),
        tf.keras.layers.Dropout(0.2),
        tf.keras.layers.Dense(n_labels, name="logits"),
        tf.keras.layers.Softmax(),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    model.fit(x, y, sample_weight=weights, epochs=EPOCHS, batch_size=BATCH, shuffle=True, verbose=0)
    return model


def logits_of(model: tf.keras.Model, x: np.ndarray) -> np.ndarray:
    head = tf.keras.Model(model.inputs, model.get_layer("logits").output)
    return head.predict(x, verbose=0, batch_size=1024).astype(np.float64)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the validation negative log-likelihood of softmax(z / T)."""
    best_nll, best_t = math.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.25), np.log(8.0), 241)):
        p = softmax(z / t)
        nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
        if nll < best_nll:
            best_nll, best_t = nll, float(t)
    return round(best_t, 4)


def wilson_upper(k: int, n: int, z: float = 1.645) -> float:
    """One-sided 95 % upper bound of a rate seen k times in n."""
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


def choose_threshold(probs: np.ndarray, reject: int, oos: np.ndarray) -> float:
    """The lowest threshold (from MIN_THRESHOLD, in steps of 0.001) at which the upper bound of
    the validation false-action rate is within MAX_FALSE_ACTION_RATE."""
    pred, conf = probs.argmax(1), probs.max(1)
    n = int(oos.sum())
    for t in np.round(np.arange(MIN_THRESHOLD, 1.0, 0.001), 3):
        fired = int(((pred != reject) & (conf >= t) & oos).sum())
        if wilson_upper(fired, n) <= MAX_FALSE_ACTION_RATE:
            return float(t)
    return 1.0


def reliability(probs: np.ndarray, y: np.ndarray, edges: tuple[float, ...]) -> tuple[list[dict[str, Any]], float]:
    """Confidence bins: how many answers, their mean confidence, how many were right; and the
    expected calibration error (the gap, weighted by the bins' sizes)."""
    pred, conf = probs.argmax(1), probs.max(1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf >= lo) & ((conf < hi) if hi < 1.0 else (conf <= hi))
        n = int(sel.sum())
        if not n:
            continue
        acc, mean = float((pred[sel] == y[sel]).mean()), float(conf[sel].mean())
        bins.append({"bin": f"{lo:.2f}-{hi:.2f}", "n": n, "confidence": round(mean, 3), "accuracy": round(acc, 3)})
        ece += n / len(y) * abs(acc - mean)
    return bins, round(ece, 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; compare with the shipped model")
    args = ap.parse_args()

    feat = Featurizer.from_settings(FEATURE_SETTINGS)
    hand_text, hand_lab = read(HERE / "data.csv")
    test_text, test_lab = read(HERE / "test.csv")
    public = read_public(HERE / "public.csv.gz")
    pub_train = [r for r in public if r["split"] == "train"]
    val = [r for r in public if r["split"] == "val"]
    train_text = hand_text + [r["text"] for r in pub_train]
    train_lab = hand_lab + [r["label"] for r in pub_train]
    labels = sorted(set(train_lab))
    assert set(test_lab) <= set(labels) and {r["label"] for r in val} <= set(labels)
    idx = {lab: i for i, lab in enumerate(labels)}
    reject = idx[REJECT]

    x_train = np.stack([feat(t) for t in train_text])
    y_train = np.array([idx[lab] for lab in train_lab])
    counts = np.bincount(y_train, minlength=len(labels))
    weights = ((len(y_train) / (len(labels) * counts)) ** CLASS_WEIGHT_POWER)[y_train].astype(np.float32)
    x_val = np.stack([feat(r["text"]) for r in val])
    y_val = np.array([idx[r["label"]] for r in val])
    oos_val = np.array([r["scope"] == "oos" for r in val])
    pos_val = np.array([r["scope"] == "positive" for r in val])
    x_test = np.stack([feat(t) for t in test_text])
    y_test = np.array([idx[lab] for lab in test_lab])

    candidates = []
    for seed in SEEDS:
        model = train(x_train, y_train, weights, len(labels), seed)
        # Calibration: temperature scaling on the validation split, folded into the last layer
        # (softmax(z / T) = softmax(W/T · h + b/T)), so the shipped model outputs calibrated probabilities.
        z_val = logits_of(model, x_val)
        temperature = fit_temperature(z_val, y_val)
        layer = model.get_layer("logits")
        w, b = layer.get_weights()
        layer.set_weights([w / temperature, b / temperature])
        blob = to_tflite(model, feat.buckets)
        p_val = tflite_predict(blob, x_val)
        threshold = choose_threshold(p_val, reject, oos_val)
        fired = (p_val.argmax(1) != reject) & (p_val.max(1) >= threshold)
        score = (float(fired[pos_val].mean()), -float((fired & oos_val).sum()))
        print(f"seed {seed}: temperature {temperature}, threshold {threshold}, validation in scope acted on "
              f"{score[0]:.4f}, false actions {-score[1]:.0f}")
        candidates.append((score, seed, model, z_val, temperature, blob, p_val, threshold))
    score, seed, model, z_val, temperature, blob, p_val, threshold = max(candidates, key=lambda c: (c[0], -SEEDS.index(c[1])))
    tried = [{"seed": c[1], "in_scope_acted_on": round(c[0][0], 4), "false_actions": int(-c[0][1])} for c in candidates]
    pred_val, conf_val = p_val.argmax(1), p_val.max(1)
    fired = (pred_val != reject) & (conf_val >= threshold)
    edges = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
    bins_before, ece_before = reliability(softmax(z_val), y_val, edges)
    bins_after, ece_after = reliability(p_val, y_val, edges)
    # The same, only where the model answers an action label: how often that label is right.
    acting = pred_val != reject
    bins_actions, ece_actions = reliability(p_val[acting], y_val[acting], edges)
    tfl_train = tflite_predict(blob, x_train).argmax(1)
    p_test = tflite_predict(blob, x_test)
    train_acc = float((tfl_train == y_train).mean())
    test_acc = float((p_test.argmax(1) == y_test).mean())
    val_stats = {
        "sentences": len(val), "out_of_scope": int(oos_val.sum()), "in_scope": int(pos_val.sum()),
        "false_actions": int((fired & oos_val).sum()),
        "false_action_rate": round(float((fired & oos_val).sum() / oos_val.sum()), 4),
        "false_action_rate_upper95": round(wilson_upper(int((fired & oos_val).sum()), int(oos_val.sum())), 4),
        "in_scope_acted_on": round(float(fired[pos_val].mean()), 4),
        "in_scope_right": round(float((fired & (pred_val == y_val))[pos_val].mean()), 4),
        "false_action_rate_argmax": round(float(((pred_val != reject) & oos_val).sum() / oos_val.sum()), 4),
    }
    print(f"{len(train_text)} training utterances ({len(hand_text)} hand-written), {len(val)} validation, "
          f"{len(test_text)} held out, {len(labels)} labels")
    print(f"tflite: train accuracy {train_acc:.3f}, test.csv accuracy {test_acc:.3f}; {len(blob)} bytes")
    print(f"temperature {temperature}, threshold {threshold}; validation: {val_stats}")
    print(f"expected calibration error on validation: {ece_before} before, {ece_after} after")
    for row in bins_after:
        print(f"  {row}")
    print(f"where it answers an action label (expected calibration error {ece_actions}):")
    for row in bins_actions:
        print(f"  {row}")
    for t, want, got in zip(test_text, y_test, p_test.argmax(1)):
        if want != got:
            print(f"  miss: {t!r}: {labels[want]} -> {labels[got]}")

    n_public = {s: sum(r["split"] == s for r in public) for s in ("train", "val")}
    meta = {
        "name": NAME,
        "tasks": ["intent"],
        "labels": labels,
        "features": FEATURE_SETTINGS,
        "trained_on": (f"models/intent/data.csv ({len(hand_text)} utterances, hand-written) and the train rows of "
                       f"models/intent/public.csv.gz ({n_public['train']} sentences of CLINC150, SNIPS, Banking77, "
                       f"HWU64; benchmarks/data/voice/README.md)"),
        "test_accuracy": round(test_acc, 4),
        "test_set": f"models/intent/test.csv ({len(test_text)} utterances, held out)",
        "reject_label": REJECT,
        "threshold": threshold,
        "calibration": {
            "method": "temperature scaling on the val rows of models/intent/public.csv.gz, folded into the last layer",
            "temperature": temperature,
            "threshold_rule": (f"lowest threshold >= {MIN_THRESHOLD} whose one-sided 95 % upper bound of the validation "
                               f"false-action rate is <= {MAX_FALSE_ACTION_RATE}"),
            "validation": val_stats,
            "expected_calibration_error": {"before": ece_before, "after": ece_after},
            "reliability": bins_after,
            "reliability_action_labels": bins_actions,
            "expected_calibration_error_action_labels": ece_actions,
        },
        "size_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "built_with": f"tensorflow-cpu {tf.__version__}",
        "seed": seed,
        "seeds_tried": tried,
        "script": "models/intent/build.py",
    }
    return ship(bundled_models_dir(), NAME, blob, meta, args.check)


if __name__ == "__main__":
    sys.exit(main())
