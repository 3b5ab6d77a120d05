"""``sovereign search`` and ``sovereign memory``: the running hub's index of notes and repositories.

    sovereign search "how did I set up the inverter"   # hybrid search, best first
    sovereign search "mqtt tls" --source hub --kind code -k 5
    sovereign memory                                    # sources, counts, what indexing is doing
    sovereign memory reindex [--source notes]           # scan now
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
from typing import Any

from .cli_api import api_call


def add_parsers(sub: Any, default_url: str, url_help: str) -> None:
    se = sub.add_parser("search", help="search the notes and repositories the hub has indexed")
    se.add_argument("query", help="what to look for, in your own words or exact terms")
    se.add_argument("-k", type=int, default=10, help="how many results (1-50, default 10)")
    se.add_argument("--source", help="only this source (a vault's or repository's name in hub.toml)")
    se.add_argument("--kind", choices=["note", "code", "commit"], help="only notes, code or commit messages")
    se.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", default_url), help=url_help)
    se.add_argument("--json", action="store_true", help="print the whole JSON document")
    me = sub.add_parser("memory", help="the index of notes and repositories: status, or scan now")
    me.add_argument("action", nargs="?", choices=["status", "reindex"], default="status",
                    help="status (default): every source and what indexing is doing; reindex: scan now")
    me.add_argument("--source", help="reindex: only this source")
    me.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", default_url), help=url_help)
    me.add_argument("--json", action="store_true", help="print the whole JSON document")


def where(hit: dict[str, Any]) -> str:
    """``notes: Energy/Solar.md — Setup > Inverter (lines 12-30)``."""
    text = f"{hit['source']}: {hit['path']}" + (f" — {hit['heading']}" if hit.get("heading") else "")
    return text + (f" (lines {hit['line_start']}-{hit['line_end']})" if hit.get("line_start") else "")


def run(args: argparse.Namespace) -> int:
    if args.command == "search":
        query = {"q": args.query, "k": str(args.k)}
        if args.source:
            query["source"] = args.source
        if args.kind:
            query["kind"] = args.kind
        doc = api_call("GET", args.url, "/api/search?" + urllib.parse.urlencode(query), timeout=30)
        if doc is None:
            return 1
        if args.json:
            print(json.dumps(doc, indent=2))
            return 0
        if not doc["results"]:
            print("no results (is anything indexed? `sovereign memory`)")
        for i, hit in enumerate(doc["results"], 1):
            cos = f"cosine {hit['cosine']:.2f}" if hit.get("cosine") is not None else "keywords only"
            print(f"{i:>2}. {where(hit)}  [{hit['score']:.4f}, {cos}]")
            first = " ".join(hit["text"].split("\n", 1)[-1].split())[:160]
            print(f"    {first}")
        print(f"-- {len(doc['results'])} results in {doc['took_ms']:.0f} ms")
        return 0
    if args.action == "reindex":
        path = "/api/memory/reindex" + (f"?source={urllib.parse.quote(args.source)}" if args.source else "")
        doc = api_call("POST", args.url, path)
        if doc is None:
            return 1
        print(json.dumps(doc, indent=2) if args.json else f"scanning: {', '.join(doc['scanning'])}")
        return 0
    doc = api_call("GET", args.url, "/api/memory")
    if doc is None:
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"model {doc['model']}" + (f" ({doc['fingerprint']})" if doc.get("fingerprint") else "")
          + (f", {doc['chunks']} chunks in {doc['files']} files" if "chunks" in doc else "")
          + (f"; error: {doc['error']}" if doc.get("error") else ""))
    for s in doc["sources"]:
        line = (f"  {s['name']:<16} {s['kind']:<6} {s['state']:<10} {s.get('files', 0):>6} files "
                f"{s.get('chunks', 0):>7} chunks")
        if s.get("pending_chunks"):
            line += f", {s['pending_chunks']} chunks waiting to be embedded"
        if s.get("error"):
            line += f"  ({s['error']})"
        print(line)
        skipped = (s.get("skipped") or {}).get("total", 0)
        if skipped:
            print(f"    {skipped} files skipped, e.g. " + "; ".join(f"{x['path']}: {x['reason']}"
                                                               for x in s["skipped"]["first"][:3]))
    sc = doc.get("semantic_cache")
    if sc:
        print(f"semantic cache: {sc['entries']} questions, {sc['hits']} hits, {sc['misses']} misses "
              f"(threshold {sc['threshold']})")
    return 0
