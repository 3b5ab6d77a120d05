#!/usr/bin/env python3
"""Check the two memory evaluation sets; exit non-zero on any problem.

Standard library only.

    python3 benchmarks/data/memory/check_sets.py

retrieval.jsonl  {"q", "path", "answer"}: path is a Markdown file under
                 corpus/ollama-docs/; answer is one line of 10-200 characters
                 found verbatim in that file; q is not copied from the file.
paraphrase.jsonl {"a", "b", "same", "split", "src"}: both sides 1-300
                 characters, no duplicate pairs, split tune/test, both labels
                 and every source present in each split.
"""
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "ollama-docs"
RETRIEVAL = HERE / "retrieval.jsonl"
PARAPHRASE = HERE / "paraphrase.jsonl"
N_RETRIEVAL = 80
N_PARAPHRASE = 2000
MD_SUFFIXES = (".md", ".mdx")

STOP = set("""a an the and or of to in on for with by at from is are be was it this
that as if do does i my me can how what which where when why who whom will would
should could there their its into over than then so not no yes any all you your
have has get got use using used just one via per out up about after before""".split())

problems = []


def fail(msg: str) -> None:
    problems.append(msg)


def tokens(text: str) -> list:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP]


def sections(texts: dict) -> list:
    """(path, text) per Markdown heading section, headings inside code fences ignored."""
    out = []
    for path, text in texts.items():
        cur, fence = [], False
        for line in text.split("\n"):
            if line.strip().startswith("```"):
                fence = not fence
            if not fence and re.match(r"#{1,6} ", line) and cur:
                out.append((path, "\n".join(cur)))
                cur = []
            cur.append(line)
        if cur:
            out.append((path, "\n".join(cur)))
    return out


def bm25_ranks(texts: dict, rows: list) -> list:
    """Informational keyword baseline: 1-based rank of the first section that
    holds the answer, under plain BM25 (k1=1.2, b=0.75) over heading sections."""
    secs = sections(texts)
    docs = [Counter(tokens(t)) for _, t in secs]
    lens = [sum(d.values()) for d in docs]
    avg = sum(lens) / len(lens)
    df = Counter(w for d in docs for w in d)
    n = len(docs)
    ranks = []
    for q, path, ans in rows:
        qs = tokens(q)
        scores = []
        for d, ln in zip(docs, lens):
            sc = 0.0
            for w in qs:
                tf = d.get(w, 0)
                if tf:
                    idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                    sc += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * ln / avg))
            scores.append(sc)
        order = sorted(range(n), key=lambda i: -scores[i])
        ranks.append(next(k + 1 for k, i in enumerate(order)
                          if secs[i][0] == path and ans in secs[i][1]))
    return ranks


def load_jsonl(path: Path):
    if not path.is_file():
        fail(f"{path.name}: missing")
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                fail(f"{path.name}:{n}: empty line")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path.name}:{n}: bad JSON ({e})")
                continue
            if not isinstance(obj, dict):
                fail(f"{path.name}:{n}: not an object")
                continue
            rows.append((n, obj))
    return rows


def check_corpus() -> dict:
    if not CORPUS.is_dir():
        fail(f"corpus directory {CORPUS} missing")
        return {}
    texts = {}
    for p in sorted(CORPUS.rglob("*")):
        if p.is_file():
            rel = p.relative_to(CORPUS).as_posix()
            if not rel.endswith(MD_SUFFIXES):
                fail(f"corpus: non-Markdown file {rel}")
                continue
            texts[rel] = p.read_text(encoding="utf-8")
    print(f"corpus: {len(texts)} files, "
          f"{sum(p.stat().st_size for p in CORPUS.rglob('*') if p.is_file())} bytes")
    return texts


def check_retrieval(texts: dict) -> None:
    rows = load_jsonl(RETRIEVAL)
    if len(rows) != N_RETRIEVAL:
        fail(f"retrieval.jsonl: {len(rows)} lines, expected {N_RETRIEVAL}")
    seen_q = set()
    per_file = Counter()
    multi = 0
    good = []
    for n, r in rows:
        where = f"retrieval.jsonl:{n}"
        if set(r) != {"q", "path", "answer"}:
            fail(f"{where}: keys {sorted(r)} != ['answer', 'path', 'q']")
            continue
        q, path, ans = r["q"], r["path"], r["answer"]
        if not all(isinstance(x, str) for x in (q, path, ans)):
            fail(f"{where}: q/path/answer must be strings")
            continue
        if not q.strip():
            fail(f"{where}: empty question")
        if q in seen_q:
            fail(f"{where}: duplicate question")
        seen_q.add(q)
        if path not in texts:
            fail(f"{where}: path {path!r} not a Markdown file in the corpus")
            continue
        if not 10 <= len(ans) <= 200:
            fail(f"{where}: answer length {len(ans)} outside 10-200")
        if "\n" in ans or "\r" in ans:
            fail(f"{where}: answer spans more than one line")
        text = texts[path]
        count = text.count(ans)
        if count == 0:
            fail(f"{where}: answer not found verbatim in {path}: {ans!r}")
            continue
        if count > 1:
            multi += 1
        if q.lower().strip(" ?") in text.lower():
            fail(f"{where}: question text is copied from {path}")
        per_file[path] += 1
        good.append((q, path, ans))
    if rows and len(per_file) < len(texts) // 2:
        fail(f"retrieval.jsonl: questions cover only {len(per_file)} of {len(texts)} files")
    print(f"retrieval: {len(rows)} questions over {len(per_file)} files; "
          f"{multi} answers occur more than once in their file")
    if good:
        r = bm25_ranks(texts, good)
        print(f"retrieval, BM25 keyword baseline over {len(sections(texts))} heading "
              f"sections (informational): top-1 {sum(x == 1 for x in r)}, "
              f"top-5 {sum(x <= 5 for x in r)}, beyond top-10 {sum(x > 10 for x in r)} "
              f"of {len(r)}")


def check_paraphrase() -> None:
    rows = load_jsonl(PARAPHRASE)
    if len(rows) != N_PARAPHRASE:
        fail(f"paraphrase.jsonl: {len(rows)} lines, expected {N_PARAPHRASE}")
    keys = set()
    cells = Counter()
    srcs = Counter()
    for n, r in rows:
        where = f"paraphrase.jsonl:{n}"
        if set(r) != {"a", "b", "same", "split", "src"}:
            fail(f"{where}: keys {sorted(r)} != ['a', 'b', 'same', 'split', 'src']")
            continue
        a, b, same, split, src = r["a"], r["b"], r["same"], r["split"], r["src"]
        if not (isinstance(a, str) and isinstance(b, str) and isinstance(src, str)):
            fail(f"{where}: a/b/src must be strings")
            continue
        if not isinstance(same, bool):
            fail(f"{where}: same must be true/false")
        if split not in ("tune", "test"):
            fail(f"{where}: split {split!r} not tune/test")
        for side, s in (("a", a), ("b", b)):
            if not s.strip():
                fail(f"{where}: empty {side}")
            if len(s) > 300:
                fail(f"{where}: {side} longer than 300 characters")
        if a == b:
            fail(f"{where}: identical sides")
        key = tuple(sorted((a.strip().lower(), b.strip().lower())))
        if key in keys:
            fail(f"{where}: duplicate pair")
        keys.add(key)
        cells[(split, same)] += 1
        srcs[(split, src)] += 1
    if not rows:
        return
    for split in ("tune", "test"):
        for same in (True, False):
            if cells[(split, same)] == 0:
                fail(f"paraphrase.jsonl: no same={same} pairs in {split}")
    for src in {s for _, s in srcs}:
        for split in ("tune", "test"):
            if srcs[(split, src)] == 0:
                fail(f"paraphrase.jsonl: source {src!r} missing from {split}")
    pos = sum(v for (sp, sa), v in cells.items() if sa)
    if not 0.4 <= pos / len(rows) <= 0.6:
        fail(f"paraphrase.jsonl: {pos}/{len(rows)} positive, not about half")
    for split in ("tune", "test"):
        t = cells[(split, True)] + cells[(split, False)]
        if abs(t - len(rows) / 2) > len(rows) * 0.02:
            fail(f"paraphrase.jsonl: {split} has {t} pairs, not about half")
    print("paraphrase: " + ", ".join(
        f"{sp}/{'same' if sa else 'different'}={cells[(sp, sa)]}"
        for sp in ("tune", "test") for sa in (True, False))
        + "; sources " + ", ".join(f"{k[1]}@{k[0]}={v}" for k, v in sorted(srcs.items())))


def main() -> int:
    texts = check_corpus()
    check_retrieval(texts)
    check_paraphrase()
    if problems:
        for p in problems:
            print("FAIL:", p, file=sys.stderr)
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
