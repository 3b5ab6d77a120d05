"""The cloud executor against a local stand-in for the Anthropic and OpenAI APIs.

No cloud service can run here, so a real aiohttp server on 127.0.0.1 (a free port) answers with
payloads shaped exactly as the providers' API documentation shows them: Anthropic's Messages API
(JSON message, the SSE event sequence message_start / content_block_start / ping /
content_block_delta / content_block_stop / message_delta / message_stop, and its
``{"type":"error","error":{...}}`` bodies) and OpenAI's chat completions (``chat.completion``,
``chat.completion.chunk`` lines ending in ``data: [DONE]`` with the ``include_usage`` chunk, and
``{"error":{"message","type","param","code"}}`` bodies). These are recorded from the
documentation, not captured from live traffic.

The model name picks the behaviour: ``claude-test`` / ``gpt-test`` answer, ``*-ratelimit-once``
is rate limited once, ``*-ratelimit`` always, ``*-error500`` fails, ``*-garbled`` sends broken
JSON, ``*-slow`` never answers in time, anything else is an unknown model (404). A wrong key is
rejected (401) as the providers do.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from hub.agent.executors.base import ExecError, InferCall
from hub.agent.executors.cloud import CloudExecutor, cloud_models_available, provider_for
from hub.capability import ModelSpec

from .conftest import serve_app

KEY = "test-key-123"
KNOWN = {"claude-test", "claude-ratelimit-once", "claude-ratelimit", "claude-ratelimit-long", "claude-error500",
         "claude-overloaded", "claude-garbled", "claude-shapeless", "claude-slow",
         "gpt-test", "gpt-ratelimit-once", "gpt-ratelimit", "gpt-error500", "gpt-garbled", "gpt-slow"}

# --- documented payloads ---------------------------------------------------------------------------

ANTHROPIC_TEXT = "Hi! My name is Claude."
ANTHROPIC_MESSAGE = {
    "content": [{"text": ANTHROPIC_TEXT, "type": "text"}],
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "model": "claude-test",
    "role": "assistant",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "type": "message",
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}
# Deltas include a multi-byte character so that the SSE parser sees one split across writes.
ANTHROPIC_DELTAS = ["Hello", "!", " Grüße", " from", " Claude", "."]


def anthropic_stream_events() -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [],
            "model": "claude-test", "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": t}}) for t in ANTHROPIC_DELTAS]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 15}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


OPENAI_TEXT = "\n\nHello there, how may I assist you today?"
OPENAI_COMPLETION = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1677652288,
    "model": "gpt-test",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": OPENAI_TEXT, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "service_tier": "default",
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
              "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}},
}
OPENAI_DELTAS = ["Hello", " there", ", grüß", " dich", "!"]


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190, "model": "gpt-test",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def openai_error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- the stand-in server ---------------------------------------------------------------------------

@dataclass
class Upstream:
    anthropic_base: str = ""
    openai_base: str = ""
    attempts: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    stream_done: bool = False  # set once the last SSE byte is written


async def _write_sse(resp: web.StreamResponse, text: str, up: Upstream) -> None:
    # Written in uneven byte slices, some ending inside a UTF-8 character, with a pause between.
    raw = text.encode()
    step = 37
    for i in range(0, len(raw), step):
        await resp.write(raw[i:i + step])
        await asyncio.sleep(0.005)
    up.stream_done = True


#: How long the ``*-slow`` models take to answer: far beyond the timeouts the tests give them.
SLOW_S = 30


def make_app(up: Upstream) -> web.Application:
    async def anthropic(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        up.attempts[model] += 1
        up.requests.append(("anthropic", dict(request.headers), body))
        if request.headers.get("x-api-key") != KEY:
            return web.json_response(anthropic_error("authentication_error", "invalid x-api-key"), status=401)
        if request.headers.get("anthropic-version") != "2023-06-01" or request.content_type != "application/json":
            return web.json_response(anthropic_error("invalid_request_error", "bad headers"), status=400)
        if model not in KNOWN:
            return web.json_response(anthropic_error("not_found_error", f"model: {model}"), status=404)
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] > 8192:
            return web.json_response(anthropic_error(
                "invalid_request_error", f"max_tokens: {body.get('max_tokens')} > 8192, which is the maximum allowed "
                                         "number of output tokens for claude-test"), status=400)
        if model == "claude-ratelimit-once" and up.attempts[model] == 1 or model == "claude-ratelimit":
            return web.json_response(anthropic_error("rate_limit_error", "Number of request tokens has exceeded "
                                                     "your per-minute rate limit"), status=429,
                                     headers={"retry-after": "1" if model.endswith("once") else "0"})
        if model == "claude-ratelimit-long":
            return web.json_response(anthropic_error("rate_limit_error", "slow down"), status=429,
                                     headers={"retry-after": "20"})
        if model == "claude-error500":
            return web.json_response(anthropic_error("api_error", "Internal server error"), status=500,
                                     headers={"retry-after": "0"})
        if model == "claude-overloaded":
            return web.json_response(anthropic_error("overloaded_error", "Overloaded"), status=529,
                                     headers={"retry-after": "0"})
        if model == "claude-garbled":
            return web.Response(text='{"content": [{"type": "text", "text": "Hi', content_type="application/json")
        if model == "claude-shapeless":
            return web.json_response({"type": "message", "completion": "old API shape"})
        if model == "claude-slow":
            await asyncio.sleep(SLOW_S)
        if not body.get("stream"):
            return web.json_response(ANTHROPIC_MESSAGE)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        await _write_sse(resp, "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in anthropic_stream_events()), up)
        await resp.write_eof()
        return resp

    async def openai(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        up.attempts[model] += 1
        up.requests.append(("openai", dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response(openai_error(
                "Incorrect API key provided: wrong. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"), status=401)
        if model not in KNOWN:
            return web.json_response(openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error", "model_not_found"), status=404)
        if model == "gpt-ratelimit-once" and up.attempts[model] == 1 or model == "gpt-ratelimit":
            return web.json_response(openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
                                     status=429, headers={"retry-after": "1" if model.endswith("once") else "0"})
        if model == "gpt-error500":
            return web.json_response(openai_error("The server had an error while processing your request.",
                                                  "server_error", None), status=500, headers={"retry-after": "0"})
        if model == "gpt-garbled":
            if body.get("stream"):
                resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(b'data: {"choices": [{"delta": {"content": "Hel\n\n')
                await resp.write_eof()
                return resp
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="application/json")
        if model == "gpt-slow":
            await asyncio.sleep(SLOW_S)
        if not body.get("stream"):
            return web.json_response(OPENAI_COMPLETION)
        chunks = [openai_chunk({"role": "assistant", "content": ""})]
        chunks += [openai_chunk({"content": t}) for t in OPENAI_DELTAS]
        chunks.append(openai_chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**openai_chunk({}), "choices": [],
                           "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await _write_sse(resp, "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n", up)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/anthropic/v1/messages", anthropic)
    app.router.add_post("/openai/v1/chat/completions", openai)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    async with serve_app(make_app(up), shutdown_timeout=0.1) as url:
        up.anthropic_base = f"{url}/anthropic"
        up.openai_base = f"{url}/openai/v1"
        yield up


@pytest.fixture
async def cloud(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CloudExecutor]:
    # Keys and bases through the environment, exactly as a deployment would set them.
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", upstream.anthropic_base)
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.openai_base)
    ex = CloudExecutor()
    try:
        yield ex
    finally:
        await ex.aclose()


def call(model: str, text: str | None = "Hello, Claude", timeout_s: float = 5.0, **options: Any) -> InferCall:
    spec = ModelSpec(name=model, runtime="cloud", tasks=["chat"])
    return InferCall(id="r1", task="chat", model=spec, text=text, options=options, timeout_s=timeout_s)


async def expect_error(ex: CloudExecutor, c: InferCall, code: str, stream: bool = False) -> ExecError:
    async def sink(_: str) -> None:
        pass

    with pytest.raises(ExecError) as info:
        await ex.run(c, sink if stream else None)
    assert info.value.code == code, info.value.message
    return info.value


# --- answers ---------------------------------------------------------------------------------------

def test_provider_by_model_name() -> None:
    assert provider_for("claude-sonnet-4-5") == "anthropic"
    assert provider_for("Claude-3-haiku") == "anthropic"
    assert provider_for("gpt-4o-mini") == "openai"
    assert provider_for("llama3.1:8b") == "openai"


async def test_anthropic_plain(cloud: CloudExecutor, upstream: Upstream) -> None:
    res = await cloud.run(call("claude-test", system="Be brief.", temperature=0.2))
    assert res.output == ANTHROPIC_TEXT
    assert (res.tokens_in, res.tokens_out) == (2095, 503)
    assert res.joules is None and res.stats["upstream_ms"] > 0
    provider, headers, body = upstream.requests[-1]
    assert provider == "anthropic" and headers["anthropic-version"] == "2023-06-01"
    assert body == {"model": "claude-test", "max_tokens": 1024, "system": "Be brief.", "temperature": 0.2,
                    "messages": [{"role": "user", "content": "Hello, Claude"}]}


async def test_anthropic_streamed(cloud: CloudExecutor, upstream: Upstream) -> None:
    pieces: list[str] = []
    done_at_first_piece: list[bool] = []

    async def emit(text: str) -> None:
        if not pieces:
            done_at_first_piece.append(upstream.stream_done)
        pieces.append(text)

    res = await cloud.run(call("claude-test", max_tokens=64), emit)
    assert pieces == ANTHROPIC_DELTAS  # in order, none lost, the split "ü" reassembled
    assert res.output == "".join(pieces) == "Hello! Grüße from Claude."
    assert (res.tokens_in, res.tokens_out) == (25, 15)  # message_start, then message_delta's count
    assert done_at_first_piece == [False], "the first piece arrived only after the whole stream"
    assert upstream.requests[-1][2]["stream"] is True and upstream.requests[-1][2]["max_tokens"] == 64
    assert res.stats["first_token_ms"] <= res.stats["upstream_ms"]


async def test_openai_plain(cloud: CloudExecutor, upstream: Upstream) -> None:
    res = await cloud.run(call("gpt-test", system="Be brief."))
    assert res.output == OPENAI_TEXT
    assert (res.tokens_in, res.tokens_out) == (9, 12)
    provider, headers, body = upstream.requests[-1]
    assert provider == "openai" and headers["Authorization"] == f"Bearer {KEY}"
    assert body == {"model": "gpt-test", "messages": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hello, Claude"}]}


async def test_openai_streamed(cloud: CloudExecutor, upstream: Upstream) -> None:
    pieces: list[str] = []

    async def emit(text: str) -> None:
        pieces.append(text)

    res = await cloud.run(call("gpt-test", max_tokens=50), emit)
    assert pieces == OPENAI_DELTAS
    assert res.output == "".join(pieces) == "Hello there, grüß dich!"
    assert (res.tokens_in, res.tokens_out) == (19, 10)
    body = upstream.requests[-1][2]
    assert body["stream"] is True and body["max_tokens"] == 50 and body["stream_options"] == {"include_usage": True}


# --- the absent layer ------------------------------------------------------------------------------

async def test_no_key_no_layer(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", upstream.anthropic_base)
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.openai_base)
    assert cloud_models_available() == {"anthropic": False, "openai": False}
    assert cloud_models_available({"OPENAI_API_KEY": "sk-x"}) == {"anthropic": False, "openai": True}
    ex = CloudExecutor()
    try:
        assert ex.available() == {"anthropic": False, "openai": False}
        for model in ("claude-test", "gpt-test"):
            err = await expect_error(ex, call(model), "unavailable")
            assert "KEY is not set" in err.message
        assert not upstream.requests  # nothing was sent without a key
    finally:
        await ex.aclose()


async def test_constructor_key_only_for_one_provider(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ex = CloudExecutor(openai_key=KEY, openai_base=upstream.openai_base, anthropic_base=upstream.anthropic_base)
    try:
        assert ex.available() == {"anthropic": False, "openai": True}
        assert (await ex.run(call("gpt-test"))).output == OPENAI_TEXT
        await expect_error(ex, call("claude-test"), "unavailable")
    finally:
        await ex.aclose()


# --- rate limits and failures ----------------------------------------------------------------------

@pytest.mark.parametrize("model", ["claude-ratelimit-once", "gpt-ratelimit-once"])
async def test_rate_limited_once_then_answer(cloud: CloudExecutor, upstream: Upstream, model: str) -> None:
    t0 = time.monotonic()
    res = await cloud.run(call(model))
    assert upstream.attempts[model] == 2
    assert time.monotonic() - t0 >= 0.9  # the server's retry-after: 1 was honoured
    assert res.output in (ANTHROPIC_TEXT, OPENAI_TEXT) and res.stats["retries"] == 1


@pytest.mark.parametrize("model", ["claude-ratelimit", "gpt-ratelimit"])
async def test_rate_limited_forever(cloud: CloudExecutor, upstream: Upstream, model: str) -> None:
    err = await expect_error(cloud, call(model), "rate_limited")
    assert upstream.attempts[model] == 3  # the first try and the default 2 retries
    assert err.retry_after_s == 0
    assert "rate limit" in err.message.lower()


async def test_rate_limit_wait_beyond_the_deadline_fails_at_once(cloud: CloudExecutor, upstream: Upstream) -> None:
    t0 = time.monotonic()
    err = await expect_error(cloud, call("claude-ratelimit-long", timeout_s=10.0), "rate_limited")
    # At once: not after waiting out the call's 10 s (that would have ended as "timeout").
    assert time.monotonic() - t0 < 10.0 and upstream.attempts["claude-ratelimit-long"] == 1
    assert err.retry_after_s == 20


@pytest.mark.parametrize("model", ["claude-error500", "claude-overloaded", "gpt-error500"])
async def test_server_errors_are_upstream(cloud: CloudExecutor, upstream: Upstream, model: str) -> None:
    err = await expect_error(cloud, call(model), "upstream")
    assert upstream.attempts[model] == 3
    assert any(w in err.message for w in ("Internal server error", "Overloaded", "server had an error"))


async def test_retries_configurable(upstream: Upstream) -> None:
    ex = CloudExecutor(anthropic_key=KEY, anthropic_base=upstream.anthropic_base, retries=0)
    try:
        await expect_error(ex, call("claude-error500"), "upstream")
        assert upstream.attempts["claude-error500"] == 1
    finally:
        await ex.aclose()


@pytest.mark.parametrize("model", ["claude-test", "gpt-test"])
async def test_wrong_key_unavailable(upstream: Upstream, model: str) -> None:
    ex = CloudExecutor(anthropic_key="wrong", openai_key="wrong", anthropic_base=upstream.anthropic_base,
                       openai_base=upstream.openai_base)
    try:
        err = await expect_error(ex, call(model), "unavailable")
        assert "key rejected" in err.message and upstream.attempts[model] == 1
    finally:
        await ex.aclose()


@pytest.mark.parametrize("model", ["claude-nope-9", "gpt-nope-9"])
async def test_unknown_model_missing(cloud: CloudExecutor, model: str) -> None:
    err = await expect_error(cloud, call(model), "model_missing")
    assert model in err.message


async def test_other_4xx_bad_request_with_provider_message(cloud: CloudExecutor, upstream: Upstream) -> None:
    err = await expect_error(cloud, call("claude-test", max_tokens=100_000), "bad_request")
    assert "maximum allowed number of output tokens" in err.message
    assert upstream.attempts["claude-test"] == 1  # not retried


async def test_input_checked_before_sending(cloud: CloudExecutor, upstream: Upstream) -> None:
    await expect_error(cloud, call("claude-test", text=None), "bad_request")
    await expect_error(cloud, call("gpt-test", max_tokens="lots"), "bad_request")
    assert not upstream.requests


@pytest.mark.parametrize("model,stream", [("claude-garbled", False), ("gpt-garbled", False), ("gpt-garbled", True)])
async def test_malformed_json_upstream(cloud: CloudExecutor, model: str, stream: bool) -> None:
    err = await expect_error(cloud, call(model), "upstream", stream=stream)
    assert "JSON" in err.message


async def test_unexpected_shape_upstream(cloud: CloudExecutor) -> None:
    err = await expect_error(cloud, call("claude-shapeless"), "upstream")
    assert "no content list" in err.message


@pytest.mark.parametrize("model,stream", [("claude-slow", False), ("gpt-slow", True)])
async def test_slow_server_timeout(cloud: CloudExecutor, model: str, stream: bool) -> None:
    t0 = time.monotonic()
    await expect_error(cloud, call(model, timeout_s=0.3), "timeout", stream=stream)
    # Given up at the call's timeout, long before the stand-in's answer (SLOW_S after the request).
    assert time.monotonic() - t0 < SLOW_S / 2


async def test_unreachable_unavailable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = CloudExecutor(anthropic_key=KEY, anthropic_base=f"http://127.0.0.1:{port}")
    try:
        err = await expect_error(ex, call("claude-test"), "unavailable")
        assert "unreachable" in err.message
    finally:
        await ex.aclose()


async def test_session_lazy_and_closed(cloud: CloudExecutor) -> None:
    assert cloud._session is None
    await cloud.run(call("gpt-test"))
    session = cloud._session
    assert session is not None and not session.closed
    await cloud.aclose()
    assert session.closed and cloud._session is None
