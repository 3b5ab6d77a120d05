# Run under MicroPython: python-free timing of the firmware's models on the host interpreter.
#   micropython firmware/bench.py firmware/micropython INPUTS.json  -> one JSON line per model
import json
import sys
import time

sys.path.insert(0, sys.argv[1])
from model import Model  # noqa: E402

inputs = json.load(open(sys.argv[2]))
for name, items in inputs.items():
    m = Model.load(sys.argv[1] + "/models/" + name + ".json")
    labels, times = [], []
    for x in items:
        t0 = time.ticks_us()
        label = m.predict(x)[0]
        times.append(time.ticks_diff(time.ticks_us(), t0))
        labels.append(label)
    print(json.dumps({"model": name, "labels": labels, "us": times}))
