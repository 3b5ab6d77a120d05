"""``sovereign listen``: one utterance to the running hub's voice pipeline, or its feed.

    sovereign listen --file command.wav [--wake]   # a recording (WAV, any rate 8-48 kHz)
    sovereign listen --mic [--seconds 5] [--wake]  # record from the microphone (ALSA's arecord)
    sovereign listen --text "turn off the kitchen lights"
    sovereign listen --confirm ID [--no]           # answer a held (sensitive) action
    sovereign listen                               # the recent utterances
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .cli_api import api_call


def add_parser(sub: Any, default_url: str, url_help: str) -> None:
    ls = sub.add_parser("listen", help="send speech (a WAV file, the microphone) or text to the voice pipeline; "
                                       "without input, show what it heard")
    src = ls.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path, help="a WAV recording (or raw 16-bit mono PCM with --pcm-rate)")
    src.add_argument("--mic", action="store_true", help="record from the default microphone (needs arecord)")
    src.add_argument("--text", help="text instead of speech")
    src.add_argument("--confirm", metavar="ID", help="confirm a held action (see the feed's pending list)")
    ls.add_argument("--no", action="store_true", help="with --confirm: cancel it instead")
    ls.add_argument("--wake", action="store_true", help="the recording starts with the wake word: act only if "
                                                        "it is heard, and transcribe what follows it")
    ls.add_argument("--seconds", type=float, default=5.0, help="with --mic: how long to record (default 5, max 60)")
    ls.add_argument("--pcm-rate", type=int, help="the file is raw 16-bit mono PCM at this rate")
    ls.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", default_url), help=url_help)
    ls.add_argument("--json", action="store_true", help="print the whole JSON document")


def record(seconds: float) -> bytes:
    """A WAV from the default ALSA capture device; ValueError saying why not."""
    if not 0 < seconds <= 60:
        raise ValueError(f"--seconds {seconds:g}: give 0-60")
    arecord = shutil.which("arecord")
    if arecord is None:
        raise ValueError("--mic needs arecord (Debian: apt install alsa-utils); or record a WAV and use --file")
    print(f"recording {seconds:g} s…", file=sys.stderr)
    proc = subprocess.run([arecord, "-q", "-f", "S16_LE", "-r", "16000", "-c", "1", "-t", "wav",
                           "-d", str(max(1, round(seconds))), "-"], capture_output=True, timeout=seconds + 10)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"recording failed: {why[-1] if why else f'arecord exited {proc.returncode}'}")
    return proc.stdout


def run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    try:
        if args.file is not None:
            body["data"] = base64.b64encode(args.file.read_bytes()).decode()
        elif args.mic:
            body["data"] = base64.b64encode(record(args.seconds)).decode()
        elif args.text is not None:
            body["text"] = args.text
        elif args.confirm is not None:
            body = {"confirm": not args.no}
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.pcm_rate:
        body["pcm_rate"] = args.pcm_rate
    if args.wake and "data" in body:
        body["wake"] = True
    if not body:
        doc = api_call("GET", args.url, "/api/voice")
        if doc is None:
            return 1
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            for u in reversed(doc["utterances"][:20]):
                print(format_utterance(u))
            for u in doc["pending"]:
                print(f"held, waiting for confirmation: {u['id']} ({u['text']!r}): sovereign listen --confirm {u['id']}")
        return 0
    path = f"/api/voice/{args.confirm}/confirm" if args.confirm else "/api/voice"
    doc = api_call("POST", args.url, path, body, timeout=120)
    if doc is None:
        return 1
    print(json.dumps(doc, indent=2) if args.json else format_utterance(doc, detail=True))
    return 0 if doc["status"] not in ("error",) else 1


def format_utterance(u: dict[str, Any], detail: bool = False) -> str:
    actions = "; ".join(f"{a['intent']} {json.dumps(a['slots'])}" for a in u.get("actions", [])) or "-"
    head = (f"{u['text']!r} → {u['status']} by {u['layer']}: {actions} "
            f"({u['latency_ms']:.0f} ms, {u['joules']:.3g} J)" + (" [partial]" if u.get("partial") else ""))
    if not detail:
        return head
    lines = [head, f"  why: {u['reason']}" if u.get("reason") else ""]
    if u.get("partial"):
        lines.append(f"  partial: {u['partial']}")
    if u.get("error"):
        lines.append(f"  error: {u['error']}")
    for s in u.get("stages", []):
        where = f" on {s['device']} ({s['model']})" if s.get("device") else ""
        lines.append(f"  {s['name']:<11}{s['ms']:>8.1f} ms {s['joules']:>9.3g} J{where}"
                     + (f"  {s['note']}" if s.get("note") else ""))
    if u["status"] == "awaiting_confirmation":
        lines.append(f"  confirm: sovereign listen --confirm {u['id']}   (cancel: add --no)")
    return "\n".join(line for line in lines if line)
