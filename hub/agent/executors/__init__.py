"""Executors by runtime, created on first use (so an agent without Ollama never imports it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import ExecError, Executor

log = logging.getLogger(__name__)

RUNTIMES = ("code", "simulated", "tflite", "ollama", "cloud", "llamacpp", "whisper", "wakeword", "onnx")


@dataclass
class ExecutorOptions:
    device_id: str
    models_dir: Path | None = None
    ollama_host: str | None = None
    rules_file: Path | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ExecutorSet:
    def __init__(self, opts: ExecutorOptions) -> None:
        self.opts = opts
        self._executors: dict[str, Executor] = {}

    def get(self, runtime: str) -> Executor:
        ex = self._executors.get(runtime)
        if ex is None:
            ex = self._executors[runtime] = self._make(runtime)
        return ex

    def _make(self, runtime: str) -> Executor:
        o = self.opts
        if runtime == "code":
            from .code import CodeExecutor
            return CodeExecutor.from_file(o.rules_file) if o.rules_file else CodeExecutor()
        if runtime == "simulated":
            from .simulated import SimulatedExecutor
            return SimulatedExecutor(o.device_id, o.seed)
        if runtime == "tflite":
            from .tflite import TfliteExecutor, bundled_models_dir
            return TfliteExecutor(o.models_dir or bundled_models_dir())
        if runtime == "ollama":
            from .ollama import OllamaExecutor
            return OllamaExecutor(o.ollama_host)
        if runtime == "cloud":
            from .cloud import CloudExecutor
            return CloudExecutor()
        if runtime == "llamacpp":
            from .llamacpp import LlamaCppExecutor
            return LlamaCppExecutor()
        if runtime == "whisper":
            from .whisper import WhisperExecutor
            return WhisperExecutor(o.models_dir)
        if runtime == "wakeword":
            from .wakeword import WakeWordExecutor
            return WakeWordExecutor(o.models_dir)
        if runtime == "onnx":
            from .embed import EmbedExecutor
            return EmbedExecutor(o.models_dir)
        raise ExecError("unavailable", f"no executor for runtime {runtime!r} on this device (known: {', '.join(RUNTIMES)})")

    async def aclose(self) -> None:
        for runtime, ex in self._executors.items():
            try:
                await ex.aclose()
            except Exception:  # closing must go on for the others
                log.exception("closing the %s executor failed", runtime)
        self._executors.clear()
