"""What both model builds share: Keras → .tflite, and running the result.

Imported by models/intent/build.py and models/eeg/build.py, which run in a throwaway TensorFlow
venv (their READMEs say how); TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def to_tflite(model: Any, input_size: int) -> bytes:
    """Through a SavedModel: converting a Keras 3 model's concrete function directly drops the
    weights (a 3 KB file that answers one label). A fixed batch of 1 is what the executor feeds.
    Dynamic-range quantisation: int8 weights where LiteRT finds them big enough (1,024 elements
    and up), float32 input and output."""
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as tmp:
        export = tf.keras.export.ExportArchive()
        export.track(model)
        export.add_endpoint("serve", lambda x: model(x, training=False),
                            input_signature=[tf.TensorSpec([1, input_size], tf.float32, name="features")])
        export.write_out(tmp, verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return conv.convert()


def tflite_predict(blob: bytes, x: np.ndarray) -> np.ndarray:
    try:  # the interpreter the hub uses, when this venv has it
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    itp = Interpreter(model_content=blob, num_threads=1)
    itp.allocate_tensors()
    i, o = itp.get_input_details()[0]["index"], itp.get_output_details()[0]["index"]
    out = []
    for row in x:
        itp.set_tensor(i, row[np.newaxis, :])
        itp.invoke()
        out.append(itp.get_tensor(o)[0].copy())
    return np.array(out)


def ship(out: Path, name: str, blob: bytes, meta: dict[str, Any], check: bool) -> int:
    """Write ``<name>.tflite`` and its sidecar into ``out``; with ``check``, only compare with the
    shipped file (exit status 1 when it differs)."""
    import hashlib
    import json
    if check:
        shipped = out / f"{name}.tflite"
        old = hashlib.sha256(shipped.read_bytes()).hexdigest() if shipped.is_file() else None
        same = old == hashlib.sha256(blob).hexdigest()
        print("identical to the shipped model" if same else f"differs from the shipped model ({old})")
        return 0 if same else 1
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.tflite").write_bytes(blob)
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out / name}.tflite and .json")
    return 0
