"""The ``cloud`` runtime: the large models the home does not own, reached over HTTPS.

Models whose name starts with ``claude`` go to the Anthropic Messages API; every other name goes
to an OpenAI-compatible chat-completions API (OpenAI itself, or any server speaking the same
dialect behind ``OPENAI_BASE_URL``). Keys come from the environment: a provider without a key is
simply not offered (:func:`cloud_models_available`), and a call that reaches it anyway is
``unavailable`` rather than a request the provider would reject.

Rate limits and overloads (429, 529, 5xx) are retried after the provider's ``retry-after``, but
only while the call's own deadline allows it: a caller with a 5 s budget is better served by a
prompt ``rate_limited`` carrying the wait than by a ``timeout`` it cannot act upon.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from ...capability import ModelSpec
from .base import Emit, ExecError, InferCall, InferResult

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_ANTHROPIC_BASE = "https://api.anthropic.com"
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens; this is the default for both providers
MAX_ERROR_TEXT = 300  # provider error messages are echoed to the caller, but never a whole page


def provider_for(model: str) -> str:
    """``anthropic`` for Claude models, ``openai`` (any OpenAI-compatible endpoint) otherwise."""
    return "anthropic" if model.lower().startswith("claude") else "openai"


def cloud_models_available(env: Mapping[str, str] = os.environ) -> dict[str, bool]:
    """Which providers have a key. The cloud layer is absent when neither has one."""
    return {"anthropic": bool(env.get("ANTHROPIC_API_KEY", "").strip()),
            "openai": bool(env.get("OPENAI_API_KEY", "").strip())}


#: Models announced per provider when its key is set; override with a comma-separated
#: ``SOVEREIGN_ANTHROPIC_MODELS`` / ``SOVEREIGN_OPENAI_MODELS``. Names must match the hub's
#: ``router.cloud_prices`` or its built-in price list (hub/router/prices.py) to be priced.
DEFAULT_MODELS = {"anthropic": "claude-haiku-4-5,claude-sonnet-4-5", "openai": "gpt-4o-mini"}
CLOUD_TASKS = ["intent", "classify", "summarize", "qa", "format", "draft", "code", "reason"]


def cloud_model_specs(env: Mapping[str, str] = os.environ) -> list[ModelSpec]:
    """What this machine can offer of the cloud layer: nothing without a key. Quality is left
    unset (the router's default applies) and latency unmeasured until calls are made."""
    out = []
    for provider, has_key in cloud_models_available(env).items():
        if not has_key:
            continue
        names = env.get(f"SOVEREIGN_{provider.upper()}_MODELS") or DEFAULT_MODELS[provider]
        for name in filter(None, (n.strip() for n in names.split(","))):
            out.append(ModelSpec(name=name, runtime="cloud", tasks=CLOUD_TASKS, max_concurrency=16))
    return out


class CloudExecutor:
    runtime = "cloud"

    def __init__(self, anthropic_key: str | None = None, openai_key: str | None = None,
                 anthropic_base: str | None = None, openai_base: str | None = None,
                 retries: int = 2, max_retry_after_s: float = 30.0,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.keys = {"anthropic": (anthropic_key if anthropic_key is not None else env.get("ANTHROPIC_API_KEY", "")).strip(),
                     "openai": (openai_key if openai_key is not None else env.get("OPENAI_API_KEY", "")).strip()}
        self.bases = {"anthropic": (anthropic_base or env.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_BASE).rstrip("/"),
                      "openai": (openai_base or env.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE).rstrip("/")}
        self.retries = max(0, retries)
        self.max_retry_after_s = max_retry_after_s
        self._session: aiohttp.ClientSession | None = None

    def available(self) -> dict[str, bool]:
        return {p: bool(k) for p, k in self.keys.items()}

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop; the call's deadline (asyncio.timeout in
        # run) is the only timeout, so aiohttp's default 5-minute total is switched off.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        if not isinstance(call.text, str) or not call.text:
            raise ExecError("bad_request", f"the cloud runtime needs text input (model {call.model.name})")
        provider = provider_for(call.model.name)
        if not self.keys[provider]:
            env_name = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
            raise ExecError("unavailable", f"no {provider} key on this device ({env_name} is not set)")
        url, headers, body = self._request(provider, call, stream=emit is not None)
        try:
            async with asyncio.timeout(call.timeout_s):
                return await self._post(provider, call, url, headers, body, emit)
        except TimeoutError:
            raise ExecError("timeout", f"{provider} did not answer within {call.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:  # refused, reset, DNS, TLS, a stream cut off halfway
            raise ExecError("unavailable", f"{provider} unreachable at {url}: {type(exc).__name__}: {exc}") from None

    # -- request ---------------------------------------------------------------------------------

    def _request(self, provider: str, call: InferCall, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        opts = call.options or {}
        max_tokens = opts.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise ExecError("bad_request", f"max_tokens must be a positive integer, not {max_tokens!r}")
        temperature = opts.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)):
            raise ExecError("bad_request", f"temperature must be a number, not {temperature!r}")
        system = opts.get("system")
        if system is not None and not isinstance(system, str):
            raise ExecError("bad_request", "system must be a string")

        key = self.keys[provider]
        if provider == "anthropic":
            body: dict[str, Any] = {"model": call.model.name, "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
                                    "messages": [{"role": "user", "content": call.text}]}
            if system:
                body["system"] = system  # Anthropic takes the system prompt beside the messages
            headers = {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
            url = f"{self.bases[provider]}/v1/messages"
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": call.text}]
            body = {"model": call.model.name, "messages": messages}
            # Only when asked: OpenAI's reasoning models reject max_tokens, compatible servers differ.
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            if stream:
                # Without include_usage a streamed answer carries no token counts at all.
                body["stream_options"] = {"include_usage": True}
            headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
            url = f"{self.bases[provider]}/chat/completions"
        if temperature is not None:
            body["temperature"] = temperature
        if stream:
            body["stream"] = True
        return url, headers, body

    # -- response --------------------------------------------------------------------------------

    async def _post(self, provider: str, call: InferCall, url: str, headers: dict[str, str],
                    body: dict[str, Any], emit: Emit | None) -> InferResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout_s
        attempt = 0
        while True:
            started = time.perf_counter()
            async with self._http().post(url, json=body, headers=headers) as resp:
                if resp.status == 200:
                    ctype = resp.headers.get("content-type", "")
                    if emit is not None and "text/event-stream" in ctype:
                        parse = self._anthropic_stream if provider == "anthropic" else self._openai_stream
                        result = await parse(resp, emit, started)
                    else:
                        # Also taken when a compatible server ignores "stream": the answer arrives
                        # whole and is emitted as one piece.
                        data = await _json_body(resp, provider)
                        result = (_anthropic_result if provider == "anthropic" else _openai_result)(data)
                        if emit is not None and result.output:
                            await emit(result.output)
                    result.stats["upstream_ms"] = (time.perf_counter() - started) * 1000
                    if attempt:
                        result.stats["retries"] = float(attempt)
                    return result
                error = await self._error(provider, resp, call.model.name)
            if error.code not in ("rate_limited", "upstream") or attempt >= self.retries:
                raise error
            wait = error.retry_after_s if error.retry_after_s is not None else min(0.5 * 2 ** attempt, self.max_retry_after_s)
            if loop.time() + wait >= deadline:
                raise error  # waiting would outlive the call: say so now, with the wait
            await asyncio.sleep(wait)
            attempt += 1

    async def _error(self, provider: str, resp: aiohttp.ClientResponse, model: str) -> ExecError:
        """The ExecError for a non-200 answer, with the provider's own message when it gave one."""
        raw = await resp.text(errors="replace")
        message = raw.strip()[:MAX_ERROR_TEXT] or resp.reason or ""
        try:
            err = json.loads(raw).get("error")
            # Anthropic: {"type":"error","error":{"type","message"}}; OpenAI: {"error":{"message","type","code"}}
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = err["message"][:MAX_ERROR_TEXT]
        except (ValueError, AttributeError):
            pass  # an HTML page from a proxy, say: the raw text is the best there is
        status = resp.status
        where = f"{provider} {status}"
        if status == 429:
            return ExecError("rate_limited", f"{where}: {message}", retry_after_s=self._retry_after(resp))
        if status >= 500:  # 529 is Anthropic's "overloaded"
            return ExecError("upstream", f"{where}: {message}", retry_after_s=self._retry_after(resp))
        if status in (401, 403):
            return ExecError("unavailable", f"{where}: {provider} key rejected: {message}")
        if status == 404:
            return ExecError("model_missing", f"{where}: model {model!r} not found: {message}")
        if status == 413:
            return ExecError("too_large", f"{where}: {message}")
        return ExecError("bad_request", f"{where}: {message}")

    def _retry_after(self, resp: aiohttp.ClientResponse) -> float | None:
        # Seconds only: both providers send seconds; an HTTP date falls back to our own backoff.
        try:
            value = float(resp.headers.get("retry-after", ""))
        except ValueError:
            return None
        return min(max(value, 0.0), self.max_retry_after_s)

    async def _anthropic_stream(self, resp: aiohttp.ClientResponse, emit: Emit, started: float) -> InferResult:
        answer = _Streamed(emit, started)
        tokens_in: int | None = None
        tokens_out: int | None = None
        async for event, data in _sse(resp, "anthropic"):
            if event == "ping":
                continue
            doc = _loads(data, "anthropic", f"{event} event")
            kind = doc.get("type", event)
            if kind == "error" or event == "error":
                err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
                code = "rate_limited" if err.get("type") == "rate_limit_error" else "upstream"
                raise ExecError(code, f"anthropic stream error {err.get('type', '?')}: {err.get('message', data[:MAX_ERROR_TEXT])}")
            if kind == "message_start":
                usage = _dig(doc, "message", "usage")
                if isinstance(usage, dict):
                    tokens_in = _int(usage.get("input_tokens"), tokens_in)
                    tokens_out = _int(usage.get("output_tokens"), tokens_out)
            elif kind == "content_block_delta":
                delta = doc.get("delta")
                if not isinstance(delta, dict):
                    raise ExecError("upstream", f"anthropic content_block_delta without a delta: {data[:MAX_ERROR_TEXT]}")
                if delta.get("type") == "text_delta":  # thinking and tool-input deltas are not the answer
                    text = delta.get("text")
                    if not isinstance(text, str):
                        raise ExecError("upstream", f"anthropic text_delta without text: {data[:MAX_ERROR_TEXT]}")
                    await answer.add(text)
            elif kind == "message_delta":
                usage = doc.get("usage")
                if isinstance(usage, dict):  # cumulative counts: the last one wins
                    tokens_out = _int(usage.get("output_tokens"), tokens_out)
                    tokens_in = _int(usage.get("input_tokens"), tokens_in)
            elif kind == "message_stop":
                return answer.result(tokens_in, tokens_out)
        raise ExecError("upstream", "anthropic stream ended before message_stop")

    async def _openai_stream(self, resp: aiohttp.ClientResponse, emit: Emit, started: float) -> InferResult:
        answer = _Streamed(emit, started)
        tokens_in: int | None = None
        tokens_out: int | None = None
        finished = False
        async for _event, data in _sse(resp, "openai"):
            if data.strip() == "[DONE]":
                finished = True
                break
            doc = _loads(data, "openai", "stream chunk")
            if isinstance(doc.get("error"), dict):
                err = doc["error"]
                raise ExecError("upstream", f"openai stream error: {err.get('message', data[:MAX_ERROR_TEXT])}")
            usage = doc.get("usage")
            if isinstance(usage, dict):  # the include_usage chunk, whose choices are empty
                tokens_in = _int(usage.get("prompt_tokens"), tokens_in)
                tokens_out = _int(usage.get("completion_tokens"), tokens_out)
            choices = doc.get("choices")
            if not isinstance(choices, list):
                raise ExecError("upstream", f"openai stream chunk without choices: {data[:MAX_ERROR_TEXT]}")
            if not choices:
                continue
            choice = choices[0]
            if not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict):
                raise ExecError("upstream", f"openai stream chunk with a malformed choice: {data[:MAX_ERROR_TEXT]}")
            text = choice.get("delta", {}).get("content")
            if text is not None and not isinstance(text, str):
                raise ExecError("upstream", f"openai delta content is not text: {data[:MAX_ERROR_TEXT]}")
            if text:
                await answer.add(text)
            if choice.get("finish_reason"):
                finished = True  # some compatible servers close without [DONE]
        if not finished:
            raise ExecError("upstream", "openai stream ended before [DONE]")
        return answer.result(tokens_in, tokens_out)


class _Streamed:
    """A streamed answer as it arrives: pieces passed on to the caller, the time to the first."""

    def __init__(self, emit: Emit, started: float) -> None:
        self.emit, self.started = emit, started
        self.parts: list[str] = []
        self.first_ms: float | None = None

    async def add(self, text: str) -> None:
        if not text:
            return
        if self.first_ms is None:
            self.first_ms = (time.perf_counter() - self.started) * 1000
        self.parts.append(text)
        await self.emit(text)

    def result(self, tokens_in: int | None, tokens_out: int | None) -> InferResult:
        stats = {"first_token_ms": self.first_ms} if self.first_ms is not None else {}
        return InferResult(output="".join(self.parts), tokens_in=tokens_in, tokens_out=tokens_out, stats=stats)


# -- parsing helpers -------------------------------------------------------------------------------

async def _json_body(resp: aiohttp.ClientResponse, provider: str) -> dict[str, Any]:
    raw = await resp.read()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ExecError("upstream", f"{provider} answered with malformed JSON ({exc}): {raw[:80]!r}") from None
    if not isinstance(data, dict):
        raise ExecError("upstream", f"{provider} answered with JSON that is not an object: {raw[:80]!r}")
    return data


def _anthropic_result(data: dict[str, Any]) -> InferResult:
    content = data.get("content")
    if not isinstance(content, list):
        raise ExecError("upstream", f"anthropic answer has no content list (keys: {sorted(data)})")
    # Only text blocks are the answer; thinking or tool_use blocks are skipped.
    texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    if not all(isinstance(t, str) for t in texts):
        raise ExecError("upstream", "anthropic text block without a text string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return InferResult(output="".join(texts), tokens_in=_int(usage.get("input_tokens")),
                       tokens_out=_int(usage.get("output_tokens")))


def _openai_result(data: dict[str, Any]) -> InferResult:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ExecError("upstream", f"openai answer has no choices (keys: {sorted(data)})")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ExecError("upstream", "openai choice has no message")
    content = message.get("content")
    if content is None:
        # A refusal or a tool call: no text to give, and that is the model's answer, not a fault.
        refusal = message.get("refusal")
        raise ExecError("no_answer", f"openai returned no text (finish_reason={choices[0].get('finish_reason')!r}"
                                     + (f", refusal: {refusal[:MAX_ERROR_TEXT]}" if isinstance(refusal, str) else "") + ")")
    if not isinstance(content, str):
        raise ExecError("upstream", f"openai message content is {type(content).__name__}, not text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return InferResult(output=content, tokens_in=_int(usage.get("prompt_tokens")),
                       tokens_out=_int(usage.get("completion_tokens")))


async def _sse(resp: aiohttp.ClientResponse, provider: str) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event, data). Split on bytes, not on chunks: a chunk boundary may
    fall anywhere, even inside a UTF-8 character, but never inside the ASCII newline."""
    buf = b""
    event, data = "", []

    def line(raw: bytes) -> tuple[str, str] | None:
        nonlocal event, data
        try:
            text = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise ExecError("upstream", f"{provider} stream is not UTF-8: {raw[:80]!r}") from None
        if not text:  # a blank line ends the event
            out = (event or "message", "\n".join(data)) if data else None
            event, data = "", []
            return out
        if text.startswith(":"):  # a comment, used as keep-alive
            return None
        name, _, value = text.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        return None

    async for chunk in resp.content.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            if (out := line(raw)) is not None:
                yield out
    for raw in (buf, b""):  # a last event not followed by a blank line
        if (out := line(raw)) is not None:
            yield out


def _loads(data: str, provider: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise ExecError("upstream", f"{provider} {what} is not JSON: {data[:80]!r}") from None
    if not isinstance(doc, dict):
        raise ExecError("upstream", f"{provider} {what} is not a JSON object: {data[:80]!r}")
    return doc


def _dig(doc: Any, *keys: str) -> Any:
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def _int(value: Any, default: int | None = None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
