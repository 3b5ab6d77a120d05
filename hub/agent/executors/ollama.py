"""The ``ollama`` runtime: models served by an Ollama server (normally the device's own).

Text tasks go to ``/api/chat`` (streamed when the caller wants the answer in pieces), ``embed``
goes to ``/api/embed``. Ollama's final response carries token counts and durations in
nanoseconds; they come back in :attr:`InferResult.stats` so the agent can refresh the latency it
advertises. A model that is not loaded yet simply answers later (``load_ms`` says by how much);
``keep_alive`` keeps it loaded between calls.

The ``ollama`` package is imported on first use: its httpx stack costs ~70 ms of imports that
agents without an Ollama never pay.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

import pydantic

from .base import Emit, ExecError, InferCall, InferResult

if TYPE_CHECKING:
    import ollama

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_KEEP_ALIVE = "5m"
MAX_ERROR_TEXT = 300  # Ollama's error text is echoed to the caller, but never a whole page

#: Ollama's duration fields (nanoseconds) and the stats keys (milliseconds) they become.
_DURATIONS = {"total_duration": "total_ms", "load_duration": "load_ms", "eval_duration": "eval_ms",
              "prompt_eval_duration": "prompt_eval_ms"}


class OllamaExecutor:
    runtime = "ollama"

    def __init__(self, host: str | None = None, keep_alive: str | float = DEFAULT_KEEP_ALIVE) -> None:
        self.host = host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
        self.keep_alive = keep_alive
        self._client: ollama.AsyncClient | None = None

    def _ollama(self) -> ollama.AsyncClient:
        if self._client is None:
            import ollama  # lazily: see the module docstring

            # No httpx timeout (the client's default is None): the call's own deadline,
            # asyncio.timeout in run(), is the only one, so a slow model load is not cut short.
            self._client = ollama.AsyncClient(host=self.host)
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        http = getattr(client, "_client", None)  # the httpx.AsyncClient inside ollama's client
        if http is not None and hasattr(http, "aclose"):
            await http.aclose()

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        if not isinstance(call.text, str) or not call.text:
            raise ExecError("bad_request", f"the ollama runtime needs text input (model {call.model.name})")
        import httpx  # already imported by ollama; needed here only to name its errors
        import ollama

        model = call.model.name
        try:
            async with asyncio.timeout(call.timeout_s):
                if call.task == "embed":
                    return await self._embed(call)
                return await self._chat(call, emit)
        except TimeoutError:
            raise ExecError("timeout", f"ollama model {model} did not answer within {call.timeout_s:g} s") from None
        except ollama.ResponseError as exc:
            text = str(exc.error)[:MAX_ERROR_TEXT]
            if exc.status_code == 404:
                raise ExecError("model_missing", f"model {model!r} is not on the Ollama at {self.host} "
                                                 f"(run `ollama pull {model}`): {text}") from None
            status = f" {exc.status_code}" if exc.status_code > 0 else ""  # -1: an error inside a stream
            raise ExecError("upstream", f"ollama{status}: {text}") from None
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout):
            # The client turns a refused connection into ConnectionError, except while opening a
            # stream, where httpx's ConnectError comes through as is.
            raise ExecError("unavailable", f"no Ollama at {self.host}") from None
        except httpx.TransportError as exc:  # reset or cut off halfway through the answer
            raise ExecError("unavailable", f"Ollama at {self.host} dropped the connection: "
                                           f"{type(exc).__name__}: {exc}") from None
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:  # a body the client could not parse
            raise ExecError("upstream", f"ollama sent an unreadable answer: {str(exc)[:MAX_ERROR_TEXT]}") from None

    # -- requests --------------------------------------------------------------------------------

    async def _chat(self, call: InferCall, emit: Emit | None) -> InferResult:
        opts = call.options or {}
        system = opts.get("system")
        if system is not None and not isinstance(system, str):
            raise ExecError("bad_request", "system must be a string")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": call.text}]
        kwargs: dict[str, Any] = {"model": call.model.name, "messages": messages,
                                  "options": _model_options(opts) or None, "keep_alive": self.keep_alive}
        client = self._ollama()
        if emit is None:
            resp = await client.chat(**kwargs, stream=False)
            return _result(resp.message.content or "", resp)

        parts: list[str] = []
        stream = await client.chat(**kwargs, stream=True)
        try:
            async for chunk in stream:
                text = chunk.message.content if chunk.message is not None else None
                if text:
                    parts.append(text)
                    await emit(text)
                if chunk.done:
                    return _result("".join(parts), chunk)
        finally:
            # Leaving early (timeout, an emit that failed) must release the HTTP connection now,
            # not whenever the generator is garbage-collected.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        raise ExecError("upstream", "ollama stream ended before its final (done) response")

    async def _embed(self, call: InferCall) -> InferResult:
        opts = _model_options(call.options or {})
        resp = await self._ollama().embed(model=call.model.name, input=call.text or "",
                                          options=opts or None, keep_alive=self.keep_alive)
        if not resp.embeddings or not resp.embeddings[0]:
            raise ExecError("upstream", f"ollama returned no embedding for model {call.model.name}")
        return _result([float(x) for x in resp.embeddings[0]], resp)


def _model_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The hub's options in Ollama's names (``max_tokens`` is ``num_predict`` there)."""
    out: dict[str, Any] = {}
    temperature = opts.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
            raise ExecError("bad_request", f"temperature must be a number, not {temperature!r}")
        out["temperature"] = temperature
    max_tokens = opts.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ExecError("bad_request", f"max_tokens must be a positive integer, not {max_tokens!r}")
        out["num_predict"] = max_tokens
    return out


def _result(output: Any, resp: Any) -> InferResult:
    """Token counts and timings from Ollama's final response; fields it left out stay out."""
    stats: dict[str, float] = {}
    for field, key in _DURATIONS.items():
        ns = getattr(resp, field, None)
        if isinstance(ns, int):
            stats[key] = ns / 1e6
    eval_count = getattr(resp, "eval_count", None)
    eval_ns = getattr(resp, "eval_duration", None)
    if isinstance(eval_count, int) and isinstance(eval_ns, int) and eval_ns > 0:
        stats["tokens_per_s"] = eval_count / eval_ns * 1e9
    return InferResult(output=output, tokens_in=getattr(resp, "prompt_eval_count", None),
                       tokens_out=eval_count, stats=stats)
