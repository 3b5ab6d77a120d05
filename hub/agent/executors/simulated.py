"""The ``simulated`` runtime of the demo's device profiles: no model runs. It waits for a
latency drawn between the model's advertised p50 and p95 and says plainly that it is simulated,
so that a demo fleet exercises routing, dispatch, escalation and the ledger end to end."""

from __future__ import annotations

import asyncio
import math
import random

from .base import Emit, InferCall, InferResult

LABEL_TASKS = {"intent", "classify", "eeg"}


class SimulatedExecutor:
    runtime = "simulated"

    def __init__(self, device_id: str, seed: int | None = None) -> None:
        self.device_id = device_id
        self._rng = random.Random(seed)

    def _latency_s(self, call: InferCall) -> float:
        lat = call.model.latency_ms
        if lat is None:
            return 0.05
        # Log-normal with the advertised median and p95 (p95 = p50 · e^(1.645 σ)).
        sigma = max(0.01, math.log(max(lat.p95, lat.p50) / lat.p50) / 1.645) if lat.p50 > 0 else 0.0
        return lat.p50 / 1000 * math.exp(self._rng.gauss(0, sigma))

    async def run(self, call: InferCall, emit: Emit | None = None) -> InferResult:
        seconds = self._latency_s(call)
        if call.task in LABEL_TASKS:
            await asyncio.sleep(seconds)
            return InferResult(output="simulated", confidence=None, simulated=True)
        if call.task == "embed":
            await asyncio.sleep(seconds)
            return InferResult(output=[0.0] * 8, simulated=True)
        text = (f"[simulated] {call.model.name} on {self.device_id} would answer this {call.task} request "
                f"here; no model ran.")
        if emit is None:
            await asyncio.sleep(seconds)
            return InferResult(output=text, simulated=True, tokens_out=len(text.split()))
        words = text.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(seconds / len(words))
            await emit(word if i == 0 else " " + word)
        return InferResult(output=text, simulated=True, tokens_out=len(words))

    async def aclose(self) -> None:
        return None
