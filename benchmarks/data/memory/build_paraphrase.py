#!/usr/bin/env python3
"""Build paraphrase.jsonl (semantic-cache threshold pairs) from PAWS-Wiki.

Standard library only. Reads the PAWS-Wiki "Labeled (Final)" dev and test
files from a bare git mirror at a pinned commit and writes a deterministic
2,000-pair subset:

    python3 benchmarks/data/memory/build_paraphrase.py \
        [--repo /work/.mirror/hoangdzung+simmat/repo] [--out .../paraphrase.jsonl]

Selection (see README.md): drop pairs with either side > 300 characters or
identical sides; drop exact duplicate pairs (order-insensitive, and any pair
seen with both labels); shuffle with random.Random(0); take pairs greedily so
that no sentence is used twice, until 1,000 positives and 1,000 negatives;
within each label shuffle again (same RNG) and give the first half to "tune",
the second half to "test".
"""
import argparse
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

COMMIT = "1f89f39a2a7138f3827a7746b74d25994f17d483"
FILES = ["data/final/dev.tsv", "data/final/test.tsv"]
SHA256 = {
    "data/final/dev.tsv": "ea2ac6cfbd1eec4788504576a710856d713e9fa244f108f49755453a40acebdb",
    "data/final/test.tsv": "da26f2c41c2bca65438360c4f4ad4b752bdf298faee41d746df6ed5a277f5eb8",
}
SRC = "PAWS-Wiki"
PER_LABEL = 1000
MAX_CHARS = 300
SEED = 0


def read_blob(repo: str, path: str) -> bytes:
    data = subprocess.run(
        ["git", f"--git-dir={repo}", "show", f"{COMMIT}:{path}"],
        check=True, capture_output=True).stdout
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[path]:
        sys.exit(f"{path}: sha256 {digest} != expected {SHA256[path]}")
    return data


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default="/work/.mirror/hoangdzung+simmat/repo")
    ap.add_argument("--out", default=str(here / "paraphrase.jsonl"))
    args = ap.parse_args()

    rows = []  # (a, b, same)
    for path in FILES:
        # the stored copy has CRLF line ends
        lines = read_blob(args.repo, path).decode("utf-8").split("\r\n")
        if lines[0] != "id\tsentence1\tsentence2\tlabel":
            sys.exit(f"{path}: unexpected header {lines[0]!r}")
        for line in lines[1:]:
            if not line:
                continue
            _id, s1, s2, label = line.split("\t")
            rows.append((s1.strip(), s2.strip(), label == "1"))
    total = len(rows)

    # length / identity filter
    rows = [r for r in rows if r[0] and r[1] and r[0] != r[1]
            and len(r[0]) <= MAX_CHARS and len(r[1]) <= MAX_CHARS]
    after_len = len(rows)

    # order-insensitive dedupe; a pair seen with both labels is dropped
    labels = {}
    for a, b, same in rows:
        labels.setdefault(tuple(sorted((a, b))), set()).add(same)
    seen = set()
    uniq = []
    for a, b, same in rows:
        key = tuple(sorted((a, b)))
        if key in seen or len(labels[key]) > 1:
            continue
        seen.add(key)
        uniq.append((a, b, same))
    conflicting = sum(1 for v in labels.values() if len(v) > 1)

    rng = random.Random(SEED)
    rng.shuffle(uniq)
    used = set()
    picked = {True: [], False: []}
    for a, b, same in uniq:
        if len(picked[same]) >= PER_LABEL or a in used or b in used:
            continue
        picked[same].append((a, b, same))
        used.update((a, b))
    for lab in (True, False):
        if len(picked[lab]) < PER_LABEL:
            sys.exit(f"only {len(picked[lab])} pairs with same={lab}")

    out = []
    for lab in (True, False):
        group = picked[lab]
        rng.shuffle(group)
        half = len(group) // 2
        for i, (a, b, same) in enumerate(group):
            out.append({"a": a, "b": b, "same": same,
                        "split": "tune" if i < half else "test", "src": SRC})
    rng.shuffle(out)
    out.sort(key=lambda r: r["split"] != "tune")  # stable: tune block first

    with open(args.out, "w", encoding="utf-8") as f:
        for r in out:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"read {total} pairs; {after_len} after length/identity filter; "
          f"{len(uniq)} unique ({conflicting} conflicting-label pairs dropped); "
          f"wrote {len(out)} to {args.out}")


if __name__ == "__main__":
    main()
