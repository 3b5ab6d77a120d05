"""The shipped intent classifier, run through the tflite executor with LiteRT (no TensorFlow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hub.agent.executors.base import ExecError, InferCall
from hub.agent.executors.tflite import FEATURES, Featurizer, TfliteExecutor, bundled_models_dir, featurize
from hub.capability import ModelSpec

ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelSpec(name="intent-tiny", runtime="tflite", tasks=["intent"])


def call(text: str | None, model: ModelSpec = MODEL, task: str = "intent") -> InferCall:
    return InferCall(id="t", task=task, model=model, text=text)


@pytest.fixture(scope="module")
def executor() -> TfliteExecutor:
    return TfliteExecutor(bundled_models_dir())


async def test_dictation_example_is_a_meeting(executor: TfliteExecutor) -> None:
    res = await executor.run(call("schedule a meeting with Ana tomorrow at ten"))
    assert res.output == "schedule_meeting"
    assert res.confidence is not None and res.confidence > 0.5
    assert res.stats["compute_us"] > 0


async def test_lights_off(executor: TfliteExecutor) -> None:
    assert (await executor.run(call("turn off the lights"))).output == "lights_off"
    assert (await executor.run(call("Turn ON the lights"))).output == "lights_on"


async def test_held_out_accuracy(executor: TfliteExecutor) -> None:
    with (ROOT / "models/intent/test.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hits = [(await executor.run(call(r["utterance"]))).output == r["label"] for r in rows]
    accuracy = sum(hits) / len(hits)
    print(f"intent-tiny held-out accuracy: {accuracy:.3f} on {len(hits)} utterances")
    assert accuracy >= 0.8
    # The sidecar reports what the build measured; LiteRT here must agree with it.
    meta = json.loads((bundled_models_dir() / "intent-tiny.json").read_text())
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=1 / len(hits))


async def test_missing_model(tmp_path: Path) -> None:
    ex = TfliteExecutor(tmp_path)
    with pytest.raises(ExecError) as err:
        await ex.run(call("turn off the lights"))
    assert err.value.code == "model_missing"
    # A model name is a file name, never a path out of the models directory.
    sneaky = ModelSpec(name="../models/intent-tiny", runtime="tflite", tasks=["intent"])
    with pytest.raises(ExecError) as err:
        await TfliteExecutor(bundled_models_dir()).run(call("hi", model=sneaky))
    assert err.value.code == "model_missing"


@pytest.mark.parametrize("text", [None, "", "   "])
async def test_no_text(executor: TfliteExecutor, text: str | None) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(call(text))
    assert err.value.code == "bad_request"


async def test_wrong_task(executor: TfliteExecutor) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(call("turn off the lights", task="summarize"))
    assert err.value.code == "bad_request"


def test_sidecar_featurizer_matches_executor() -> None:
    meta = json.loads((bundled_models_dir() / "intent-tiny.json").read_text())
    # The executor's hashing featurizer, with 4,096 buckets instead of its default 512
    # (models/intent/README.md says why): every other setting is the executor's own.
    assert {k: v for k, v in meta["features"].items() if k != "buckets"} == \
        {k: v for k, v in FEATURES.items() if k != "buckets"}
    assert meta["features"]["buckets"] == 4096
    assert Featurizer.from_settings(meta["features"]).tokens("Turn OFF") == Featurizer.from_settings(FEATURES).tokens("Turn OFF")
    assert meta["tasks"] == ["intent"] and len(meta["labels"]) == len(set(meta["labels"]))
    # Pinned crc32 buckets: a change to tokenising or hashing would silently detach the
    # executor from the shipped weights, so it must fail here (and be followed by a rebuild).
    assert np.flatnonzero(featurize("Turn OFF the lights")).tolist() == [26, 35, 80, 191, 314, 471, 477]
    assert np.flatnonzero(featurize("Turn OFF the lights", meta["features"])).tolist() == \
        [1501, 2586, 2595, 2751, 3664, 3898, 4055]


def test_unsupported_featurizer_refused() -> None:
    with pytest.raises(ValueError):
        Featurizer.from_settings({**FEATURES, "hash": "python-hash"})
