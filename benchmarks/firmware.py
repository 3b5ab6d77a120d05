"""The firmware's int8 models under the host MicroPython interpreter (the unix port): time per
inference, and agreement with the agent's LiteRT models on the same inputs (target ≥ 99 %).

Inputs: every utterance of models/intent (training and held-out, 302) for ``intent-tiny``; 2,000
feature vectors from models/eeg's synthetic generator for ``eeg-state-tiny``.

    .venv/bin/python benchmarks/firmware.py [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import emit, summary  # noqa: E402


def tflite_labels(name: str, inputs: list) -> list[str]:
    from hub.agent.executors.tflite import Featurizer
    from ai_edge_litert.interpreter import Interpreter
    itp = Interpreter(model_path=str(ROOT / f"hub/agent/models/{name}.tflite"))
    itp.allocate_tensors()
    sidecar = json.loads((ROOT / f"hub/agent/models/{name}.json").read_text())
    labels = sidecar["labels"]
    fz = Featurizer.from_settings(sidecar["features"]) if sidecar["features"]["kind"] == "hashing" else None
    out = []
    for x in inputs:
        vec = fz(x) if isinstance(x, str) else np.asarray(x, dtype=np.float32)
        itp.set_tensor(itp.get_input_details()[0]["index"], vec[None, :])
        itp.invoke()
        out.append(labels[int(np.argmax(itp.get_tensor(itp.get_output_details()[0]["index"])))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    texts = [r[0] for f in ("data.csv", "test.csv") for r in list(csv.reader((ROOT / "models/intent" / f).open()))[1:]]
    sys.path.insert(0, str(ROOT / "models/eeg"))
    from build import generate  # the synthetic generator, importable without TensorFlow
    vectors = [[float(v) for v in row] for row in generate(500, seed=11)[0]]
    inputs = {"intent-tiny": texts, "eeg-state-tiny": vectors}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(inputs, f)
    micropython = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    out = subprocess.run([micropython, str(ROOT / "firmware/bench.py"), str(ROOT / "firmware/micropython"), f.name],
                         capture_output=True, text=True, check=True)
    figures = {}
    for line in out.stdout.splitlines():
        doc = json.loads(line)
        ref = tflite_labels(doc["model"], inputs[doc["model"]])
        same = sum(a == b for a, b in zip(doc["labels"], ref))
        figures[doc["model"]] = {"n": len(ref), "agreement": same / len(ref),
                                 "ms": summary([u / 1000 for u in doc["us"]])}
    if args.json:
        return emit(figures, True)
    print(f"firmware int8 models under {micropython.rsplit('/', 1)[-1]} (unix port), against the LiteRT models")
    for name, f in figures.items():
        print(f"  {name:<16} agreement {100 * f['agreement']:6.2f} % of {f['n']}   "
              f"per inference p50 {f['ms']['p50']:.3f} ms  p95 {f['ms']['p95']:.3f} ms   (target ≥ 99 %)")


if __name__ == "__main__":
    main()
