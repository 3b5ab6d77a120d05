"""Train the tiny EEG state classifier and write hub/agent/models/eeg-state-tiny.{tflite,json}.

The training data is synthetic: :func:`generate` draws band-power feature vectors from the
generative model written down in README.md (beside this file). Only the training and conversion
need TensorFlow, which the hub never does: run the build from a throwaway venv (see README.md).
The generator itself needs numpy alone, and TensorFlow is imported inside the functions that use
it, so tests can import this file to draw fresh held-out data without TensorFlow.

    python models/eeg/build.py [--check]   # --check: build in memory, compare with the shipped files
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NAME = "eeg-state-tiny"
SEED = 20240917
TEST_SEED = SEED + 1  # the held-out set: same generator, a seed training never saw
N_TRAIN_PER_LABEL = 5000
N_TEST_PER_LABEL = 1000
HIDDEN = 16
EPOCHS = 60

LABELS = ["relaxed", "focused", "drowsy", "artifact"]
FEATURE_NAMES = ["rel_delta", "rel_theta", "rel_alpha", "rel_beta", "rel_gamma", "log10_total_power",
                 "artifact_fraction"]
BANDS: dict[str, tuple[float, float]] = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0),
                                         "beta": (13.0, 30.0), "gamma": (30.0, 45.0)}

#: What the sidecar says about the input (the executor reads kind, names, size and dtype).
FEATURES: dict[str, Any] = {
    "kind": "vector",
    "names": FEATURE_NAMES,
    "size": len(FEATURE_NAMES),
    "dtype": "float32",
    "input": "text: a JSON array of 7 numbers in this order; or data: 7 little-endian float32 (28 bytes)",
    "definitions": {
        "rel_delta": "delta (1-4 Hz) power / total 1-45 Hz power, channels averaged",
        "rel_theta": "theta (4-8 Hz) power / total, channels averaged",
        "rel_alpha": "alpha (8-13 Hz) power / total, channels averaged",
        "rel_beta": "beta (13-30 Hz) power / total, channels averaged",
        "rel_gamma": "gamma (30-45 Hz) power / total, channels averaged",
        "log10_total_power": "log10 of the sum of the five mean absolute band powers in uV^2 "
                             "(typically 0.5-3.5 on the scalp); 0 when no channel is clean",
        "artifact_fraction": "share of channels flagged railed, flat, high-amplitude or invalid (0..1)",
    },
    "producer": "plugins/eeg/processing.py (Update.state_features): mean over unflagged channels, "
                "relative = band mean / total; all five rel_* are 0 when every channel is flagged",
}

# ---------------------------------------------------------------------------------------------
# The generative model (README.md, "Generative model"). numpy only.
# ---------------------------------------------------------------------------------------------

_DF = 0.05
_FREQS = np.arange(1.0, 45.0, _DF) + _DF / 2  # bin centres covering 1-45 Hz
_BAND_MASKS = np.stack([(_FREQS >= lo) & (_FREQS < hi) for lo, hi in BANDS.values()])  # (5, bins)
_BANDWIDTH = np.array([hi - lo for lo, hi in BANDS.values()])
#: |H(f)|^2 of the pipeline's 4th-order Butterworth 1-45 Hz band-pass (plugins/eeg/processing.py):
#: every spectrum below, brain or artifact, is seen through it.
_FILTER = 1.0 / ((1.0 + (1.0 / _FREQS) ** 8) * (1.0 + (_FREQS / 45.0) ** 8))
MAX_CHANNELS = 32


def _band_integrals(psd: np.ndarray) -> np.ndarray:
    """(..., bins) power spectral density in uV^2/Hz → (..., 5) band powers in uV^2."""
    return psd @ _BAND_MASKS.T.astype(psd.dtype) * _DF


def _unit_shape(psd: np.ndarray) -> np.ndarray:
    bands = _band_integrals(psd * _FILTER)
    return bands / bands.sum()


#: Artifact spectra, normalised to unit total 1-45 Hz power (README.md, "Artifacts").
_SHAPES = {
    "white": _unit_shape(np.ones_like(_FREQS)),                       # flat / disconnected channel
    "railed": _unit_shape(_FREQS ** -2.0),                            # steps and saturation
    "movement": _unit_shape(_FREQS ** -2.5),                          # cable sway, head movement
    "blink": _unit_shape(_FREQS ** -3.0),                             # eye blinks and movements
    "emg": _unit_shape(1.0 / (1.0 + np.exp(-(_FREQS - 25.0) / 4.0))),  # muscle: broadband, rising above 20 Hz
}
#: Peak-to-peak / RMS of a 1 s window, by component: roughly Gaussian EEG ~5.5; a blink is one
#: pulse, so its RMS over the window is small for its peak; muscle bursts are spiky.
_PTP_FACTOR = {"brain": 5.5, "movement": 4.0, "blink": 4.5, "emg": 7.0}
#: The flags of plugins/eeg/processing.py (ArtifactLimits): flat below 0.5 uV SD, high amplitude
#: above 200 uV peak-to-peak; railed is a saturated amplifier, always flagged.
FLAT_VAR_UV2 = 0.25
HIGH_PTP_UV = 200.0

#: The brain's spectrum as in the "specparam"/FOOOF description: aperiodic 1/f^exponent plus
#: Gaussian peaks on the log10 scale. Values per state; "neutral" is awake, eyes open, at rest.
#: offset: log10 uV^2/Hz at 1 Hz; exponent: 1/f slope; *_h: peak height (log10 above the
#: aperiodic line); alpha_f: alpha peak frequency (Hz).
_PARAMS = ("offset", "exponent", "alpha_h", "alpha_f", "theta_h", "beta_h", "delta_h")
_NEUTRAL = dict(offset=1.15, exponent=1.20, alpha_h=0.40, alpha_f=10.0, theta_h=0.15, beta_h=0.25, delta_h=0.0)
_STATE = {
    "relaxed": dict(offset=1.25, exponent=1.20, alpha_h=1.00, alpha_f=10.0, theta_h=0.15, beta_h=0.15, delta_h=0.0),
    "focused": dict(offset=1.05, exponent=1.05, alpha_h=0.10, alpha_f=10.5, theta_h=0.25, beta_h=0.55, delta_h=0.0),
    "drowsy": dict(offset=1.35, exponent=1.50, alpha_h=0.10, alpha_f=8.8, theta_h=0.60, beta_h=0.05, delta_h=0.35),
}
#: Between-person and moment-to-moment spread, added after mixing (same units as above).
_SPREAD = dict(offset=0.30, exponent=0.20, alpha_h=0.22, alpha_f=0.8, theta_h=0.15, beta_h=0.15, delta_h=0.12)


def _brain_psd(rng: np.random.Generator, state: np.ndarray) -> np.ndarray:
    """One spectrum per sample; ``state`` indexes LABELS[:3]. Returns (n, bins) uV^2/Hz."""
    n = len(state)
    # How far into the state the person is: transitions (settling in, just getting drowsy)
    # sit near the neutral spectrum and are where the states overlap.
    t = rng.beta(3.0, 1.5, n)
    p = {}
    for k in _PARAMS:
        target = np.array([_STATE[s][k] for s in LABELS[:3]])[state]
        p[k] = _NEUTRAL[k] + t * (target - _NEUTRAL[k]) + rng.normal(0.0, _SPREAD[k], n)
    for k in ("alpha_h", "theta_h", "beta_h", "delta_h"):
        p[k] = np.maximum(p[k], 0.0)
    p["exponent"] = np.clip(p["exponent"], 0.6, 3.0)
    p["alpha_f"] = np.clip(p["alpha_f"], 7.5, 13.0)
    theta_f = np.clip(rng.normal(6.0, 0.7, n), 4.5, 7.8)
    beta_f = np.clip(rng.normal(20.0, 3.0, n), 14.0, 28.0)
    f = _FREQS[None, :]

    def peak(h: np.ndarray, c: np.ndarray, w: float | np.ndarray) -> np.ndarray:
        return h[:, None] * np.exp(-((f - c[:, None]) ** 2) / (2 * np.asarray(w).reshape(-1, 1) ** 2))

    log_psd = (p["offset"][:, None] - p["exponent"][:, None] * np.log10(f)
               + peak(p["alpha_h"], p["alpha_f"], rng.uniform(0.9, 1.6, n))
               + peak(p["theta_h"], theta_f, 1.2)
               + peak(p["beta_h"], beta_f, rng.uniform(3.0, 5.0, n))
               + peak(p["delta_h"], np.full(n, 2.0), 0.8))
    return 10.0 ** log_psd * _FILTER


def _add(art: np.ndarray, var: np.ndarray, where: np.ndarray, power: np.ndarray, shape: str) -> None:
    """Add an artifact of total ``power`` (uV^2) with spectrum ``shape`` to channels ``where``."""
    add = np.where(where, power, 0.0)
    art += add[..., None] * _SHAPES[shape]
    var[shape] = var.get(shape, 0.0) + add


def _pick(rng: np.random.Generator, valid: np.ndarray, frac: np.ndarray, active: np.ndarray) -> np.ndarray:
    """For each sample where ``active``: about ``frac`` of its channels (at least one), at random."""
    n_ch = valid.sum(1)
    k = np.where(active, np.maximum(1, np.round(frac * n_ch)), 0)
    order = np.where(valid, rng.random(valid.shape), 2.0).argsort(1).argsort(1)  # rank of each channel
    return order < k[:, None]


def generate(n_per_label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_label`` vectors of each label, shuffled: (x float32 (n, 7), y int (n,)), y indexing
    LABELS. Deterministic for a given numpy version, ``n_per_label`` and ``seed``."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(LABELS)), n_per_label)
    n, C = len(y), MAX_CHANNELS
    is_art = y == LABELS.index("artifact")

    # Recording set-up: headband to cap, window length, and the producer's averaging convention.
    n_ch = rng.choice([4, 8, 16, 32], n, p=[0.35, 0.35, 0.15, 0.15])
    valid = np.arange(C)[None, :] < n_ch[:, None]
    window_s = rng.choice([1.0, 2.0, 4.0], n, p=[0.5, 0.3, 0.2])
    exclude_flagged = rng.random(n) < 0.75  # else the producer averages every channel, flagged or not

    # The brain: an artifact epoch still has a person in some state under it.
    state = np.where(is_art, rng.integers(0, 3, n), y)
    brain = _band_integrals(_brain_psd(rng, state))  # (n, 5) uV^2
    # Single-window periodogram estimates: about chi-squared with 2 x (bins in band) degrees of
    # freedom, 1/window_s Hz bins, less independent under a Hann taper (x0.75); shared by all
    # channels (neighbouring scalp channels are strongly correlated: the pessimistic case).
    dof_half = np.maximum(1.0, 0.75 * _BANDWIDTH[None, :] * window_s[:, None])
    brain *= rng.gamma(dof_half, 1.0 / dof_half)
    gain = 10.0 ** rng.normal(0.0, 0.12, (n, C))  # electrode contact and placement
    chan = gain[..., None] * brain[:, None, :] * 10.0 ** rng.normal(0.0, 0.05, (n, C, 5))

    art = np.zeros((n, C, 5))
    var: dict[str, np.ndarray] = {}
    railed = np.zeros((n, C), dtype=bool)
    flat = np.zeros((n, C), dtype=bool)

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    def amp(lo: float, hi: float) -> np.ndarray:  # log-uniform total power per channel, uV^2
        return 10.0 ** rng.uniform(lo, hi, (n, C))

    # Artifact epochs: one main event, sometimes a second (moving the head also tenses muscles).
    kinds = ["disconnect", "railed", "movement", "emg", "blink"]
    kind = rng.choice(len(kinds), n, p=[0.10, 0.15, 0.25, 0.30, 0.20])
    second = is_art & (rng.random(n) < 0.25)
    kind2 = rng.choice(len(kinds), n, p=[0.0, 0.2, 0.3, 0.3, 0.2])
    ev = {k: is_art & ((kind == i) | (second & (kind2 == i))) for i, k in enumerate(kinds)}

    off = _pick(rng, valid, u(0.5, 1.0), ev["disconnect"])  # headset off: flat, some railed
    rail_off = off & (rng.random((n, C)) < 0.3)
    flat |= off & ~rail_off
    railed |= rail_off | _pick(rng, valid, u(0.05, 0.5), ev["railed"])
    _add(art, var, _pick(rng, valid, u(0.3, 1.0), ev["movement"]), amp(2.6, 4.5), "movement")
    _add(art, var, _pick(rng, valid, u(0.2, 0.9), ev["emg"]), amp(1.3, 3.3), "emg")
    _add(art, var, _pick(rng, valid, u(0.1, 0.4), ev["blink"]), amp(2.4, 3.8), "blink")

    # Clean epochs are not perfectly clean: now and then one flat channel or a small blink...
    minor = ~is_art & (rng.random(n) < 0.2)
    minor_kind = rng.integers(0, 3, n)
    one = _pick(rng, valid, np.zeros(n), minor)
    flat |= one & (minor_kind == 0)[:, None]
    _add(art, var, one & (minor_kind == 1)[:, None], amp(1.0, 2.6), "blink")
    _add(art, var, one & (minor_kind == 2)[:, None], amp(0.0, 1.8), "emg")
    # ...and eyes-open concentration brings eye movements that stay under the flag threshold.
    eyes = (y == LABELS.index("focused")) & (rng.random(n) < 0.3)
    _add(art, var, _pick(rng, valid, u(0.1, 0.5), eyes), amp(0.8, 2.2), "blink")

    chan = chan + art
    flat_power = 10.0 ** rng.uniform(-3.0, -0.3, (n, C))
    chan = np.where(flat[..., None], flat_power[..., None] * _SHAPES["white"], chan)
    rail_power = 10.0 ** rng.uniform(4.0, 7.0, (n, C))
    chan = np.where(railed[..., None], rail_power[..., None] * _SHAPES["railed"], chan)

    # The pipeline's flags (plugins/eeg/processing.py): railed; flat (SD < 0.5 uV); high
    # amplitude (peak-to-peak > 200 uV in the window, estimated from each component's RMS).
    ptp = _PTP_FACTOR["brain"] * np.sqrt((gain[..., None] * brain[:, None, :]).sum(-1))
    for k in ("movement", "blink", "emg"):
        ptp = ptp + _PTP_FACTOR[k] * np.sqrt(var.get(k, 0.0))
    ptp *= 10.0 ** rng.normal(0.0, 0.06, (n, C))
    total_ch = chan.sum(-1)
    flagged = valid & (railed | (total_ch < FLAT_VAR_UV2) | (~flat & (ptp > HIGH_PTP_UV)))

    use = valid & ~(flagged & exclude_flagged[:, None])
    n_use = use.sum(1)
    bands = (chan * use[..., None]).sum(1) / np.maximum(n_use, 1)[:, None]
    total = bands.sum(1)
    ok = (n_use > 0) & (total > 0)
    rel = np.where(ok[:, None], bands / np.where(ok, total, 1.0)[:, None], 0.0)
    log_total = np.where(ok, np.log10(np.where(ok, total, 1.0)), 0.0)
    af = flagged.sum(1) / n_ch
    x = np.column_stack([rel, log_total, af]).astype(np.float32)

    perm = rng.permutation(n)
    return x[perm], y[perm]


# ---------------------------------------------------------------------------------------------
# Training and conversion (TensorFlow, imported here only).
# ---------------------------------------------------------------------------------------------

def train(x: np.ndarray, y: np.ndarray) -> Any:
    """7 → Dense(16, ReLU) → Dense(4, softmax), trained on standardised inputs; the
    standardisation is then folded into the first layer, so the shipped model takes raw features."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    mean, std = x.mean(0), x.std(0) + 1e-6

    def mlp() -> Any:
        return tf.keras.Sequential([
            tf.keras.Input(shape=(x.shape[1],), name="features"),
            tf.keras.layers.Dense(HIDDEN, activation="relu", kernel_regularizer=tf.keras.regularizers.l2(1e-4)),
            tf.keras.layers.Dense(len(LABELS), activation="softmax"),
        ])

    model = mlp()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit((x - mean) / std, y, epochs=EPOCHS, batch_size=64, shuffle=True, verbose=0)
    (w1, b1), (w2, b2) = model.layers[0].get_weights(), model.layers[1].get_weights()
    folded = mlp()
    folded.layers[0].set_weights([w1 / std[:, None], b1 - (mean / std) @ w1])
    folded.layers[1].set_weights([w2, b2])
    return folded


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> list[list[int]]:
    """Rows: true label, columns: predicted label, both in LABELS order."""
    m = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    np.add.at(m, (y_true, y_pred), 1)
    return m.tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; compare with the shipped model")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    from models.litert_build import ship, tflite_predict, to_tflite
    from hub.agent.executors.tflite import VectorFeatures, bundled_models_dir

    VectorFeatures.from_settings(FEATURES)  # the executor must accept what the sidecar will say

    x_train, y_train = generate(N_TRAIN_PER_LABEL, SEED)
    x_test, y_test = generate(N_TEST_PER_LABEL, TEST_SEED)
    model = train(x_train, y_train)
    blob = to_tflite(model, len(FEATURE_NAMES))

    keras_test = model.predict(x_test, verbose=0).argmax(1)
    tfl_train = tflite_predict(blob, x_train).argmax(1)
    tfl_test = tflite_predict(blob, x_test).argmax(1)
    train_acc = float((tfl_train == y_train).mean())
    test_acc = float((tfl_test == y_test).mean())
    cm = confusion(y_test, tfl_test)
    print(f"{len(y_train)} training vectors, {len(y_test)} held out, labels {LABELS}")
    print(f"tflite: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}; "
          f"keras test accuracy {float((keras_test == y_test).mean()):.4f}; {len(blob)} bytes")
    print("confusion (rows true, columns predicted):")
    for lab, row in zip(LABELS, cm):
        print(f"  {lab:>9} " + " ".join(f"{v:5d}" for v in row))

    meta = {
        "name": NAME,
        "tasks": ["eeg"],
        "labels": LABELS,
        "features": FEATURES,
        "trained_on": f"synthetic band-power vectors from models/eeg/build.py:generate "
                      f"({len(y_train)}, {N_TRAIN_PER_LABEL} per label, seed {SEED}); no human recordings",
        "test_accuracy": round(test_acc, 4),
        "test_set": f"synthetic, same generator, seed {TEST_SEED} ({len(y_test)}, {N_TEST_PER_LABEL} per label)",
        "confusion_matrix": {"rows": "true", "columns": "predicted", "order": LABELS, "counts": cm},
        "size_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "built_with": f"tensorflow-cpu {tf.__version__}, numpy {np.__version__}",
        "seed": SEED,
        "script": "models/eeg/build.py",
    }
    return ship(bundled_models_dir(), NAME, blob, meta, args.check)


if __name__ == "__main__":
    sys.exit(main())
