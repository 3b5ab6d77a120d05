#!/usr/bin/env python3
"""Derive per-item outcome tables of real LLMs from two public benchmark repositories.

What it does
------------
Reads two bare git mirrors (no work tree; every file is read with ``git show
<commit>:<path>`` at the PINNED commits below, so later upstream changes do not
alter the output) and writes two replay tables next to this script:

* ``mmlu_pro_outcomes.jsonl.gz`` -- MMLU-Pro (TIGER-AI-Lab/MMLU-Pro), 5-shot CoT
  runs published by the benchmark authors under ``eval_results/``. One line per
  question: ``{"id", "task": "qa", "category", "text", "outcomes": {model:
  {"score": 0|1, "out_tokens": int}}}``.  score = 1 iff the run's extracted
  answer letter (``pred``) equals the gold letter (``answer``).  A parse failure
  scores 0: ``pred`` missing, or ``pred`` present although the output text
  contains no standalone option letter A-J (the source then either filled in a
  random guess -- the Llama-3.1 runs -- or its regex took the first letter of a
  word, e.g. "The answer is (Cannot be determined)" -> "C").
  Only questions present in every chosen run, with identical question / options
  / answer / category in all runs, are eligible; of those the ``--mmlu-sample``
  questions whose sha1(question_id) sorts first are kept.

* ``alpaca_eval_outcomes.jsonl.gz`` -- AlpacaEval 2.0 (tatsu-lab/alpaca_eval),
  ``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json``. One line
  per instruction, ``"task": "draft"``; score = clip(preference - 1, 0, 1), the
  weighted GPT-4-Turbo judge's probability that the model's output beats the
  GPT-4 Turbo (gpt4_1106_preview) reference.  The reference itself is added as
  ``gpt-4-turbo`` with score 0.5 (a tie against itself; the source's own
  ``results/gpt4_1106_preview`` annotations record preference 1.5 for every
  instruction, which is checked and reported).

For both tables ``out_tokens = max(1, round(len(output_text) / 4))`` -- a
characters/4 estimate, not a tokenizer count.

Output is byte-for-byte deterministic: lines sorted by id, JSON with sorted keys
and fixed separators, gzip header with mtime=0 and no file name.

Sources read (pinned)
---------------------
* TIGER-AI-Lab/MMLU-Pro @ f418b116db00b065c2aea046518d8fcf74d39872 (HEAD,
  2026-03-18): ``eval_results/model_outputs_<model>_5shots.zip``.
* TIGER-AI-Lab/MMLU-Pro @ bfa90e1c730dd30cb6244fb5f8d93472bc5e2c5d
  (2024-07-08, the last commit that still holds ``eval_results/gpt4o/``):
  ``eval_results/gpt4o/<subject>_result.json`` (GPT-4o 2024-05-13, per subject;
  the whole-run zip for GPT-4o is too large to be present in the mirror).
* tatsu-lab/alpaca_eval @ cd543a149df89434d8a54582c0151c0b945c3d20 (HEAD,
  2025-08-09): ``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json``
  and ``results/<model>/model_outputs.json``.

How to re-run
-------------
    python3 benchmarks/data/extract_outcomes.py \
        [--mmlu-pro-repo /work/.mirror/TIGER-AI-Lab+MMLU-Pro/repo] \
        [--alpaca-eval-repo /work/.mirror/tatsu-lab+alpaca_eval/repo] \
        [--out-dir benchmarks/data] [--mmlu-sample 4000]

Standard library only; needs ``git`` on PATH. Prints per-model item counts,
mean score and mean out_tokens, plus MMLU-Pro per-category accuracy of the
tiny and the best cloud model, and full-run figures for comparison.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT_MMLU_PRO_REPO = "/work/.mirror/TIGER-AI-Lab+MMLU-Pro/repo"
DEFAULT_ALPACA_EVAL_REPO = "/work/.mirror/tatsu-lab+alpaca_eval/repo"

MMLU_PRO_COMMIT = "f418b116db00b065c2aea046518d8fcf74d39872"
MMLU_PRO_GPT4O_COMMIT = "bfa90e1c730dd30cb6244fb5f8d93472bc5e2c5d"
ALPACA_EVAL_COMMIT = "cd543a149df89434d8a54582c0151c0b945c3d20"

# (model key, tier, commit, kind, path). kind "zip": one zip holding one JSON
# list of all 12,032 records; kind "dir": a directory of <subject>_result.json.
MMLU_MODELS = [
    ("phi-3-mini", "tiny", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_Phi-3-mini-4k-instruct_5shots.zip"),
    ("llama-3.1-8b", "small", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_Meta-Llama-3_1-8B-Instruct_5shots.zip"),
    ("mistral-7b-v0.2", "small", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_Mistral-7B-Instruct-v0.2_5shots.zip"),
    ("llama-3.1-70b", "medium", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.zip"),
    ("mixtral-8x7b", "medium", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_Mixtral-8x7B-Instruct-v0.1_5shots.zip"),
    ("gpt-4o", "cloud", MMLU_PRO_GPT4O_COMMIT, "dir",
     "eval_results/gpt4o"),
    ("gemini-1.5-pro", "cloud", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_gemini-1.5-pro-002_5shots.zip"),
    ("gemini-1.5-flash", "cloud", MMLU_PRO_COMMIT, "zip",
     "eval_results/model_outputs_gemini-1.5-flash-002_5shots.zip"),
]

# Overall accuracy printed in the MMLU-Pro README "Mini-Leaderboard" at
# MMLU_PRO_COMMIT, for the rows that correspond to a chosen run.  Note the
# README does not say which Gemini-1.5 version it lists; the runs used here are
# the -002 versions.
MMLU_README_ACCURACY = {
    "gpt-4o": 72.55,
    "gemini-1.5-pro": 69.03,
    "gemini-1.5-flash": 59.12,
}

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
REFERENCE_DIR = "gpt4_1106_preview"  # GPT-4 Turbo, the AlpacaEval 2.0 reference
REFERENCE_KEY = "gpt-4-turbo"

# (model key, tier, results/<dir>)
ALPACA_MODELS = [
    ("fusechat-llama-3.2-1b", "tiny", "FuseChat-Llama-3.2-1B-Instruct"),
    ("fusechat-llama-3.2-3b", "small", "FuseChat-Llama-3.2-3B-Instruct"),
    ("fusechat-llama-3.1-8b", "small", "FuseChat-Llama-3.1-8B-Instruct"),
    ("fusechat-gemma-2-9b", "medium", "FuseChat-Gemma-2-9B-Instruct"),
]
ALPACA_LEADERBOARD = ("src/alpaca_eval/leaderboards/data_AlpacaEval_2/"
                      "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv")

ANY_LETTER = re.compile(r"\b[A-J]\b")


# ----------------------------------------------------------------- helpers --

def git_show(repo: str, commit: str, path: str) -> bytes:
    res = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"],
                         capture_output=True)
    if res.returncode != 0:
        raise SystemExit(f"cannot read {commit[:10]}:{path} from {repo}: "
                         f"{res.stderr.decode(errors='replace').strip()}")
    return res.stdout


def git_ls(repo: str, commit: str, path: str) -> list[str]:
    res = subprocess.run(["git", "-C", repo, "ls-tree", "--name-only", "-z",
                          commit, path.rstrip("/") + "/"], capture_output=True)
    if res.returncode != 0:
        raise SystemExit(f"cannot list {commit[:10]}:{path} in {repo}")
    return sorted(p for p in res.stdout.decode().split("\0") if p)


def est_tokens(text: str | None) -> int:
    return max(1, int(round(len(text or "") / 4)))


def write_jsonl_gz(path: str, rows: list[dict]) -> None:
    body = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False,
                              separators=(",", ":")) + "\n" for r in rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0,
                       compresslevel=9) as gz:
        gz.write(body.encode("utf-8"))
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------- MMLU-Pro --

def load_mmlu_run(repo: str, commit: str, kind: str, path: str) -> list[dict]:
    if kind == "zip":
        zf = zipfile.ZipFile(io.BytesIO(git_show(repo, commit, path)))
        names = [n for n in zf.namelist() if n.endswith(".json")]
        if len(names) != 1:
            raise SystemExit(f"{path}: expected one JSON member, got {names}")
        return json.loads(zf.read(names[0]))
    records = []
    for p in git_ls(repo, commit, path):
        if p.endswith("_result.json"):
            records.extend(json.loads(git_show(repo, commit, p)))
    return records


def parse_options(opts) -> list[str]:
    if isinstance(opts, str):
        opts = ast.literal_eval(opts)
    return [str(o) for o in opts]


def output_text(rec: dict) -> str:
    for k in ("generated_text", "model_outputs", "response"):
        if k in rec:
            return rec[k] or ""
    raise KeyError("no output text field in record")


def score_mmlu(rec: dict) -> tuple[int, str]:
    """Return (score, status) with status ok / no_pred / no_letter."""
    pred = rec.get("pred")
    if pred in (None, ""):
        return 0, "no_pred"
    if not ANY_LETTER.search(output_text(rec)):
        # No option letter anywhere in the output, so the source's pred is not
        # the model's choice (a random fill-in, or a regex hit on the first
        # letter of a word): count it as a parse failure.
        return 0, "no_letter"
    return int(pred == rec["answer"]), "ok"


def build_mmlu(repo: str, sample: int) -> list[dict]:
    print(f"== MMLU-Pro  ({repo})")
    runs: dict[str, dict[str, dict]] = {}
    for key, tier, commit, kind, path in MMLU_MODELS:
        recs = load_mmlu_run(repo, commit, kind, path)
        by_id = {}
        for r in recs:
            by_id[str(r["question_id"])] = r
        if len(by_id) != len(recs):
            print(f"  warning: {key}: {len(recs) - len(by_id)} duplicate ids")
        runs[key] = by_id
        stat = Counter(score_mmlu(r)[1] for r in recs)
        lucky = sum(1 for r in recs if score_mmlu(r)[1] == "no_letter"
                    and r["pred"] == r["answer"])
        full_acc = mean(score_mmlu(r)[0] for r in recs)
        src_acc = mean(int(r.get("pred") == r["answer"]) for r in recs)
        # the README leaderboard convention: a missing pred counts as a 1/10 guess
        lb_acc = src_acc + 0.1 * stat["no_pred"] / len(recs)
        readme = MMLU_README_ACCURACY.get(key)
        print(f"  {key:18s} {tier:6s} full run: {len(recs):5d} records, "
              f"acc {100 * full_acc:5.2f}% (source pred==answer {100 * src_acc:5.2f}%, "
              f"with 1/10 guess for missing pred {100 * lb_acc:5.2f}%"
              + (f", README {readme:.2f}%" if readme is not None else "")
              + f"); pred missing {stat['no_pred']}, pred without any option letter in the"
              f" output {stat['no_letter']} (of which pred==answer by chance {lucky})")

    keys = [m[0] for m in MMLU_MODELS]
    common = set.intersection(*(set(r) for r in runs.values()))
    eligible, revised = [], 0
    for qid in common:
        sigs = set()
        for k in keys:
            r = runs[k][qid]
            sigs.add((r["question"].strip(), tuple(o.strip() for o in parse_options(r["options"])),
                      r["answer"], r["category"]))
        if len(sigs) == 1:
            eligible.append(qid)
        else:
            revised += 1
    print(f"  questions in every run: {len(common)}; differing question/options/answer "
          f"between runs (dataset revisions, excluded): {revised}; eligible: {len(eligible)}")

    eligible.sort(key=lambda q: (hashlib.sha1(q.encode()).hexdigest(), q))
    chosen = eligible[:sample]
    rows = []
    for qid in chosen:
        r0 = runs[keys[0]][qid]
        opts = parse_options(r0["options"])
        letters = "ABCDEFGHIJKLMNOP"
        text = (r0["question"].strip() + "\n\nOptions:\n"
                + "\n".join(f"{letters[i]}. {o.strip()}" for i, o in enumerate(opts)))
        outcomes = {}
        for k in keys:
            rec = runs[k][qid]
            outcomes[k] = {"score": score_mmlu(rec)[0],
                           "out_tokens": est_tokens(output_text(rec))}
        rows.append({"id": f"mmlu-pro/{qid}", "task": "qa",
                     "category": r0["category"], "text": text,
                     "outcomes": outcomes, "_src": r0.get("src", "")})
    rows.sort(key=lambda row: row["id"])

    print(f"  sample: {len(rows)} questions (first {sample} by sha1(question_id))")
    srcs = Counter(row["_src"].split("-")[0] for row in rows)
    print("  sample by source: " + ", ".join(f"{s} {n}" for s, n in sorted(srcs.items())))
    tiers = {m[0]: m[1] for m in MMLU_MODELS}
    sample_means = {}
    for k in keys:
        sc = [row["outcomes"][k]["score"] for row in rows]
        ot = [row["outcomes"][k]["out_tokens"] for row in rows]
        sample_means[k] = mean(sc)
        parse_fail = sum(1 for row in rows
                         if score_mmlu(runs[k][row["id"].split("/", 1)[1]])[1] != "ok")
        print(f"  {k:18s} {tiers[k]:6s} items {len(sc)}  mean score {mean(sc):.4f}  "
              f"mean out_tokens {mean(ot):7.1f}  parse failures {parse_fail}")

    tiny = next(m[0] for m in MMLU_MODELS if m[1] == "tiny")
    best_cloud = max((m[0] for m in MMLU_MODELS if m[1] == "cloud"),
                     key=lambda k: sample_means[k])
    cats = sorted({row["category"] for row in rows})
    print(f"  per-category accuracy in the sample: {tiny} (tiny) vs {best_cloud} (best cloud)")
    for c in cats:
        sub = [row for row in rows if row["category"] == c]
        a = mean(row["outcomes"][tiny]["score"] for row in sub)
        b = mean(row["outcomes"][best_cloud]["score"] for row in sub)
        print(f"    {c:18s} n={len(sub):4d}  {tiny} {a:.3f}  {best_cloud} {b:.3f}")
    for row in rows:
        del row["_src"]
    return rows


# -------------------------------------------------------------- AlpacaEval --

def load_annotations(repo: str, model_dir: str) -> list[dict]:
    path = f"results/{model_dir}/{ANNOTATOR}/annotations.json"
    return json.loads(git_show(repo, ALPACA_EVAL_COMMIT, path))


def read_leaderboard(repo: str) -> dict[str, dict[str, str]]:
    import csv
    text = git_show(repo, ALPACA_EVAL_COMMIT, ALPACA_LEADERBOARD).decode()
    rows = list(csv.reader(io.StringIO(text)))
    head = rows[0]
    return {r[0]: dict(zip(head[1:], r[1:])) for r in rows[1:]}


def build_alpaca(repo: str) -> list[dict]:
    print(f"== AlpacaEval 2.0  ({repo})")
    per_model: dict[str, dict[str, dict]] = {}
    meta: dict[str, tuple[str, str]] = {}     # instruction -> (dataset, reference output)
    leaderboard = read_leaderboard(repo)
    for key, tier, model_dir in ALPACA_MODELS:
        ann = load_annotations(repo, model_dir)
        outs = json.loads(git_show(repo, ALPACA_EVAL_COMMIT,
                                   f"results/{model_dir}/model_outputs.json"))
        out_by_ins = {o["instruction"]: o["output"] for o in outs}
        got, bad_pref, mism = {}, 0, 0
        for a in ann:
            if a.get("generator_1") != REFERENCE_DIR:
                raise SystemExit(f"{model_dir}: unexpected reference {a.get('generator_1')}")
            p = a.get("preference")
            try:
                p = float(p)
            except (TypeError, ValueError):
                p = float("nan")
            if math.isnan(p):
                bad_pref += 1
                continue
            ins = a["instruction"]
            if out_by_ins.get(ins) != a["output_2"]:
                mism += 1
            prev = meta.setdefault(ins, (a["dataset"], a["output_1"]))
            if prev != (a["dataset"], a["output_1"]):
                raise SystemExit(f"reference output/dataset differs across files for {ins[:60]!r}")
            got[ins] = {"score": round(min(1.0, max(0.0, p - 1.0)), 6),
                        "out_tokens": est_tokens(a["output_2"])}
        per_model[key] = got
        lb = leaderboard.get(model_dir, {})
        wr_full = mean(v["score"] for v in got.values())
        print(f"  {key:22s} {tier:6s} full file: {len(ann)} annotations, {bad_pref} without "
              f"preference, {mism} differing from model_outputs.json; win rate "
              f"{100 * wr_full:.2f}% (leaderboard win_rate {float(lb.get('win_rate', 'nan')):.2f}, "
              f"LC {float(lb.get('length_controlled_winrate', 'nan')):.2f})")

    # The reference against itself: 0.5 by definition; verify against the
    # source's own self-comparison file when it is present.
    try:
        self_ann = load_annotations(repo, REFERENCE_DIR)
        n15 = sum(1 for a in self_ann if float(a["preference"]) == 1.5)
        print(f"  {REFERENCE_KEY:22s} cloud  source self-comparison "
              f"results/{REFERENCE_DIR}: {n15}/{len(self_ann)} annotations have preference 1.5")
    except SystemExit:
        print(f"  {REFERENCE_KEY}: no self-comparison file in the source; 0.5 by definition")

    common = set.intersection(*(set(v) for v in per_model.values()))
    rows, ids = [], set()
    for ins in common:
        dataset, ref_out = meta[ins]
        rid = "alpaca-eval/" + hashlib.sha1(ins.encode("utf-8")).hexdigest()[:12]
        if rid in ids:
            raise SystemExit(f"id collision {rid}")
        ids.add(rid)
        outcomes = {k: per_model[k][ins] for k in per_model}
        outcomes[REFERENCE_KEY] = {"score": 0.5, "out_tokens": est_tokens(ref_out)}
        rows.append({"id": rid, "task": "draft", "category": dataset,
                     "text": ins, "outcomes": outcomes})
    rows.sort(key=lambda row: row["id"])
    print(f"  instructions annotated for every chosen model: {len(rows)}")
    print("  by dataset: " + ", ".join(f"{d} {n}" for d, n in
                                       sorted(Counter(r['category'] for r in rows).items())))
    tiers = {m[0]: m[1] for m in ALPACA_MODELS}
    tiers[REFERENCE_KEY] = "cloud"
    for k in [m[0] for m in ALPACA_MODELS] + [REFERENCE_KEY]:
        sc = [r["outcomes"][k]["score"] for r in rows]
        ot = [r["outcomes"][k]["out_tokens"] for r in rows]
        print(f"  {k:22s} {tiers[k]:6s} items {len(sc)}  mean score {mean(sc):.4f}  "
              f"mean out_tokens {mean(ot):7.1f}")
    return rows


# -------------------------------------------------------------------- main --

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mmlu-pro-repo", default=DEFAULT_MMLU_PRO_REPO)
    ap.add_argument("--alpaca-eval-repo", default=DEFAULT_ALPACA_EVAL_REPO)
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("--mmlu-sample", type=int, default=4000,
                    help="number of MMLU-Pro questions to keep (default 4000)")
    args = ap.parse_args(argv)

    mmlu = build_mmlu(args.mmlu_pro_repo, args.mmlu_sample)
    p = os.path.join(args.out_dir, "mmlu_pro_outcomes.jsonl.gz")
    write_jsonl_gz(p, mmlu)
    print(f"  wrote {p}: {len(mmlu)} lines, {os.path.getsize(p)} bytes")

    alpaca = build_alpaca(args.alpaca_eval_repo)
    p = os.path.join(args.out_dir, "alpaca_eval_outcomes.jsonl.gz")
    write_jsonl_gz(p, alpaca)
    print(f"  wrote {p}: {len(alpaca)} lines, {os.path.getsize(p)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
