"""The shipped EEG state model (eeg-state-tiny), run through the tflite executor with LiteRT."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hub.agent.executors.base import ExecError, InferCall
from hub.agent.executors.tflite import TfliteExecutor, VectorFeatures, bundled_models_dir
from hub.capability import ModelSpec

ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelSpec(name="eeg-state-tiny", runtime="tflite", tasks=["eeg"])
NAMES = ["rel_delta", "rel_theta", "rel_alpha", "rel_beta", "rel_gamma", "log10_total_power", "artifact_fraction"]

#: Hand-made vectors, one per state: clear cases that any sensible model must get right.
RELAXED = [0.15, 0.10, 0.55, 0.15, 0.05, 2.0, 0.0]  # eyes closed: alpha dominates
FOCUSED = [0.18, 0.12, 0.10, 0.50, 0.10, 1.5, 0.0]  # beta up, alpha and theta down
DROWSY = [0.45, 0.35, 0.07, 0.10, 0.03, 2.1, 0.0]  # theta and delta up, alpha gone
ARTIFACT = [0.30, 0.10, 0.10, 0.30, 0.20, 5.5, 1.0]  # every channel flagged, enormous power


def load_build() -> ModuleType:
    """models/eeg/build.py, for its generator; importing it must not need TensorFlow."""
    spec = importlib.util.spec_from_file_location("eeg_build", ROOT / "models/eeg/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(text: str | None = None, data: bytes | None = None, task: str = "eeg") -> InferCall:
    return InferCall(id="t", task=task, model=MODEL, text=text, data=data)


@pytest.fixture(scope="module")
def executor() -> TfliteExecutor:
    return TfliteExecutor(bundled_models_dir())


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((bundled_models_dir() / "eeg-state-tiny.json").read_text())


def test_sidecar(meta: dict) -> None:
    assert meta["tasks"] == ["eeg"]
    assert meta["labels"] == ["relaxed", "focused", "drowsy", "artifact"]
    assert meta["features"]["kind"] == "vector" and meta["features"]["size"] == 7
    assert meta["features"]["names"] == NAMES
    assert VectorFeatures.from_settings(meta["features"]).names == tuple(NAMES)
    blob = (bundled_models_dir() / "eeg-state-tiny.tflite").read_bytes()
    assert meta["size_bytes"] == len(blob)
    import hashlib
    assert meta["sha256"] == hashlib.sha256(blob).hexdigest()
    # The EEG pipeline produces the same features in the same order.
    processing = ROOT / "plugins/eeg/processing.py"
    if processing.is_file():
        assert all(f'"{n}"' in processing.read_text() for n in NAMES)


@pytest.mark.parametrize("vector,label", [(RELAXED, "relaxed"), (FOCUSED, "focused"), (DROWSY, "drowsy"),
                                          (ARTIFACT, "artifact")])
async def test_clear_states(executor: TfliteExecutor, vector: list[float], label: str) -> None:
    res = await executor.run(call(json.dumps(vector)))
    assert res.output == label
    assert res.confidence is not None and res.confidence > 0.5
    probs = {k: v for k, v in res.stats.items() if k.startswith("p_")}
    assert set(probs) == {"p_relaxed", "p_focused", "p_drowsy", "p_artifact"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert probs[f"p_{label}"] == pytest.approx(res.confidence)
    assert res.stats["compute_us"] > 0


async def test_no_clean_channel_is_artifact(executor: TfliteExecutor) -> None:
    # What plugins/eeg/processing.py reports when every channel is flagged.
    assert (await executor.run(call(json.dumps([0, 0, 0, 0, 0, 0, 1])))).output == "artifact"


@pytest.mark.parametrize("vector", [RELAXED, FOCUSED, DROWSY, ARTIFACT])
async def test_float32_bytes_same_as_json(executor: TfliteExecutor, vector: list[float]) -> None:
    by_text = await executor.run(call(json.dumps(vector)))
    by_data = await executor.run(call(data=struct.pack("<7f", *vector)))
    assert by_data.output == by_text.output
    assert by_data.confidence == pytest.approx(by_text.confidence, abs=1e-6)
    assert by_data.stats["p_relaxed"] == pytest.approx(by_text.stats["p_relaxed"], abs=1e-6)


@pytest.mark.parametrize("kwargs,needle", [
    ({"text": json.dumps(RELAXED[:6])}, "6 values"),
    ({"text": json.dumps(RELAXED + [0.0])}, "8 values"),
    ({"text": "[0.1, 0.1, NaN, 0.1, 0.1, 2.0, 0.0]"}, "rel_alpha"),
    ({"text": "[0.1, 0.1, 0.5, 0.1, 0.1, Infinity, 0.0]"}, "log10_total_power"),
    ({"text": "[0.1, 0.1, 0.5, 0.1, 0.1, 1e39, 0.0]"}, "log10_total_power"),  # beyond float32
    ({"text": "[0.1, 0.1, 0.5, 0.1, 0.1, 2.0, " + "9" * 400 + "]"}, "artifact_fraction"),
    ({"text": "[0.1, 0.1, 0.5, 0.1, 0.1, 2.0"}, "not JSON"),
    ({"text": "relaxed please"}, "not JSON"),
    ({"text": '{"rel_alpha": 0.5}'}, "JSON dict"),
    ({"text": '[0.1, 0.1, "0.5", 0.1, 0.1, 2.0, 0.0]'}, "rel_alpha"),
    ({"text": "[0.1, 0.1, true, 0.1, 0.1, 2.0, 0.0]"}, "rel_alpha"),
    ({"text": "[0.1, 0.1, null, 0.1, 0.1, 2.0, 0.0]"}, "rel_alpha"),
    ({"data": struct.pack("<6f", *RELAXED[:6])}, "24 bytes"),
    ({"data": struct.pack("<7d", *RELAXED)}, "56 bytes"),
    ({"data": struct.pack("<7f", *(RELAXED[:2] + [math.nan] + RELAXED[3:]))}, "rel_alpha"),
    ({"data": b""}, "0 bytes"),
    ({}, "neither"),
    ({"text": "   "}, "neither"),
])
async def test_bad_input(executor: TfliteExecutor, kwargs: dict, needle: str) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(call(**kwargs))
    assert err.value.code == "bad_request"
    assert needle in err.value.message


async def test_ref_refused(executor: TfliteExecutor) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(InferCall(id="t", task="eeg", model=MODEL, ref="eeg/session-1"))
    assert err.value.code == "bad_request" and "ref" in err.value.message


async def test_wrong_task(executor: TfliteExecutor) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(call(json.dumps(RELAXED), task="intent"))
    assert err.value.code == "bad_request"


async def test_held_out_accuracy(executor: TfliteExecutor, meta: dict) -> None:
    build = load_build()
    assert build.LABELS == meta["labels"] and build.FEATURE_NAMES == NAMES
    # A fresh synthetic set: a seed that neither training nor the build's evaluation used.
    x, y = build.generate(300, seed=7)
    assert x.dtype == np.float32 and x.shape == (1200, 7) and np.isfinite(x).all()
    hits = 0
    for row, want in zip(x, y):
        res = await executor.run(call(data=row.astype("<f4").tobytes()))
        hits += res.output == build.LABELS[want]
    accuracy = hits / len(y)
    print(f"eeg-state-tiny accuracy on a fresh synthetic set: {accuracy:.3f} ({len(y)} vectors)")
    assert accuracy >= meta["test_accuracy"] - 0.05


def test_generator_is_deterministic_and_tf_free() -> None:
    build = load_build()
    a, ya = build.generate(20, seed=3)
    b, yb = build.generate(20, seed=3)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert np.bincount(ya).tolist() == [20, 20, 20, 20]
    rel = a[:, :5].sum(1)
    # Relative powers sum to 1, or are all 0 when no channel was clean.
    assert np.all((np.abs(rel - 1) < 1e-4) | (rel == 0))
    assert np.all((a[:, 6] >= 0) & (a[:, 6] <= 1))
    import sys
    assert "tensorflow" not in sys.modules
