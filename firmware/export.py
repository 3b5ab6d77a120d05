"""Exports the agent's LiteRT models for the MicroPython firmware.

    .venv/bin/python firmware/export.py    # writes firmware/micropython/models/<name>.json

The firmware cannot run LiteRT, so each fully connected layer's weights are read out of the
``.tflite`` file (dequantised where LiteRT stored them as int8) and quantised again per output
row to int8 with one float scale per row: ``w ≈ q * scale``. Biases stay float. The firmware
(``micropython/model.py``) does the multiply-accumulate in integers and applies the scales once
per row. The sidecar's featurizer settings and labels travel along.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "micropython" / "models"
MODELS = ("intent-tiny", "eeg-state-tiny")


def layers(tflite: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weights [out, in], bias [out]) per fully connected layer, in order from the input."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    itp = Interpreter(model_path=str(tflite),
                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    itp.allocate_tensors()
    size = int(itp.get_input_details()[0]["shape"][-1])
    mats, vecs = [], []
    for t in itp.get_tensor_details():
        try:
            value = itp.get_tensor(t["index"])
        except ValueError:
            continue  # activations: no data outside a run
        if t["index"] in (itp.get_input_details()[0]["index"], itp.get_output_details()[0]["index"]):
            continue
        if value.ndim == 2 and value.shape[0] == 1:
            continue  # a batch-of-one activation buffer (the hybrid kernels' quantised input)
        if value.dtype == np.int8:
            scales = np.asarray(t["quantization_parameters"]["scales"], dtype=np.float64)
            value = value.astype(np.float64) * (scales[:, None] if scales.size > 1 else scales)
        (mats if value.ndim == 2 else vecs).append(np.asarray(value, dtype=np.float64))
    out = []
    while True:
        w = next((m for m in mats if m.shape[1] == size), None)
        if w is None:
            break
        b = next(v for v in vecs if v.shape == (w.shape[0],))
        mats = [m for m in mats if m is not w]
        vecs = [v for v in vecs if v is not b]
        out.append((w, b))
        size = w.shape[0]
    return out


def quantise(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(w).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8), scale


def export(name: str) -> dict:
    sidecar = json.loads((ROOT / "hub" / "agent" / "models" / f"{name}.json").read_text())
    doc = {"name": name, "tasks": sidecar["tasks"], "labels": sidecar["labels"], "features": sidecar["features"],
           "source": f"hub/agent/models/{name}.tflite", "layers": []}
    found = layers(ROOT / "hub" / "agent" / "models" / f"{name}.tflite")
    for i, (w, b) in enumerate(found):
        q, scale = quantise(w)
        doc["layers"].append({"in": int(w.shape[1]), "out": int(w.shape[0]),
                              "w": base64.b64encode(q.tobytes()).decode(), "scale": [float(s) for s in scale],
                              "b": [float(x) for x in b], "act": "relu" if i < len(found) - 1 else "softmax"})
    return doc


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or MODELS:
        doc = export(name)
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(doc, separators=(",", ":")))
        print(f"{path.relative_to(ROOT)}: {[(l['in'], l['out']) for l in doc['layers']]}, {path.stat().st_size} bytes")
