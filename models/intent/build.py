"""Train the tiny intent classifier and write hub/agent/models/intent-tiny.{tflite,json}.

Needs TensorFlow, which the hub itself never does: run it from a throwaway venv (see README.md).
The featurizer is imported from the executor that runs the model, so the two cannot drift.

    python models/intent/build.py [--check]   # --check: build in memory, compare with the shipped files
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hub.agent.executors.tflite import FEATURES, Featurizer, bundled_models_dir  # noqa: E402
from models.litert_build import ship, tflite_predict, to_tflite  # noqa: E402

NAME = "intent-tiny"
SEED = 20240611
HIDDEN = 32
EPOCHS = 150
HERE = Path(__file__).resolve().parent


def read(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["utterance"] for r in rows], [r["label"] for r in rows]


def train(x: np.ndarray, y: np.ndarray, n_labels: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(x.shape[1],), name="features"),
        tf.keras.layers.Dense(HIDDEN, activation="relu", kernel_regularizer=tf.keras.regularizers.l2(1e-4)),
        tf.keras.layers.Dropout(0.2),  # a few hundred utterances: without it the net memorises them
        tf.keras.layers.Dense(n_labels, activation="softmax"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=EPOCHS, batch_size=32, shuffle=True, verbose=0)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; compare with the shipped model")
    args = ap.parse_args()

    feat = Featurizer.from_settings(FEATURES)
    train_text, train_lab = read(HERE / "data.csv")
    test_text, test_lab = read(HERE / "test.csv")
    labels = sorted(set(train_lab))
    assert set(test_lab) <= set(labels), set(test_lab) - set(labels)
    idx = {lab: i for i, lab in enumerate(labels)}
    x_train = np.stack([feat(t) for t in train_text])
    y_train = np.array([idx[lab] for lab in train_lab])
    x_test = np.stack([feat(t) for t in test_text])
    y_test = np.array([idx[lab] for lab in test_lab])

    model = train(x_train, y_train, len(labels))
    blob = to_tflite(model, feat.buckets)

    keras_test = model.predict(x_test, verbose=0).argmax(1)
    tfl_train = tflite_predict(blob, x_train).argmax(1)
    tfl_test = tflite_predict(blob, x_test).argmax(1)
    train_acc = float((tfl_train == y_train).mean())
    test_acc = float((tfl_test == y_test).mean())
    print(f"{len(train_text)} training utterances, {len(test_text)} held out, {len(labels)} labels")
    print(f"tflite: train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}; "
          f"keras test accuracy {float((keras_test == y_test).mean()):.3f}; {len(blob)} bytes")
    for t, want, got in zip(test_text, y_test, tfl_test):
        if want != got:
            print(f"  miss: {t!r}: {labels[want]} -> {labels[got]}")

    meta = {
        "name": NAME,
        "tasks": ["intent"],
        "labels": labels,
        "features": FEATURES,
        "trained_on": f"models/intent/data.csv ({len(train_text)} utterances, hand-written)",
        "test_accuracy": round(test_acc, 4),
        "test_set": f"models/intent/test.csv ({len(test_text)} utterances, held out)",
        "size_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "built_with": f"tensorflow-cpu {tf.__version__}",
        "seed": SEED,
        "script": "models/intent/build.py",
    }
    return ship(bundled_models_dir(), NAME, blob, meta, args.check)


if __name__ == "__main__":
    sys.exit(main())
