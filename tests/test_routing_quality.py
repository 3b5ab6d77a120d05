"""benchmarks/routing_quality.py on the real MMLU-Pro outcomes (a few hundred questions, one
split): every policy through the hub's dispatcher, the figures' shape and the relations that
must hold whatever the numbers (the oracle bounds everyone, random copies sovereign's shares),
and bad tables refused with their line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "routing_quality.py"
NAMES = {"always-cloud", "seed-rules", "local-first", "sovereign", "sovereign-cues", "random", "oracle"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_every_policy_on_real_outcomes() -> None:
    out = run("--limit", "300", "--splits", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    policies = result["policies"]
    assert set(policies) == NAMES
    for p in policies.values():
        assert {"quality", "cost", "gco2", "kwh", "cloud_share", "gap_recovered"} <= set(p)
    split = result["splits"][0]
    assert split["test"] == 90 and split["fit"] + split["validation"] + split["test"] == 300
    assert policies["always-cloud"]["cloud_share"] == 100 and policies["local-first"]["cloud_share"] == 0
    assert all(policies["oracle"]["quality"] >= p["quality"] for p in policies.values())
    by = split["policies"]
    assert by["random"]["models"] == by["sovereign"]["models"], "the random router copies sovereign's shares"
    assert sum(by["sovereign"]["models"].values()) + by["sovereign"]["unanswered"] == 90
    assert set(result["summary"]["auc"]) == {"phi-3-mini", "llama-3.1-8b", "llama-3.1-70b", "gpt-4o"}


def test_a_bad_table_is_refused_with_its_line(tmp_path: Path) -> None:
    good = {"id": "q1", "task": "qa", "category": "x", "text": "why?",
            "outcomes": {"phi-3-mini": {"score": 1, "out_tokens": 10}}}
    cases = {"score": {**good, "outcomes": {"phi-3-mini": {"score": 2, "out_tokens": 10}}},
             "task": {**good, "task": "dance"},
             "no outcomes": {**good, "outcomes": {}}}
    for name, bad in cases.items():
        table = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(table, "wt") as f:
            f.write(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        out = run("--table", str(table), "--splits", "1")
        assert out.returncode == 2 and f"{table}:2:" in out.stderr, (name, out.stderr)
    table = tmp_path / "unscored.jsonl.gz"
    with gzip.open(table, "wt") as f:
        f.write(json.dumps(good) + "\n")
    out = run("--table", str(table))
    assert out.returncode == 2 and "no outcomes of the fleet's gpt-4o, llama-3.1-70b, llama-3.1-8b" in out.stderr
