# Tiny int8 MLPs for the firmware: the agent's LiteRT models, exported by firmware/export.py.
# Plain MicroPython (array, binascii, math); runs unchanged under CPython for the tests.
#
# Each layer holds int8 weights row by row with one float scale per row (w ~ q * scale) and a
# float bias. The input of each layer is quantised to 16-bit integers with one scale for the
# vector (8 bits lost 1.7 % of the EEG labels: its features span 0.01 to 3.5), the dot products
# are integer sums, and the two scales are applied once per row.
import math
from array import array

try:
    from binascii import a2b_base64, crc32
except ImportError:  # pragma: no cover - very old ports
    from ubinascii import a2b_base64, crc32

import json


class Layer:
    def __init__(self, d):
        self.n_in = d["in"]
        self.n_out = d["out"]
        self.w = array("b", a2b_base64(d["w"]))
        self.scale = d["scale"]
        self.b = d["b"]
        self.act = d["act"]

    def dense(self, x):
        """x: a list of floats -> a list of floats (before the activation)."""
        top = max(abs(v) for v in x) or 1.0
        xs = top / 32767.0
        q = [int(round(v / xs)) for v in x]
        w, n, out = self.w, self.n_in, []
        for j in range(self.n_out):
            base = j * n
            acc = 0
            for i in range(n):
                qi = q[i]
                if qi:
                    acc += w[base + i] * qi
            out.append(acc * self.scale[j] * xs + self.b[j])
        return out

    def sparse_binary(self, active):
        """The first layer of a hashed bag of n-grams: the input is 0/1, so each row is a sum of
        the weights at the active positions (integers only), scaled once."""
        w, n, out = self.w, self.n_in, []
        for j in range(self.n_out):
            base = j * n
            acc = 0
            for i in active:
                acc += w[base + i]
            out.append(acc * self.scale[j] + self.b[j])
        return out


def relu(x):
    return [v if v > 0 else 0.0 for v in x]


def softmax(x):
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = sum(e)
    return [v / s for v in e]


def _is_word(ch):
    return ch.isalpha() or ch.isdigit() or ch == "_" or ch == "'"


def tokens(text):
    # The agent folds with NFKC + casefold; MicroPython has neither, so: lower() and the
    # typographic apostrophe. Identical for the ASCII commands the models were trained on.
    text = text.lower().replace("\u2019", "'")
    out, cur = [], []
    for ch in text:
        if _is_word(ch):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


class Model:
    def __init__(self, doc):
        self.name = doc["name"]
        self.tasks = doc["tasks"]
        self.labels = doc["labels"]
        self.features = doc["features"]
        self.layers = [Layer(d) for d in doc["layers"]]

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f))

    def active_buckets(self, text):
        f = self.features
        toks = tokens(text)
        seen = {}
        for n in f["ngrams"]:
            for i in range(len(toks) - n + 1):
                gram = str(n) + ":" + " ".join(toks[i:i + n])
                seen[(crc32(gram.encode()) & 0xFFFFFFFF) % f["buckets"]] = 1
        return sorted(seen)

    def predict(self, inp):
        """inp: text (hashing models) or a list of floats (vector models) -> (label, p, probs)."""
        if self.features["kind"] == "hashing":
            x = self.layers[0].sparse_binary(self.active_buckets(inp))
            rest = self.layers[1:]
        else:
            if len(inp) != self.features["size"]:
                raise ValueError("expected %d values, got %d" % (self.features["size"], len(inp)))
            x = self.layers[0].dense([float(v) for v in inp])
            rest = self.layers[1:]
        for layer in rest:
            x = layer.dense(relu(x))
        probs = softmax(x)
        best = 0
        for i in range(1, len(probs)):
            if probs[i] > probs[best]:
                best = i
        return self.labels[best], probs[best], probs
