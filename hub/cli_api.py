"""The command line's client for the running hub's HTTP API, shared by ``hub/cli.py`` and its
subcommand modules (``hub/cli_pairing.py``): requests with the admin token, errors printed, and
plain-text tables."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


def open_api(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """A request to the hub's API with ``SOVEREIGN_TOKEN`` when set; the caller closes it."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    token = os.environ.get("SOVEREIGN_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)


def api_call(method: str, base: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """A request to the running hub at ``base``: its JSON answer, or None after printing why not
    (the hub's own error, with a hint for the admin token on 401)."""
    try:
        with open_api(method, base.rstrip("/") + path, body, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            err = json.load(exc).get("error", {})
        except ValueError:
            err = {}
        hint = " (set SOVEREIGN_TOKEN to the admin token)" if exc.code == 401 else ""
        print(f"error ({err.get('code', exc.code)}): {err.get('message', exc.reason)}{hint}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: no hub at {base} ({getattr(exc, 'reason', exc)})", file=sys.stderr)
    return None


def columns(rows: list[tuple[Any, ...]]) -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _in(seconds: float) -> str:
    """A time ahead in words: "in 40 s", "in 12 min", "in 3.5 h"."""
    if seconds < 90:
        return f"in {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"


def format_power(doc: dict[str, Any]) -> str:
    """``GET /api/power`` as a table: each device's state, what the plan does with it (and when,
    for a future wake) and why, its draws, wake method and latency."""
    now = doc["now"]
    lines = [f"power management {'on' if doc['enabled'] else 'off (power.enabled = false)'}; next plan "
             f"{_in(max(0.0, doc['next_plan_at'] - now))}; {doc['deferred']} deferred requests"]
    rows: list[tuple[Any, ...]] = [("DEVICE", "STATE", "PLAN", "IDLE/SLEEP W", "WAKE", "WAKE LATENCY", "WAKES/SLEEPS",
                                    "WHY")]
    for d in doc["devices"]:
        plan = (d["action"] or "-").replace("_", " ")
        if d["action"] in ("wake", "stay_asleep") and d["at"] is not None and d["at"] > now + 1:
            plan = f"wake {_in(d['at'] - now)}"
        if d["observed_wake_ms"] is not None:
            latency = f"{d['observed_wake_ms'] / 1000:.1f} s observed"
        elif d["wake_latency_ms"] is not None:
            latency = f"{d['wake_latency_ms'] / 1000:.1f} s announced"
        else:
            latency = "-"
        watts = "/".join("-" if w is None else f"{w:g}" for w in (d["idle_w"], d["sleep_w"]))
        counts = f"{d['wakes']}/{d['sleeps']}"
        failed = [f"{d['wake_failures']} wakes failed"] if d["wake_failures"] else []
        failed += [f"{d['sleep_refusals']} sleeps refused"] if d["sleep_refusals"] else []
        if failed:
            counts += f" ({', '.join(failed)})"
        why = d["reasons"][0] if d["reasons"] else ""
        rows.append((d["id"], d["state"], plan, watts, d["wake"], latency, counts,
                     why if len(why) <= 100 else why[:99] + "…"))
    if len(rows) == 1:
        lines.append("(no paired devices)")
    else:
        lines += columns(rows)
    return "\n".join(lines)
