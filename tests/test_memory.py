"""The hub's memory end to end: a vault and a repository indexed by a real agent's MiniLM through
the task path (deferrable embed tasks, in the ledger), hybrid search over HTTP and the CLI,
retrieval for answers with sources cited, the semantic cache, and the bad inputs of issue 18."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from hub.memory.chunk import Chunk
from hub.memory.embedder import load
from hub.memory.sources import FileState
from hub.memory.store import ExactIndex, IndexMismatch, MemoryStore

from .conftest import ROOT, wait_for
from .test_dispatch import fleet, post

NOTES = {
    "Energy/Solar.md": "---\ntitle: Solar panels\ntags: [energy, solar]\n---\n# Solar panels\n\n"
                       "## Inverter\nThe Fronius inverter on the garage wall reports every 5 seconds over HTTP.\n"
                       "Its IP address is 192.168.1.40 and the API is on port 80.\n\n"
                       "## Cleaning\nThe panels are rinsed in April; dust costs about 4 % of the yield.\n",
    "Home/Boiler.md": "# Boiler\n\nThe boiler is a Vaillant ecoTEC plus. Service is due every October; the "
                      "engineer is booked through [[Contacts|the plumber's page]]. #maintenance\n",
    "Contacts.md": "# Contacts\n\nPlumber: Ana Lopes, 0161 496 0000.\n",
    "Attachments/diagram.png": b"\x89PNG\r\n\x1a\n\x00\x00binary",
}


def write_vault(root: Path) -> None:
    for rel, body in NOTES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode())


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          check=True, capture_output=True, text=True).stdout


async def get(hub: Any, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.http_url + path) as r:
            return r.status, await r.json(content_type=None)


async def indexed(hub: Any) -> None:
    """Until every source has been scanned and embedded once more."""
    hub.memory.indexer.idle.clear()
    hub.memory.reindex()
    await asyncio.wait_for(hub.memory.indexer.idle.wait(), 120)


async def test_vault_and_repository_indexed_by_the_fleet_and_searched(mosquitto: Any, make_hub: Any,
                                                                      spawn_agent: Any, tmp_path: Path) -> None:
    vault, repo = tmp_path / "vault", tmp_path / "repo"
    write_vault(vault)
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "broker.py").write_text("def start_broker(port: int) -> None:\n    \"\"\"Start Mosquitto with TLS on "
                                    "port.\"\"\"\n    run(['mosquitto', '-p', str(port)])\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Broker: start Mosquitto with TLS so that devices never talk in the clear")
    memory = {"vaults": [{"name": "notes", "path": str(vault)}], "repos": [{"name": "hub", "path": str(repo)}],
              "deadline_s": 0, "scan_interval_s": 3600}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, memory=memory) as hub:
        [laptop] = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ()))
        await indexed(hub)
        status, doc = await get(hub, "/api/memory")
        assert status == 200, doc
        by = {s["name"]: s for s in doc["sources"]}
        assert by["notes"]["state"] == "idle" and by["notes"]["files"] == 3, by["notes"]
        assert by["notes"]["attachments"] == 1, "the PNG is an attachment, not a note"
        assert by["hub"]["files"] == 2 and by["hub"]["last_commit"], by["hub"]  # broker.py + the commit
        assert by["notes"]["last_batch"]["served_by"]["device"] == laptop.device_id

        status, res = await get(hub, "/api/search?q=how+often+does+the+solar+inverter+report")
        assert status == 200, res
        top = res["results"][0]
        assert (top["source"], top["path"], top["heading"]) == ("notes", "Energy/Solar.md", "Solar panels > Inverter")
        assert top["line_start"] <= 8 <= top["line_end"], top  # "The Fronius inverter..." is line 8 of the file
        assert top["tags"] == ["energy", "solar"] and top["cosine"] > 0.4

        # Keywords: an exact identifier the embedding alone ranks lower.
        status, res = await get(hub, "/api/search?q=start_broker&kind=code")
        assert status == 200 and res["results"][0]["path"] == "broker.py" and res["results"][0]["keyword_rank"] == 1
        status, res = await get(hub, "/api/search?q=why+is+the+broker+encrypted&kind=commit")
        assert status == 200 and res["results"][0]["path"].startswith("commit:")

        # Every batch went through the task path: in the ledger as embed tasks on the laptop.
        hub.ledger.flush()
        today = hub.ledger.periods()["today"]
        assert today["by_task"]["embed"]["count"] >= 2 and today["by_device"][laptop.device_id]["count"] >= 2

        # One note changes: only it is embedded again; a deleted one leaves the index.
        before = by["notes"]["batches"]["done"]
        (vault / "Contacts.md").write_text("# Contacts\n\nPlumber: Ana Lopes. Electrician: Tom Reyes, 0161 496 0001.\n")
        (vault / "Home" / "Boiler.md").unlink()
        await indexed(hub)
        status, doc = await get(hub, "/api/memory")
        notes = next(s for s in doc["sources"] if s["name"] == "notes")
        assert notes["files"] == 2 and notes["batches"]["done"] == before + 1, notes
        status, res = await get(hub, "/api/search?q=electrician+phone+number")
        assert res["results"][0]["path"] == "Contacts.md" and "Tom Reyes" in res["results"][0]["text"]
        assert all(r["path"] != "Home/Boiler.md" for r in res["results"])

        # The CLI.
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "search", "solar inverter",
                                                        "--url", hub.http_url], capture_output=True, text=True,
                                       cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "notes: Energy/Solar.md — Solar panels > Inverter (lines" in proc.stdout

        # Refusals: each names what and why.
        for query, code, why in [("", "bad_request", "q: the query is required"), ("?q=", "bad_request", "empty"),
                                 ("?q=" + "a" * 3000, "query_too_long", "3000 characters exceeds"),
                                 ("?q=x&k=0", "bad_request", "k: "), ("?q=x&k=many", "bad_request", "k: "),
                                 ("?q=x&kind=pdf", "bad_request", "kind: ")]:
            status, err = await get(hub, "/api/search" + query)
            assert status in (400, 413) and err["error"]["code"] == code and why in err["error"]["message"], (
                query[:20], err)
        # 100 KB: too long for a URL (aiohttp refuses the request line), and as a JSON body 413.
        async with aiohttp.ClientSession() as s:
            async with s.get(hub.http_url + "/api/search?q=" + "a" * 100_000) as r:
                assert r.status == 400
            async with s.post(hub.http_url + "/api/search", json={"q": "a" * 100_000}) as r:
                assert r.status == 413 and (await r.json())["error"]["code"] == "query_too_long"
            async with s.post(hub.http_url + "/api/search", json={"q": "inverter", "k": 2}) as r:
                assert r.status == 200 and len((await r.json())["results"]) == 2
        async with aiohttp.ClientSession() as s:
            async with s.post(hub.http_url + "/api/memory/reindex?source=nope") as r:
                assert r.status == 404 and "no memory source 'nope'" in (await r.json())["error"]["message"]


async def test_answers_cite_the_notes_and_the_semantic_cache(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                             tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    write_vault(vault)
    # A deterministic qa model (the code runtime's rules: quality 1, no energy) answers first; what
    # it has no rule for goes on to the laptop's language model.
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"qa": {"When is the boiler service due?": "Every October."}}))
    # The threshold is set here (the default, 0.977, is tuned on PAWS pairs): the test is of what the
    # cache does with it, not of the tuned figure.
    memory = {"vaults": [{"name": "notes", "path": str(vault)}], "deadline_s": 0, "scan_interval_s": 3600,
              "semantic_cache": {"threshold": 0.96}}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, memory=memory) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ("--seed", "1", "--rules", str(rules))))
        await indexed(hub)
        question = "When is the boiler service due?"
        status, first = await post(hub, "/api/infer", {"task": "qa", "text": question, "id": "plain"})
        assert status == 200 and first["output"] == "Every October." and first["cached"] is False, first

        # The same question in other words (cosine 0.979 as the cache embeds it): answered from the cache.
        status, again = await post(hub, "/api/infer", {"task": "qa", "text": "when's the boiler service due"})
        assert status == 200 and again["cached"] == "semantic" and again["output"] == "Every October.", again
        assert any("semantic cache: 'When is the boiler service due?' was asked before" in r for r in again["reasons"])
        # One that looks alike and asks something else (0.66) is not a hit.
        status, other = await post(hub, "/api/infer", {"task": "qa", "text": "When is the boiler installed?"})
        assert other["cached"] is False and other["output"] != "Every October.", other

        # With the notes: the boiler's note is sent and cited; the prompt routed is the longer one.
        status, out = await post(hub, "/api/infer", {"task": "qa", "text": question, "context": "notes",
                                                     "id": "with-notes"})
        assert status == 200 and out["ok"] and out["cached"] is False, out
        assert out["sources"][0]["n"] == 1 and out["sources"][0]["path"] == "Home/Boiler.md", out["sources"]
        assert out["reasons"][0].startswith(f"{len(out['sources'])} notes retrieved for the prompt (+")
        assert out["served_by"]["model"] == "smollm2-135m", "the rules know the bare question, not the prompt"
        hub.ledger.flush()
        rows = dict(hub.ledger._db.execute("SELECT request_id, max(cloud_cost) FROM ledger GROUP BY request_id"))
        assert rows["with-notes"] > rows["plain"], "the cloud counterfactual prices the notes' tokens"
        assert hub.ledger.periods()["today"]["by_layer"]["semantic"]["count"] == 1

        # context on a task that takes none.
        status, err = await post(hub, "/api/infer", {"task": "intent", "text": "lights on", "context": "notes"})
        assert status == 400 and "context is for draft, qa, summarize" in err["error"]["message"], err
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, memory={"enabled": False},
                        data_dir=str(tmp_path / "other")) as hub:
        status, err = await post(hub, "/api/infer", {"task": "qa", "text": "hi", "context": "notes"})
        assert status == 422 and err["error"]["code"] == "memory_unavailable", err


def _chunk(text: str, line: int = 1) -> Chunk:
    return Chunk(path="a.md", kind="note", heading="A", line_start=line, line_end=line, text=text)


def test_store_is_atomic_refuses_another_model_and_reloads(tmp_path: Path) -> None:
    emb = load()
    path = tmp_path / "memory.sqlite3"
    store = MemoryStore(path, "minilm-l6-v2", emb.fingerprint, emb.dim)
    texts = ["the boiler service is in October", "solar panels are cleaned in April"]
    state = FileState(1, 10, "sha-1")
    assert store.replace("notes", "a.md", state, [_chunk(t, i) for i, t in enumerate(texts, 1)], emb.embed(texts),
                         at=1.0) == 2
    # A write that fails half-way (the second chunk's row is refused) leaves the document as it was.
    bad = [_chunk("new text", 1), Chunk("a.md", "note", "A", 2, 2, None)]  # type: ignore[arg-type]
    with pytest.raises(Exception):
        store.replace("notes", "a.md", FileState(2, 11, "sha-2"), bad, emb.embed(["x", "y"]), at=2.0)
    assert store.known("notes") == {"a.md": state} and store.stats()["chunks"] == 2 and len(store.index) == 2
    q = emb.embed(["when is the boiler serviced"])[0]
    [(cid, cos)] = store.nearest(q, 1)
    assert store.chunks([cid])[cid].text == texts[0] and cos > 0.5
    store.close()
    # Reopened: the vectors come back from SQLite; another model's fingerprint is refused.
    again = MemoryStore(path, "minilm-l6-v2", emb.fingerprint, emb.dim)
    assert len(again.index) == 2 and again.nearest(q, 1)[0][0] == cid
    again.close()
    with pytest.raises(IndexMismatch, match="built with embedding model minilm-l6-v2"):
        MemoryStore(path, "other-model", "0123456789abcdef", 768)


def test_exact_index_matches_brute_force_after_removals() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((3000, 32)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    idx = ExactIndex(32)
    idx.add(np.arange(3000), m)
    gone = set(rng.choice(3000, 700, replace=False).tolist())
    idx.remove(gone)
    keep = np.array(sorted(set(range(3000)) - gone))
    for q in m[:20]:
        truth = keep[np.argsort(-(m[keep] @ q))[:10]].tolist()
        assert [i for i, _ in idx.search(q, 10)] == truth
    assert len(idx) == 2300


async def test_indexing_stopped_mid_batch_resumes_without_duplicates_or_loss(tmp_path: Path) -> None:
    """The hub stops while batches are in flight (the indexer's task is cancelled after the first
    batch): the next start embeds what was not written, and every chunk is there exactly once."""
    import base64

    from hub.memory.config import MemoryConfig
    from hub.memory.indexer import Indexer
    from hub.router.request import InferOutcome

    vault = tmp_path / "vault"
    for i in range(12):
        (vault / f"n{i}.md").parent.mkdir(parents=True, exist_ok=True)
        (vault / f"n{i}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(f"## Part {j}\nFact {i}.{j} about the house."
                                                                        for j in range(3)))
    emb = load()
    cfg = MemoryConfig(vaults=[{"name": "notes", "path": str(vault)}], batch_size=5, concurrency=1, deadline_s=0)
    calls = 0
    first_done = asyncio.Event()

    async def run_task(req: Any) -> InferOutcome:
        nonlocal calls
        calls += 1
        if calls > 1:
            first_done.set()
            await asyncio.sleep(3600)  # the hub stops while this batch is on a device
        texts = json.loads(base64.b64decode(req.data))
        vectors = (await asyncio.to_thread(emb.embed, texts)).tolist()
        return InferOutcome(req.id, "embed", True, vectors, {"device": "d", "model": req.model, "layer": "small"})

    def same_model(text: str, vector: Any) -> float:
        return float(emb.embed([text])[0] @ np.asarray(vector, dtype=np.float32))

    path = tmp_path / "memory.sqlite3"
    store = MemoryStore(path, cfg.model, emb.fingerprint, emb.dim)
    indexer = Indexer(cfg, store, run_task, same_model)
    indexer.start()
    await asyncio.wait_for(first_done.wait(), 60)
    # The first batch's finished document is written (a worker thread); the second batch is on
    # its device when the hub stops, and the second note has 2 of its 3 chunks embedded.
    await wait_for(lambda: store.stats()["chunks"] == 3, 10, what="the first document written")
    await indexer.aclose()
    assert store.stats()["chunks"] == 3 and store.stats()["files"] == 1, "only whole documents are written"
    store.close()

    calls = -10**6  # the next run's device answers every batch
    store = MemoryStore(path, cfg.model, emb.fingerprint, emb.dim)
    indexer = Indexer(cfg, store, run_task, same_model)
    indexer.start()
    await asyncio.wait_for(indexer.idle.wait(), 120)
    await indexer.aclose()
    rows = store._db.execute("SELECT path, heading, count(*) FROM chunks GROUP BY path, heading").fetchall()
    assert len(rows) == 36 and all(n == 1 for *_, n in rows), "every chunk exactly once"
    assert len(store.index) == 36 and store.stats()["files"] == 12
    store.close()


def test_semantic_cache_turns_away_the_same_words_in_another_order(tmp_path: Path) -> None:
    """PAWS's danger: "from Paris to Rome" and "from Rome to Paris" embed almost alike. Even with
    the very same vector, the word-order guard says no; a rephrasing that keeps the order hits."""
    from hub.memory.config import SemanticCacheConfig
    from hub.memory.semantic import SemanticCache, same_order

    assert same_order("How do I reset the router?", "how can I reset my router")
    assert not same_order("flights from Paris to Rome", "flights from Rome to Paris")
    assert not same_order("what is the weather", "lights off")  # nothing shared
    cache = SemanticCache(SemanticCacheConfig(threshold=0.9), {"qa": 3600}, 3, "m", tmp_path / "s.sqlite3")
    v = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    assert cache.put("scope", "qa", "flights from Paris to Rome", v, ("m1", "code"), {"output": "AF 1234"}, now=0)
    assert cache.get("scope", "flights from Rome to Paris", v, [("m1", "code")], now=1) is None
    hit = cache.get("scope", "Flights from Paris to Rome, please", v, [("m1", "code")], now=1)
    assert hit is not None and hit.result == {"output": "AF 1234"} and hit.similarity == pytest.approx(1.0)
    assert cache.get("scope", "flights from Paris to Rome", v, [("m2", "code")], now=1) is None, "another producer"
    assert cache.get("scope", "flights from Paris to Rome", v, [("m1", "code")], now=4000) is None, "expired"
    assert cache.get("other", "flights from Paris to Rome", v, [("m1", "code")], now=1) is None, "other options"
    cache.close()


async def test_memory_routes_refuse_strangers(mosquitto: Any, make_hub: Any, tmp_path: Path) -> None:
    """Notes are private: a search from a page of another site, under another host name (DNS
    rebinding) or, for writes and POSTed searches, without the admin token is refused."""
    from .test_http_security import call

    memory = {"vaults": [{"name": "notes", "path": str(tmp_path / "vault")}], "scan_interval_s": 3600}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"},
                        memory=memory) as hub:
        token = {"Authorization": f"Bearer {hub.new_admin_token}"}
        async with aiohttp.ClientSession() as s:
            for method, path, body in [("POST", "/api/memory/reindex", None), ("POST", "/api/search", {"q": "boiler"})]:
                status, err = await call(s, method, hub.http_url + path, json=body)
                assert status == 401, (path, err)
                status, err = await call(s, method, hub.http_url + path, json=body,
                                         headers={**token, "Origin": "http://evil.example"})
                assert status == 403 and err["error"]["code"] == "cross_origin", (path, err)
            for path in ("/api/search?q=boiler", "/api/memory"):
                status, err = await call(s, "GET", hub.http_url + path, headers={"Host": "evil.example"})
                assert status == 403 and err["error"]["code"] == "bad_host", (path, err)
            status, ok = await call(s, "POST", hub.http_url + "/api/memory/reindex", headers=token)
            assert status == 202 and ok == {"scanning": ["notes"]}


async def test_indexing_waits_for_a_clean_window_as_deferred_work(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                                  tmp_path: Path) -> None:
    """A batch is deferrable: with the grid dirty now and clean in 2 s, it waits (listed in
    /api/deferred meanwhile) and runs in the window, before its deadline."""
    import time

    from hub.energy.model import ForecastPoint

    vault = tmp_path / "vault"
    write_vault(vault)
    memory = {"vaults": [{"name": "notes", "path": str(vault)}], "deadline_s": 60, "scan_interval_s": 3600}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, memory=memory) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ()))
        now = time.time()
        hub.energy.report("test", "carbon_g_per_kwh", 400, now)
        hub.energy.set_forecast("test", "carbon_g_per_kwh", [ForecastPoint(now - 1, now + 2, 400),
                                                             ForecastPoint(now + 2, now + 600, 60)])
        hub.memory.indexer.idle.clear()
        hub.memory.reindex()
        waiting = await wait_for(lambda: [d for d in hub.deferred_store.list() if d["id"].startswith("memory-notes-")],
                                 20, what="an indexing batch in the deferred list")
        assert waiting[0]["task"] == "embed" and waiting[0]["state"] == "waiting", waiting
        await asyncio.wait_for(hub.memory.indexer.idle.wait(), 60)
        notes = hub.memory.status()["sources"][0]
        assert notes["state"] == "idle" and notes["chunks"] > 0, notes
        assert notes["last_batch"]["deferred_s"] >= 1.0 and time.time() < now + 60, notes["last_batch"]
