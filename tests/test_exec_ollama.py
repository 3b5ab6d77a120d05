"""The Ollama executor against a local stand-in for an Ollama server.

No Ollama server can be installed here, so a real aiohttp server on 127.0.0.1 (a free port)
answers through the official ``ollama`` client with payloads shaped as Ollama's REST API
documentation (docs/api.md in the ollama repository) shows them: ``POST /api/chat`` as NDJSON
(``done: false`` objects carrying ``message``, then a final ``done: true`` object with
``done_reason`` and the nanosecond ``total_duration`` / ``load_duration`` / ``prompt_eval_*`` /
``eval_*`` fields) or as one object when ``"stream": false``; ``POST /api/embed`` answering
``{"model", "embeddings": [[...]], ...}``; errors as ``{"error": "..."}`` with the HTTP status
(404 ``model "x" not found, try pulling it first``). The final streamed object also carries an
empty assistant ``message``, as the server sends it (the documentation's example leaves it out;
the client requires it). These are recorded from the documentation, not captured live.

The model name picks the behaviour: ``llama3.2`` answers, ``all-minilm`` embeds, ``gone`` is
not pulled (404), ``broken`` fails (500), ``slow`` never answers in time, ``stall`` streams two
pieces and then stops sending.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub.agent.executors.base import ExecError, InferCall
from hub.agent.executors.ollama import DEFAULT_HOST, OllamaExecutor
from hub.capability import ModelSpec

from .conftest import serve_app, wait_for

ROOT = Path(__file__).resolve().parent.parent

# --- documented payloads ---------------------------------------------------------------------------

STREAM_PIECES = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", " — ", "grüß", "."]
FINAL_STATS = {"total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
               "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000}
CHAT_ANSWER = {
    "model": "llama3.2",
    "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done_reason": "stop",
    "done": True,
    "total_duration": 5191566416,
    "load_duration": 2154458,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000,
    "eval_count": 298,
    "eval_duration": 4799921000,
}
EMBEDDING = [0.010071029, -0.0017594862, 0.05007221, 0.04692972, 0.054916814,
             0.008599704, 0.105441414, -0.025878139, 0.12958129, 0.031952348]
EMBED_ANSWER = {"model": "all-minilm", "embeddings": [EMBEDDING],
                "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8}


def stream_chunk(model: str, content: str) -> dict[str, Any]:
    return {"model": model, "created_at": "2023-08-04T08:52:19.385406455-07:00",
            "message": {"role": "assistant", "content": content, "images": None}, "done": False}


def stream_final(model: str) -> dict[str, Any]:
    return {"model": model, "created_at": "2023-08-04T19:22:45.499127Z",
            "message": {"role": "assistant", "content": ""}, "done_reason": "stop", "done": True, **FINAL_STATS}


# --- the stand-in server ---------------------------------------------------------------------------


#: How long the "slow" and "stall" handlers hold their answer (unless released at teardown): far
#: beyond every bound below, so that "gave up at its timeout" is an ordering, not a race.
HOLD_S = 60


@dataclass
class FakeOllama:
    url: str = ""
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    streams: list[web.Request] = field(default_factory=list)  # streamed chat requests, to watch their connection
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets "slow"/"stall" handlers end

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b in self.requests if p == path]


def not_found(model: str) -> web.Response:
    return web.json_response({"error": f'model "{model}" not found, try pulling it first'}, status=404)


def make_app(state: FakeOllama) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append(("/api/chat", body))
        model = body.get("model", "")
        if model == "gone":
            return not_found(model)
        if model == "broken":
            return web.json_response({"error": "llama runner process has terminated: exit status 2"}, status=500)
        if model == "slow":
            await asyncio.wait_for(state.release.wait(), HOLD_S)
            return web.json_response(CHAT_ANSWER)
        if model not in ("llama3.2", "stall"):
            return not_found(model)
        if body.get("stream", True) is False:  # Ollama streams unless told not to
            return web.json_response(CHAT_ANSWER)
        state.streams.append(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        pieces = STREAM_PIECES[:2] if model == "stall" else STREAM_PIECES
        for piece in pieces:
            await resp.write(json.dumps(stream_chunk(model, piece)).encode() + b"\n")
            await asyncio.sleep(0.005)  # separate writes, so the client really sees a stream
        if model == "stall":
            await asyncio.wait_for(state.release.wait(), HOLD_S)
            return resp
        await resp.write(json.dumps(stream_final(model)).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def embed(request: web.Request) -> web.Response:
        body = await request.json()
        state.requests.append(("/api/embed", body))
        if body.get("model") != "all-minilm":
            return not_found(body.get("model", ""))
        return web.json_response(EMBED_ANSWER)

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    return app


@pytest.fixture
async def server() -> AsyncIterator[FakeOllama]:
    state = FakeOllama()
    async with serve_app(make_app(state), shutdown_timeout=1.0) as url:
        state.url = url
        try:
            yield state
        finally:
            state.release.set()  # handlers held back by a test end before the server stops


@pytest.fixture
async def executor(server: FakeOllama) -> AsyncIterator[OllamaExecutor]:
    ex = OllamaExecutor(server.url)
    try:
        yield ex
    finally:
        await ex.aclose()


def call(model: str, task: str = "summarize", text: str | None = "why is the sky blue?",
         timeout_s: float = 5.0, **options: Any) -> InferCall:
    spec = ModelSpec(name=model, runtime="ollama", tasks=[task])
    return InferCall(id="c1", task=task, model=spec, text=text, options=options, timeout_s=timeout_s)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# --- tests -----------------------------------------------------------------------------------------


async def test_chat_not_streamed(server: FakeOllama, executor: OllamaExecutor) -> None:
    res = await executor.run(call("llama3.2", system="Answer briefly.", temperature=0.2, max_tokens=64))
    assert res.output == "Hello! How are you today?"
    assert (res.tokens_in, res.tokens_out) == (26, 298)
    assert res.stats["tokens_per_s"] == pytest.approx(298 / 4.799921)
    assert res.stats["total_ms"] == pytest.approx(5191.566416)
    assert res.stats["load_ms"] == pytest.approx(2.154458)
    assert res.stats["eval_ms"] == pytest.approx(4799.921)
    assert res.stats["prompt_eval_ms"] == pytest.approx(383.809)

    [body] = server.bodies("/api/chat")
    assert body["model"] == "llama3.2"
    assert body["stream"] is False
    assert body["keep_alive"] == "5m"
    assert body["messages"] == [{"role": "system", "content": "Answer briefly."},
                                {"role": "user", "content": "why is the sky blue?"}]
    assert body["options"] == {"temperature": 0.2, "num_predict": 64}


async def test_chat_streamed(server: FakeOllama) -> None:
    ex = OllamaExecutor(server.url, keep_alive="30m")
    got: list[str] = []

    async def emit(piece: str) -> None:
        got.append(piece)

    try:
        res = await ex.run(call("llama3.2", task="qa"), emit)
    finally:
        await ex.aclose()
    assert got == STREAM_PIECES  # every piece, in order, none invented
    assert res.output == "".join(got) == "The sky is blue because of Rayleigh scattering — grüß."
    assert (res.tokens_in, res.tokens_out) == (26, 282)
    assert res.stats["tokens_per_s"] == pytest.approx(282 / 4.535599)
    assert res.stats["load_ms"] == pytest.approx(1.334875)
    assert res.stats["total_ms"] == pytest.approx(4883.583458)

    [body] = server.bodies("/api/chat")
    assert body["stream"] is True
    assert body["keep_alive"] == "30m"
    assert body["model"] == "llama3.2"
    assert body["messages"] == [{"role": "user", "content": "why is the sky blue?"}]
    assert "options" not in body  # nothing asked, nothing sent: the Modelfile's defaults apply


async def test_embed(server: FakeOllama, executor: OllamaExecutor) -> None:
    res = await executor.run(call("all-minilm", task="embed", text="Why is the sky blue?"))
    assert res.output == EMBEDDING
    assert all(isinstance(x, float) for x in res.output)
    assert res.tokens_in == 8
    assert res.tokens_out is None
    assert res.stats == {"total_ms": pytest.approx(14.143917), "load_ms": pytest.approx(1.0195)}
    assert server.bodies("/api/chat") == []
    [body] = server.bodies("/api/embed")
    assert body == {"model": "all-minilm", "input": "Why is the sky blue?", "keep_alive": "5m"}


@pytest.mark.parametrize("streamed", [False, True])
async def test_model_missing(server: FakeOllama, executor: OllamaExecutor, streamed: bool) -> None:
    async def emit(piece: str) -> None:
        raise AssertionError("nothing should be emitted")

    with pytest.raises(ExecError) as err:
        await executor.run(call("gone"), emit if streamed else None)
    assert err.value.code == "model_missing"
    assert "ollama pull gone" in err.value.message
    assert server.bodies("/api/chat")[0]["stream"] is streamed


async def test_embed_model_missing(server: FakeOllama, executor: OllamaExecutor) -> None:
    with pytest.raises(ExecError) as err:
        await executor.run(call("nomic-embed-text", task="embed"))
    assert err.value.code == "model_missing"
    assert "ollama pull nomic-embed-text" in err.value.message


@pytest.mark.parametrize("streamed", [False, True])
async def test_server_error_is_upstream(server: FakeOllama, executor: OllamaExecutor, streamed: bool) -> None:
    async def emit(piece: str) -> None:
        pass

    with pytest.raises(ExecError) as err:
        await executor.run(call("broken"), emit if streamed else None)
    assert err.value.code == "upstream"
    assert "500" in err.value.message and "llama runner process has terminated" in err.value.message


# Both paths: the client turns a refused connection into ConnectionError for a plain request but
# lets httpx.ConnectError through when opening a stream.
@pytest.mark.parametrize("task,streamed", [("summarize", False), ("summarize", True), ("embed", False)])
async def test_server_down_is_unavailable(task: str, streamed: bool) -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    ex = OllamaExecutor(host)

    async def emit(piece: str) -> None:
        pass

    try:
        with pytest.raises(ExecError) as err:
            await ex.run(call("llama3.2", task=task), emit if streamed else None)
    finally:
        await ex.aclose()
    assert err.value.code == "unavailable"
    assert err.value.message == f"no Ollama at {host}"


async def test_slow_server_times_out(server: FakeOllama, executor: OllamaExecutor) -> None:
    started = time.perf_counter()
    with pytest.raises(ExecError) as err:
        await executor.run(call("slow", timeout_s=0.3))
    elapsed = time.perf_counter() - started
    assert err.value.code == "timeout"
    # At its 0.3 s timeout, long before the stand-in's answer (held for HOLD_S).
    assert 0.25 <= elapsed < HOLD_S / 2
    assert len(server.bodies("/api/chat")) == 1  # it did reach the server


async def test_stalled_stream_times_out_after_its_pieces(server: FakeOllama, executor: OllamaExecutor) -> None:
    got: list[str] = []

    async def emit(piece: str) -> None:
        got.append(piece)

    started = time.perf_counter()
    with pytest.raises(ExecError) as err:
        await executor.run(call("stall", timeout_s=0.4), emit)
    assert err.value.code == "timeout"
    assert time.perf_counter() - started < HOLD_S / 2  # not when the stand-in ends the stalled stream
    assert got == STREAM_PIECES[:2]
    # The connection was released: the same executor still answers.
    res = await executor.run(call("llama3.2"))
    assert res.output == "Hello! How are you today?"


async def test_failed_emit_releases_the_stream(server: FakeOllama, executor: OllamaExecutor) -> None:
    async def emit(piece: str) -> None:
        raise RuntimeError("the caller went away")

    try:
        await executor.run(call("stall"), emit)
    except RuntimeError as exc:
        # Kept, as a caller reporting it would: its traceback keeps the stream generator alive,
        # so only an explicit close releases the connection now rather than at collection.
        kept = exc
    else:
        pytest.fail("the emit's error should come through")
    [request] = server.streams
    # Well before the stand-in would end the stalled stream itself (HOLD_S).
    await wait_for(lambda: request.transport is None or request.transport.is_closing(), HOLD_S / 2,
                   what="the stream's connection closed")
    assert kept.__traceback__ is not None


async def test_missing_text_is_bad_request(executor: OllamaExecutor, server: FakeOllama) -> None:
    for text in (None, ""):
        with pytest.raises(ExecError) as err:
            await executor.run(call("llama3.2", text=text))
        assert err.value.code == "bad_request"
    with pytest.raises(ExecError) as err:
        await executor.run(call("llama3.2", max_tokens=0))
    assert err.value.code == "bad_request"
    assert server.requests == []  # refused before anything was sent


async def test_host_from_environment(server: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert OllamaExecutor().host == DEFAULT_HOST == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    ex = OllamaExecutor()
    try:
        assert (await ex.run(call("llama3.2"))).output == "Hello! How are you today?"
    finally:
        await ex.aclose()
    assert len(server.bodies("/api/chat")) == 1


async def test_aclose_closes_the_http_client(server: FakeOllama) -> None:
    ex = OllamaExecutor(server.url)
    await ex.aclose()  # before any use: nothing to close, no error
    await ex.run(call("llama3.2"))
    http = ex._client._client  # type: ignore[union-attr]
    assert not http.is_closed
    await ex.aclose()
    assert http.is_closed
    # A later call opens a fresh client rather than failing on the closed one.
    assert (await ex.run(call("llama3.2"))).output == "Hello! How are you today?"
    await ex.aclose()


def test_importing_the_executor_does_not_import_ollama() -> None:
    code = "import sys, hub.agent.executors.ollama; print('ollama' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
