"""Memory: the local semantic index's query speed and recall at 100,000 chunks, indexing through
the fleet, the semantic cache's threshold, and retrieval quality on the Ollama docs.

    .venv/bin/python benchmarks/memory.py [--chunks 100000] [--edits 10] [--quick] [--json]

The data is benchmarks/data/memory/ (its README.md says where each file comes from): 33 Markdown
files of the Ollama documentation (``corpus/ollama-docs/``), 80 questions each labelled with the
file and a verbatim answer span (``retrieval.jsonl``), 2,000 labelled PAWS-Wiki sentence pairs
(``paraphrase.jsonl``). Every embedding is the bundled all-MiniLM-L6-v2 (int8 ONNX,
hub/memory/embedder.py) on one thread, in this process unless said otherwise. The corpus is
chunked with ``chunk_markdown`` (max_chars 1200, the vault's) and embedded once, in batches of 32
(timed: the direct baseline of part 2), and those vectors serve parts 1 and 4.

1. ``index_100k``: a MemoryStore in a temporary file holding ``--chunks`` chunks (100,000;
   ``--quick`` 10,000): the corpus's real chunks, then synthetic ones, written with
   ``store.replace`` one synthetic file of 20 chunks at a time (timed: the build), then the store
   closed and opened again as a restarted hub opens it (timed: its vectors are read into the
   in-memory index). A synthetic chunk's text is a heading and sentences of 2-3 random real
   chunks, shuffled, up to the length of another random real chunk (so FTS5 sees real words and
   real lengths); its vector is w·a + (1-w)·b + n normalised, a and b the vectors of two of those
   real chunks, w uniform in [0.3, 0.7], n Gaussian with σ = 0.45/√384 per component (‖n‖ ≈ 0.45).
   σ was chosen so that a chunk's nearest other chunk is as close as in the real corpus: median
   top-1 cosine 0.77 (p10 0.71, p90 0.83) against 0.78 (0.64, 0.92) among the real chunks;
   ``nn_cosine`` reports it for each run. Queries: the 80 questions and the same questions with
   their words reversed (160). Each is timed as the hub's query path on its CPU:
   ``embedder.embed([q])`` then ``search(store, q, vec, 10)`` (hybrid: nearest vectors and FTS5
   BM25, fused by reciprocal rank, the chunks read back): p50/p95; and the same with the
   vector-only search (``hybrid=False``) in its place. Also alone: the embedding, the hybrid
   search, the vector-only search, ``store.nearest`` and ``store.keyword`` with the search's pool
   of 50. Recall@10: the ids of ``store.nearest(vec, 10)``
   against an exact top 10 computed here in float64 over the vectors read back from SQLite
   (``store.vectors(store.all_ids())``), mean over the 160 queries. The synthetic texts draw
   every word from the corpus's 528 chunks, so a query's words match far more of them than they
   would of 100,000 real, varied notes: the keyword side's time here is on the pessimistic side.
2. ``indexing``: Mosquitto, a hub and one ``laptop`` agent (the real minilm-l6-v2 of its
   profile, runtime onnx) as benchmarks/rpc.py starts them. The hub's config (a TOML file in a
   temporary directory) has ``[memory] deadline_s = 0`` (batches run at once),
   ``scan_interval_s = 3600`` and one vault, a temporary directory that is empty when the hub
   starts (its start-up scan finds nothing). Once the agent is online the corpus is copied into
   the vault (``.mdx`` files as ``.md``: a vault indexes ``*.md`` only; the chunks are the same)
   and the clock starts at ``POST /api/memory/reindex``; it stops when ``GET /api/memory``
   (polled every 20 ms) shows the source ``idle`` with every chunk stored. So the time is the
   scan, the chunking, the batches of 32 as ``embed`` tasks through the dispatcher to the agent
   (its first call loads its model, ~0.3 s), the hub's check of one vector per batch, and the
   writes. Joules: the ``embed`` tasks' joules in the ledger (``GET /api/costs``, today, by
   task; after minus before): the agent's estimate, the profile's marginal power (active_w -
   idle_w) times each call's wall time, so calls run side by side are each charged in full.
   hub/direct: the hub's chunks/s over the direct baseline's. A source that fails (a batch timed
   out: the dispatcher gives an attempt 3 × the model's predicted p95) would be retried by the
   hub at its next scan, an hour later here; the benchmark asks for that scan at once, with the
   clock running, up to 3 times, and lists the errors (``retries``).
   Incremental: ``--edits`` times (10; ``--quick`` 3), a new section (a heading and one unique
   sentence) is appended to the median-sized note, ``POST /api/memory/reindex?source=…``, and
   ``GET /api/search?q=<the sentence>`` is polled every 20 ms until the top hit is a chunk of that
   note holding the sentence's line; timed from before the write. The sentence gets its own
   heading so that it is its own chunk: appended to a long paragraph, it could rank below the
   top on vector similarity and lose the reciprocal-rank tie. Only the chunks whose text changed
   are embedded again (the indexer keeps the others' vectors).
3. ``semantic_cache``: the cosine of every paraphrase pair (each side as the cache embeds it:
   ``question_text``, its words without punctuation), and whether the words the two share
   come in the same order (``hub.memory.semantic.same_order``): the cache answers only when both
   hold. On the tune split the threshold is the lowest cosine (a multiple of 0.001) at which the
   false-hit rate (the share of pairs of different meaning the cache would answer) is ≤ 1 %; on
   the test split, at that threshold and at the configured default
   (``SemanticCacheConfig().threshold``): the hit rate (pairs of the same meaning answered) and
   the false-hit rate; the same on the tune split. For comparison, the cosine alone (tuned the
   same way) and its equal-error threshold.
4. ``retrieval``: the corpus in a fresh in-memory MemoryStore (its chunks and vectors, one
   ``store.replace`` per file, as the indexer writes them); each of the 80 questions searched
   hybrid (``search``), vector-only (``hybrid=False``) and keyword-only (``store.keyword``). A
   hit is a chunk of the labelled file whose text contains the answer or whose line range covers
   the answer's line in the file. MRR@10 (1/rank of the first hit, 0 if none in the top 10),
   recall@10 (share of questions with a hit in the top 10), hit@1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, Broker, emit, summary  # noqa: E402
from hub.memory.chunk import Chunk, chunk_markdown  # noqa: E402
from hub.memory.config import MemoryConfig, SemanticCacheConfig  # noqa: E402
from hub.memory.semantic import question_text, same_order  # noqa: E402
from hub.memory.embedder import Embedder, load  # noqa: E402
from hub.memory.search import query, search  # noqa: E402
from hub.memory.sources import FileState  # noqa: E402
from hub.memory.store import MemoryStore, StoredChunk  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "memory"
CORPUS = DATA / "corpus" / "ollama-docs"
RETRIEVAL = DATA / "retrieval.jsonl"
PARAPHRASE = DATA / "paraphrase.jsonl"
TRACE = ROOT / "examples" / "trace.jsonl"
QA_TTL_S = 3600.0  # [router.cache] ttl_s for qa (hub/router/cache.py DEFAULT_TTL)
MAX_CHARS = 1200  # the vault's chunk size (VaultSource)
BATCH = 32  # chunks per embed task (MemoryConfig.batch_size)
K = 10
POOL = 50  # what search() asks each side for at k = 10 (hub/memory/search.py)
SIGMA = 0.45
MIX = (0.3, 0.7)
FILE_CHUNKS = 20
SEED = 0
SOURCE = "docs"
POLL_S = 0.02
#: A source in error is scanned again at once this many times before the benchmark gives up.
MAX_RETRIES = 3
FALSE_HIT_MAX = 0.01
#: store.vectors asks for its ids in one statement; SQLite builds allow 32,766 (or 250,000) variables.
READ_SLICE = 30_000

Log = Callable[[str], None]


# -- data -----------------------------------------------------------------------------------------


def corpus_files() -> list[tuple[str, str]]:
    """(path relative to the corpus, text), in path order."""
    return [(p.relative_to(CORPUS).as_posix(), p.read_text(encoding="utf-8"))
            for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.suffix in (".md", ".mdx")]


def corpus_chunks(files: list[tuple[str, str]]) -> list[Chunk]:
    return [c for path, text in files for c in chunk_markdown(path, text, MAX_CHARS).chunks]


def retrieval_items(files: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The labelled questions, each with ``line``: the 1-based line of its answer in its file."""
    texts = dict(files)
    items = []
    for raw in RETRIEVAL.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            item = json.loads(raw)
            text = texts[item["path"]]
            item["line"] = text[:text.index(item["answer"])].count("\n") + 1
            items.append(item)
    return items


def embed_all(embedder: Embedder, texts: Sequence[str], batch: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    m = np.concatenate([embedder.embed(texts[i:i + batch]) for i in range(0, len(texts), batch)])
    return m, time.perf_counter() - t0


def state_of(text: str) -> FileState:
    data = text.encode()
    return FileState(0, len(data), hashlib.sha256(data).hexdigest())


def fill_store(store: MemoryStore, files: list[tuple[str, str]], chunks: list[Chunk], vectors: np.ndarray) -> None:
    """The corpus's chunks, one ``replace`` per file, as the indexer writes a document."""
    at = 0
    for path, text in files:
        n = sum(1 for c in chunks[at:] if c.path == path)
        store.replace(SOURCE, path, state_of(text), chunks[at:at + n], vectors[at:at + n], time.time())
        at += n


def is_hit(c: StoredChunk, item: dict[str, Any]) -> bool:
    return c.source == SOURCE and c.path == item["path"] and (
        item["answer"] in c.text or c.line_start <= item["line"] <= c.line_end)


def rank_of(hits: Sequence[StoredChunk], item: dict[str, Any]) -> int | None:
    return next((r for r, c in enumerate(hits[:K], 1) if is_hit(c, item)), None)


def quality(ranks: list[int | None]) -> dict[str, Any]:
    n = len(ranks)
    return {"n": n, "mrr_at_10": sum(1 / r for r in ranks if r) / n, "recall_at_10": sum(1 for r in ranks if r) / n,
            "hit_at_1": sum(1 for r in ranks if r == 1) / n}


def ms(seconds: list[float]) -> dict[str, float]:
    return summary([s * 1000 for s in seconds])


# -- 1. the index at 100,000 chunks ---------------------------------------------------------------------


_SENTENCE = re.compile(r"(?<=[.!?:])\s+|\n+")


def synthetic(real: list[Chunk], vectors: np.ndarray, n: int, rng: random.Random,
              gen: np.random.Generator) -> tuple[list[Chunk], np.ndarray]:
    """``n`` synthetic chunks (see the module's docstring), in files of FILE_CHUNKS."""
    sentences = [[s for s in _SENTENCE.split(c.text.split("\n", 1)[-1]) if s.strip()] or [c.text] for c in real]
    lengths = [len(c.text) for c in real]
    picks = [rng.sample(range(len(real)), rng.choice((2, 3))) for _ in range(n)]
    a = np.array([p[0] for p in picks])
    b = np.array([p[1] for p in picks])
    w = gen.uniform(*MIX, (n, 1)).astype(np.float32)
    m = w * vectors[a] + (1 - w) * vectors[b]
    m += gen.standard_normal((n, vectors.shape[1]), dtype=np.float32) * np.float32(SIGMA / np.sqrt(vectors.shape[1]))
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    chunks = []
    for i, p in enumerate(picks):
        pool = [s for j in p for s in sentences[j]]
        rng.shuffle(pool)
        target = rng.choice(lengths)
        body: list[str] = []
        size = 0
        for s in pool:
            if body and size + len(s) > target:
                break
            body.append(s)
            size += len(s) + 1
        head = real[p[0]].heading or real[p[0]].text.split("\n", 1)[0]
        line = (i % FILE_CHUNKS) * 10 + 1
        chunks.append(Chunk(f"synthetic/{i // FILE_CHUNKS:05d}.md", "note", head, line, line + 9,
                            f"{head}\n{' '.join(body)}"[:MAX_CHARS]))
    return chunks, m.astype(np.float32)


def read_vectors(store: MemoryStore) -> tuple[list[int], np.ndarray]:
    ids = store.all_ids()
    return ids, np.concatenate([store.vectors(ids[i:i + READ_SLICE]) for i in range(0, len(ids), READ_SLICE)])


def index_100k(n_total: int, embedder: Embedder, files: list[tuple[str, str]], chunks: list[Chunk],
               vectors: np.ndarray, items: list[dict[str, Any]], tmp: Path, log: Log) -> dict[str, Any]:
    n_synth = max(0, n_total - len(chunks))
    rng, gen = random.Random(SEED), np.random.default_rng(SEED)
    t0 = time.perf_counter()
    syn, syn_vectors = synthetic(chunks, vectors, n_synth, rng, gen)
    gen_s = time.perf_counter() - t0
    log(f"  {n_synth} synthetic chunks made in {gen_s:.1f} s; writing them")
    path = tmp / "index.sqlite3"
    store = MemoryStore(path, embedder.name, embedder.fingerprint, embedder.dim)
    t0 = time.perf_counter()
    fill_store(store, files, chunks, vectors)
    now = time.time()
    for f in range(0, n_synth, FILE_CHUNKS):
        part = syn[f:f + FILE_CHUNKS]
        store.replace("synthetic", part[0].path, FileState(0, 0, f"{f:064x}"), part, syn_vectors[f:f + FILE_CHUNKS], now)
    insert_s = time.perf_counter() - t0
    stored = store.stats()["chunks"]
    store.close()
    del store, syn, syn_vectors
    db_mb = sum(p.stat().st_size for p in tmp.glob("index.sqlite3*")) / 1e6
    log(f"  {stored} chunks written in {insert_s:.1f} s; opening the store again")
    t0 = time.perf_counter()
    store = MemoryStore(path, embedder.name, embedder.fingerprint, embedder.dim)
    open_s = time.perf_counter() - t0
    try:
        queries = [it["q"] for it in items] + [" ".join(reversed(it["q"].split())) for it in items]
        for q in ("warm up the model", "how do I warm up", *queries[:3]):  # first calls: allocations, page cache
            search(store, q, embedder.embed([q])[0], K)
        t = {k: [] for k in ("query", "embed", "search", "vector_search", "nearest", "keyword")}
        found: list[list[int]] = []
        qvecs = []
        for q in queries:
            # The hub's query path (Memory.search): the keyword side starts while the query is embedded.
            t0 = time.perf_counter()
            vec, _ = query(store, q, lambda text: embedder.embed([text])[0], K)
            t["query"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            embedder.embed([q])
            t["embed"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            search(store, q, vec, K)
            t["search"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            search(store, q, vec, K, hybrid=False)
            t["vector_search"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.nearest(vec, POOL)
            t["nearest"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.keyword(q, POOL)
            t["keyword"].append(time.perf_counter() - t0)
            found.append([i for i, _ in store.nearest(vec, K)])
            qvecs.append(vec)
        log("  exact top 10 in float64 over the stored vectors")
        t0 = time.perf_counter()
        ids, m = read_vectors(store)
        read_s = time.perf_counter() - t0
        q64 = np.asarray(qvecs, dtype=np.float64)
        scores = np.empty((len(queries), len(ids)), dtype=np.float64)
        for s in range(0, len(ids), 20_000):
            scores[:, s:s + 20_000] = q64 @ m[s:s + 20_000].astype(np.float64).T
        id_arr = np.asarray(ids)
        recall = []
        for row, got in zip(scores, found):
            exact = set(id_arr[np.argpartition(-row, K - 1)[:K]].tolist())
            recall.append(len(exact & set(got)) / K)
        top1 = scores.max(axis=1)
        sample = np.random.default_rng(SEED + 1).choice(len(ids), min(300, len(ids)), replace=False)
        nn = m[sample] @ m.T
        nn[np.arange(len(sample)), sample] = -1
        nn_top = nn.max(axis=1)
    finally:
        store.close()
    return {"chunks": stored, "real_chunks": len(chunks), "synthetic_chunks": n_synth, "sigma": SIGMA,
            "build": {"generate_s": gen_s, "insert_s": insert_s, "insert_chunks_per_s": stored / insert_s,
                      "files": len(files) + -(-n_synth // FILE_CHUNKS), "open_s": open_s, "db_mb": db_mb,
                      "read_vectors_s": read_s},
            "nn_cosine": {"p10": float(np.percentile(nn_top, 10)), "p50": float(np.percentile(nn_top, 50)),
                          "p90": float(np.percentile(nn_top, 90)), "sample": len(sample)},
            "query_top1_cosine": {"p10": float(np.percentile(top1, 10)), "p50": float(np.percentile(top1, 50)),
                                  "p90": float(np.percentile(top1, 90))},
            "queries": len(queries),
            "query_ms": ms(t["query"]), "embed_ms": ms(t["embed"]), "search_ms": ms(t["search"]),
            "vector_query_ms": ms([e + v for e, v in zip(t["embed"], t["vector_search"])]),
            "vector_search_ms": ms(t["vector_search"]), "nearest_ms": ms(t["nearest"]), "keyword_ms": ms(t["keyword"]),
            "recall_at_10": float(np.mean(recall)), "recall_at_10_min": float(np.min(recall))}


# -- 2. indexing through the fleet ----------------------------------------------------------------------


def http(api: str, path: str, method: str = "GET", timeout: float = 10) -> Any:
    req = urllib.request.Request(f"{api}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def source_status(api: str) -> dict[str, Any]:
    return next(s for s in http(api, "/api/memory")["sources"] if s["name"] == SOURCE)


def embed_ledger(api: str) -> dict[str, Any]:
    return http(api, "/api/costs")["today"]["by_task"].get("embed", {"count": 0, "joules": 0.0})


def start_memory_hub(broker: Broker, tmp: Path, vault: Path) -> tuple[subprocess.Popen[bytes], str]:
    from benchmarks.rpc import start_hub
    return start_hub(broker, tmp, "bench-memory", sections=(
        f'[memory]\ndeadline_s = 0\nscan_interval_s = 3600\n[[memory.vaults]]\nname = "{SOURCE}"\npath = "{vault}"\n'))


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def indexing(files: list[tuple[str, str]], direct_chunks_per_s: float, n_edits: int, tmp: Path,
             log: Log) -> dict[str, Any]:
    from benchmarks.rpc import device_login, start_agent, wait_online
    vault = tmp / "vault"
    vault.mkdir()
    copies = [(re.sub(r"\.mdx$", ".md", p), t) for p, t in files]
    expected = len(corpus_chunks(copies))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Broker() as broker:
            laptop = device_login(broker, "laptop")
            hub, api = start_memory_hub(broker, tmp, vault)
            procs.append(hub)
            agent, agent_id = start_agent(broker, laptop, "laptop")
            procs.append(agent)
            wait_online(api, [agent_id])
            wait_for("the start-up scan of the empty vault",
                     lambda: (s := source_status(api))["state"] == "idle" and s["last_scan"] is not None, 60)
            for p, t in copies:
                (vault / p).parent.mkdir(parents=True, exist_ok=True)
                (vault / p).write_text(t, encoding="utf-8")
            before = embed_ledger(api)
            batches0 = source_status(api)["batches"]["done"]
            retries: list[str] = []
            retried_scans: set[Any] = set()

            def status() -> dict[str, Any]:
                """The source's status; a source in error is asked to scan again at once (what the
                hub does at its next scan, scan_interval_s later), at most MAX_RETRIES times."""
                s = source_status(api)
                if s["state"] == "gone":
                    raise SystemExit(f"the vault is gone: {s['error']}")
                if s["state"] == "error" and s["last_scan"] not in retried_scans:
                    if len(retries) >= MAX_RETRIES:
                        raise SystemExit(f"indexing failed {len(retries) + 1} times; the last: {s['error']}")
                    retried_scans.add(s["last_scan"])
                    retries.append(s["error"])
                    log(f"  the source failed ({s['error']}); asking for a scan again")
                    http(api, f"/api/memory/reindex?source={SOURCE}", "POST")
                return s

            log(f"  indexing {expected} chunks of {len(copies)} notes through the laptop agent")
            t0 = time.perf_counter()
            http(api, f"/api/memory/reindex?source={SOURCE}", "POST")
            first_embedding: list[float] = []

            def done() -> dict[str, Any] | None:
                s = status()
                if s["state"] == "embedding" and not first_embedding:
                    first_embedding.append(time.perf_counter() - t0)
                return s if s["state"] == "idle" and s["chunks"] >= expected else None

            final = wait_for("the corpus to be indexed", done, 300)
            seconds = time.perf_counter() - t0
            index_retries, retries = retries, []
            batches = final["batches"]["done"] - batches0
            after = wait_for("the ledger's embed rows",
                             lambda: (e := embed_ledger(api))["count"] - before["count"] >= batches and e, 10)
            joules = after["joules"] - before["joules"]
            chunks = final["chunks"]
            log(f"  {chunks} chunks in {seconds:.1f} s; {n_edits} incremental edits")
            note = sorted(copies, key=lambda pt: len(pt[1].encode()))[len(copies) // 2][0]
            note_chunks = sum(1 for c in corpus_chunks([(note, dict(copies)[note])]))
            edit_s, missed = [], []
            rng = random.Random(SEED)
            for i in range(n_edits):
                token = f"{rng.getrandbits(32):08x}"
                sentence = (f"During benchmark edit {i} the {rng.choice(_COLOURS)} heron counted {rng.randint(1000, 9999)} "
                            f"lanterns on the {rng.choice(_PLACES)} pier ({token}).")
                path = vault / note
                old = path.read_text(encoding="utf-8")
                addition = f"\n\n## Benchmark edit {i} {token}\n\n{sentence}\n"
                line = (old + addition).count("\n")  # the sentence's line: the last one
                q = urllib.parse.quote(sentence)
                polls = 0
                t0 = time.perf_counter()
                with path.open("a", encoding="utf-8") as f:
                    f.write(addition)
                http(api, f"/api/memory/reindex?source={SOURCE}", "POST")

                def top_hit() -> bool:
                    nonlocal polls
                    polls += 1
                    if polls % 10 == 0:
                        status()
                    res = http(api, f"/api/search?q={q}&k=1")["results"]
                    return bool(res) and res[0]["path"] == note and res[0]["line_start"] <= line <= res[0]["line_end"]

                try:
                    wait_for("the edit to be searchable", top_hit, 30)
                    edit_s.append(time.perf_counter() - t0)
                except SystemExit:
                    missed.append(i)
                wait_for("the source to be idle", lambda: status()["state"] == "idle", 60)
            last_batch = source_status(api)["last_batch"]
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    rate = chunks / seconds
    return {"chunks": chunks, "notes": len(copies), "seconds": seconds, "chunks_per_s": rate,
            "scan_s": first_embedding[0] if first_embedding else None, "batches": batches,
            "joules": joules, "j_per_1000_chunks": joules / chunks * 1000,
            "direct_chunks_per_s": direct_chunks_per_s, "hub_over_direct": rate / direct_chunks_per_s,
            "served_by": (last_batch or {}).get("served_by"), "retries": index_retries,
            "incremental": {"note": note, "note_chunks": note_chunks, "edits": n_edits, "missed": missed,
                            "retries": retries,
                            "seconds": summary(edit_s), "ms": ms(edit_s)}}


_COLOURS = ("amber", "cobalt", "scarlet", "olive", "violet", "silver", "ochre", "teal", "crimson", "ivory")
_PLACES = ("northern", "eastern", "harbour", "old", "windswept", "quiet", "stone", "wooden", "lower", "far")


# -- 3. the semantic cache's threshold --------------------------------------------------------------------


def rates(cos: np.ndarray, same: np.ndarray, t: float, guard: np.ndarray) -> dict[str, float]:
    """What the cache does at threshold ``t``: a hit needs the cosine and the word-order guard."""
    hit = (cos >= t) & guard
    return {"hit_rate": float(hit[same].mean()), "false_hit_rate": float(hit[~same].mean())}


def trace_savings(embedder: Embedder, threshold: float) -> dict[str, Any]:
    """The example trace's qa requests (examples/trace.jsonl) in order, with each task's cache
    lifetime (an hour for qa): how many the exact cache answers (the same normalised text, as
    hub/router/cache.py), and how many more the semantic cache would (an earlier question still
    kept, at or above ``threshold`` and in the same word order)."""
    rows = [json.loads(line) for line in TRACE.read_text(encoding="utf-8").splitlines() if line.strip()]
    asks = [(float(r["t"]), r["text"]) for r in rows if r.get("task") == "qa" and r.get("text")]
    texts = sorted({t for _, t in asks})
    vec = dict(zip(texts, embedder.embed([question_text(t) for t in texts])))
    kept: dict[str, float] = {}  # normalised text -> when it was answered
    exact = semantic = 0
    for at, text in asks:
        key = " ".join(text.casefold().split())
        live = {k: t for k, t in kept.items() if at - t < QA_TTL_S}
        if key in live:
            exact += 1
            continue
        if any(float(vec[k] @ vec[text]) >= threshold and same_order(k, text) for k in originals(live, texts)):
            semantic += 1
            continue
        kept[key] = at
    return {"qa_requests": len(asks), "distinct_questions": len(texts), "exact_hits": exact, "semantic_hits": semantic,
            "max_cosine_between_questions": float(max((vec[a] @ vec[b] for i, a in enumerate(texts)
                                                       for b in texts[i + 1:]), default=0.0))}


def originals(live: dict[str, float], texts: list[str]) -> list[str]:
    """The trace's texts whose normalised form is kept."""
    return [t for t in texts if " ".join(t.casefold().split()) in live]


def semantic_cache(embedder: Embedder, log: Log) -> dict[str, Any]:
    pairs = [json.loads(line) for line in PARAPHRASE.read_text(encoding="utf-8").splitlines() if line.strip()]
    # Embedded as the cache embeds a question: its words, case-folded, without punctuation.
    texts = list(dict.fromkeys(question_text(t) for p in pairs for t in (p["a"], p["b"])))
    log(f"  {len(pairs)} pairs, {len(texts)} sentences")
    m, embed_s = embed_all(embedder, texts, 256)
    at = {t: i for i, t in enumerate(texts)}
    cos = np.array([float(m[at[question_text(p["a"])]].astype(np.float64) @ m[at[question_text(p["b"])]].astype(
        np.float64)) for p in pairs])
    same = np.array([bool(p["same"]) for p in pairs])
    guard = np.array([same_order(p["a"], p["b"]) for p in pairs])
    everything = np.ones_like(guard)
    split = np.array([p["split"] for p in pairs])
    tune, test = split == "tune", split == "test"
    grid = np.round(np.arange(0, 1001) / 1000, 3)

    def lowest(g: np.ndarray) -> float:
        fh = np.array([((cos >= t) & g)[tune & ~same].mean() for t in grid])
        return float(grid[np.argmax(fh <= FALSE_HIT_MAX)])
    tuned, tuned_cosine_only = lowest(guard), lowest(everything)
    fh = np.array([(cos[tune & ~same] >= t).mean() for t in grid])
    miss = np.array([(cos[tune & same] < t).mean() for t in grid])
    eer_i = int(np.argmin(np.abs(fh - miss)))
    default = SemanticCacheConfig().threshold

    def dist(mask: np.ndarray) -> dict[str, float]:
        return {"p10": float(np.percentile(cos[mask], 10)), "p50": float(np.percentile(cos[mask], 50)),
                "p90": float(np.percentile(cos[mask], 90))}

    return {"pairs": {"tune": int(tune.sum()), "test": int(test.sum())}, "embed_s": embed_s,
            "sentences_per_s": len(texts) / embed_s, "max_false_hit_rate": FALSE_HIT_MAX,
            "tuned_threshold": tuned, "default_threshold": default,
            "guard_agrees": {"same": float(guard[same].mean()), "different": float(guard[~same].mean())},
            "test": {"tuned": rates(cos[test], same[test], tuned, guard[test]),
                     "default": rates(cos[test], same[test], default, guard[test])},
            "tune": {"tuned": rates(cos[tune], same[tune], tuned, guard[tune]),
                     "default": rates(cos[tune], same[tune], default, guard[tune])},
            # The embedding alone, without the word-order guard: the same tuning, for comparison.
            "cosine_only": {"tuned_threshold": tuned_cosine_only,
                            "test": rates(cos[test], same[test], tuned_cosine_only, everything[test]),
                            "test_at_default": rates(cos[test], same[test], default, everything[test])},
            "equal_error": {"threshold": float(grid[eer_i]), "rate": float((fh[eer_i] + miss[eer_i]) / 2)},
            "trace": trace_savings(embedder, default),
            "cosine": {"same": dist(same), "different": dist(~same)}}


# -- 4. retrieval on the Ollama docs --------------------------------------------------------------------


def retrieval(embedder: Embedder, files: list[tuple[str, str]], chunks: list[Chunk], vectors: np.ndarray,
              items: list[dict[str, Any]]) -> dict[str, Any]:
    store = MemoryStore(None, embedder.name, embedder.fingerprint, embedder.dim)
    try:
        fill_store(store, files, chunks, vectors)
        qv = embedder.embed([it["q"] for it in items])
        ranks: dict[str, list[int | None]] = {"hybrid": [], "vector": [], "keyword": []}
        misses = []
        for it, vec in zip(items, qv):
            h = [x.chunk for x in search(store, it["q"], vec, K)]
            v = [x.chunk for x in search(store, it["q"], vec, K, hybrid=False)]
            ids = [i for i, _ in store.keyword(it["q"], K)]
            rows = store.chunks(ids)
            kw = [rows[i] for i in ids if i in rows]
            for name, hits in (("hybrid", h), ("vector", v), ("keyword", kw)):
                ranks[name].append(rank_of(hits, it))
            if ranks["hybrid"][-1] is None:
                misses.append({"q": it["q"], "path": it["path"], "top": f"{h[0].path}:{h[0].line_start}" if h else None})
    finally:
        store.close()
    return {"chunks": len(chunks), "questions": len(items), **{k: quality(r) for k, r in ranks.items()},
            "hybrid_misses": misses}


# -- main ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, help="chunks in the index of part 1 (default 100000; --quick 10000)")
    ap.add_argument("--edits", type=int, help="incremental edits timed through the hub (default 10; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="a smaller index and fewer edits: a smoke run")
    ap.add_argument("--skip", action="append", default=[], choices=["index", "indexing", "semantic", "retrieval"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_chunks = args.chunks or (10_000 if args.quick else 100_000)
    n_edits = args.edits if args.edits is not None else (3 if args.quick else 10)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # SIGINT raises KeyboardInterrupt already: the finally blocks clean up
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="sovereign-memory-bench-"))
    figures: dict[str, Any] = {}
    try:
        embedder = load()
        files = corpus_files()
        chunks = corpus_chunks(files)
        items = retrieval_items(files)
        embedder.embed(["warm up"])
        log(f"embedding the corpus: {len(chunks)} chunks of {len(files)} files, in batches of {BATCH}")
        vectors, direct_s = embed_all(embedder, [c.text for c in chunks], BATCH)
        figures["corpus"] = {"files": len(files), "chunks": len(chunks), "direct_embed_s": direct_s,
                             "direct_chunks_per_s": len(chunks) / direct_s,
                             "mean_chunk_chars": sum(len(c.text) for c in chunks) / len(chunks)}
        if "index" not in args.skip:
            log(f"index: {n_chunks} chunks")
            # Queries are embedded as the hub embeds them (Memory: memory.threads).
            hub_embedder = load(None, MemoryConfig().threads)
            figures["index_100k"] = index_100k(n_chunks, hub_embedder, files, chunks, vectors, items, tmp, log)
            for p in tmp.glob("index.sqlite3*"):
                p.unlink()
        if "indexing" not in args.skip:
            log("indexing through a hub and a laptop agent")
            figures["indexing"] = indexing(files, len(chunks) / direct_s, n_edits, tmp, log)
        if "semantic" not in args.skip:
            log("semantic cache: paraphrase pairs")
            figures["semantic_cache"] = semantic_cache(embedder, log)
        if "retrieval" not in args.skip:
            log("retrieval: 80 questions over the corpus")
            figures["retrieval"] = retrieval(embedder, files, chunks, vectors, items)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["runtime_s"] = time.perf_counter() - started
    if args.json:
        emit(figures, True)
    else:
        report(figures)
    return 0


def report(f: dict[str, Any]) -> None:
    c = f["corpus"]
    print(f"corpus: {c['files']} files, {c['chunks']} chunks (mean {c['mean_chunk_chars']:.0f} characters); embedded "
          f"here in batches of {BATCH} in {c['direct_embed_s']:.1f} s = {c['direct_chunks_per_s']:.1f} chunks/s")
    if "index_100k" in f:
        x = f["index_100k"]
        b = x["build"]
        print(f"index of {x['chunks']:,} chunks ({x['real_chunks']} real, {x['synthetic_chunks']:,} synthetic, "
              f"σ {x['sigma']})")
        print(f"  build: generated in {b['generate_s']:.1f} s, written in {b['insert_s']:.1f} s "
              f"({b['insert_chunks_per_s']:,.0f} chunks/s, {b['files']:,} files, {b['db_mb']:.0f} MB); reopened in "
              f"{b['open_s']:.2f} s")
        nn, q1 = x["nn_cosine"], x["query_top1_cosine"]
        print(f"  nearest other chunk's cosine p10/p50/p90 {nn['p10']:.2f}/{nn['p50']:.2f}/{nn['p90']:.2f}; "
              f"queries' top-1 cosine {q1['p10']:.2f}/{q1['p50']:.2f}/{q1['p90']:.2f}")
        print(f"  {x['queries']} queries: embed + hybrid search p50 {x['query_ms']['p50']:.1f} ms (target ≤ 20) "
              f"p95 {x['query_ms']['p95']:.1f} ms")
        print(f"  embed + vector-only search p50 {x['vector_query_ms']['p50']:.1f} ms "
              f"p95 {x['vector_query_ms']['p95']:.1f} ms")
        for key, label in (("embed_ms", "embed alone"), ("search_ms", "hybrid search"),
                           ("vector_search_ms", "vector-only search"), ("nearest_ms", f"store.nearest({POOL})"),
                           ("keyword_ms", f"store.keyword({POOL})")):
            print(f"    {label:<22} p50 {x[key]['p50']:6.1f} ms  p95 {x[key]['p95']:6.1f} ms")
        print(f"  recall@10 of store.nearest against exact float64: {x['recall_at_10']:.4f} (target ≥ 0.95; "
              f"worst query {x['recall_at_10_min']:.1f})")
    if "indexing" in f:
        x = f["indexing"]
        by = x["served_by"] or {}
        print(f"indexing through the hub, one laptop agent ({by.get('device')}, {by.get('model')}): {x['chunks']} "
              f"chunks of {x['notes']} notes in {x['seconds']:.1f} s = {x['chunks_per_s']:.1f} chunks/s "
              f"({x['batches']} batches; scan until the first batch {x['scan_s'] or float('nan'):.2f} s)")
        print(f"  {x['joules']:.1f} J = {x['j_per_1000_chunks']:.1f} J per 1,000 chunks; direct "
              f"{x['direct_chunks_per_s']:.1f} chunks/s, hub/direct {x['hub_over_direct']:.2f}")
        for err in x["retries"]:
            print(f"  the source failed and was scanned again: {err}")
        inc = x["incremental"]
        print(f"  incremental: a section appended to {inc['note']} ({inc['note_chunks']} chunks, +1 an edit), searchable after "
              f"p50 {inc['ms']['p50']:.0f} ms p95 {inc['ms']['p95']:.0f} ms (n {inc['ms']['n']}, target p50 ≤ 1000 ms)"
              + (f"; not found within 30 s: edits {inc['missed']}" if inc["missed"] else ""))
        for err in inc["retries"]:
            print(f"  an edit's indexing failed and was scanned again: {err}")
    if "semantic_cache" in f:
        x = f["semantic_cache"]
        print(f"semantic cache, PAWS-Wiki pairs ({x['pairs']['tune']} tune, {x['pairs']['test']} test; "
              f"{x['sentences_per_s']:.0f} sentences/s embedded)")
        print(f"  tuned threshold {x['tuned_threshold']:.3f} (lowest with ≤ {x['max_false_hit_rate'] * 100:.0f} % false "
              f"hits on tune); equal error at {x['equal_error']['threshold']:.3f} ({x['equal_error']['rate'] * 100:.1f} %)")
        for split in ("test", "tune"):
            for which in ("tuned", "default"):
                t = x["tuned_threshold"] if which == "tuned" else x["default_threshold"]
                r = x[split][which]
                print(f"  {split:<4} at {t:.3f} ({which:<7}) hit rate {r['hit_rate'] * 100:5.1f} %  false hits "
                      f"{r['false_hit_rate'] * 100:5.1f} %")
        co = x["cosine_only"]
        print(f"  the cosine alone (no word-order guard): tuned {co['tuned_threshold']:.3f}, test hit rate "
              f"{co['test']['hit_rate'] * 100:.1f} %, false hits {co['test']['false_hit_rate'] * 100:.1f} %; at the "
              f"default {co['test_at_default']['hit_rate'] * 100:.1f} % / "
              f"{co['test_at_default']['false_hit_rate'] * 100:.1f} %")
        tr = x["trace"]
        print(f"  example trace: {tr['qa_requests']} qa requests, {tr['distinct_questions']} distinct; the exact cache "
              f"answers {tr['exact_hits']}, the semantic cache {tr['semantic_hits']} more (the closest two questions "
              f"are {tr['max_cosine_between_questions']:.3f} apart)")
        ga = x["guard_agrees"]
        print(f"  the word-order guard agrees on {ga['same'] * 100:.1f} % of same-meaning pairs, "
              f"{ga['different'] * 100:.1f} % of different ones")
        cs = x["cosine"]
        print(f"  cosine p10/p50/p90: same meaning {cs['same']['p10']:.3f}/{cs['same']['p50']:.3f}/"
              f"{cs['same']['p90']:.3f}, different {cs['different']['p10']:.3f}/{cs['different']['p50']:.3f}/"
              f"{cs['different']['p90']:.3f}")
    if "retrieval" in f:
        x = f["retrieval"]
        print(f"retrieval, {x['questions']} questions over {x['chunks']} chunks of the Ollama docs")
        for name in ("hybrid", "vector", "keyword"):
            r = x[name]
            print(f"  {name:<8} MRR@10 {r['mrr_at_10']:.3f}  recall@10 {r['recall_at_10']:.3f}  hit@1 {r['hit_at_1']:.3f}")
        print(f"  hybrid misses: {len(x['hybrid_misses'])}")
    print(f"runtime {f['runtime_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
