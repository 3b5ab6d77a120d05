"""``sovereign pair``: open a one-time pairing code, make a command client's login, list logins.

Talks to the running hub's API (admin token from ``SOVEREIGN_TOKEN``, or the loopback trust of
the default ``http.require_token = "writes"`` for reads only — pairing is a write).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .cli_api import api_call, columns


def add_parser(sub: Any, default_api: str) -> None:
    pa = sub.add_parser("pair", help="pair a device (prints a one-time code) or make a command client's login",
                        description="Without options: a one-time code for `sovereign agent --hub URL --pair CODE` "
                                    "(or `sovereign provision --pair CODE`).")
    pa.add_argument("--device-id", help="the code pairs only this device id")
    pa.add_argument("--ttl", type=float, metavar="SECONDS", help="how long the code stays valid (default 600)")
    pa.add_argument("--client", metavar="NAME", help="instead: a login for an MQTT command client named NAME")
    pa.add_argument("--role", choices=["client", "homeassistant"], default="client",
                    help="with --client: homeassistant reads the hub's topics and its discovery prefix")
    pa.add_argument("--publish", action="append", default=[], metavar="TOPIC",
                    help="with --client: may also publish here (repeatable, MQTT filter)")
    pa.add_argument("--subscribe", action="append", default=[], metavar="TOPIC",
                    help="with --client: may also read here (repeatable, MQTT filter)")
    pa.add_argument("--list", action="store_true", help="list logins, open codes and pending devices")
    pa.add_argument("--revoke-client", metavar="USERNAME", help="revoke a command client's login")
    pa.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", default_api),
                    help=f"the running hub's address (env SOVEREIGN_URL; default {default_api})")
    pa.add_argument("--json", action="store_true", help="print the raw JSON document")


def run(args: argparse.Namespace) -> int:
    if args.list:
        doc = api_call("GET", args.url, "/api/pairing")
    elif args.revoke_client:
        doc = api_call("DELETE", args.url, f"/api/pairing/clients/{args.revoke_client}")
    elif args.client:
        doc = api_call("POST", args.url, "/api/pairing/clients", {
            "name": args.client, "role": args.role, "publish": args.publish, "subscribe": args.subscribe})
    else:
        body: dict[str, Any] = {}
        if args.device_id:
            body["device_id"] = args.device_id
        if args.ttl:
            body["ttl_s"] = args.ttl
        doc = api_call("POST", args.url, "/api/pair/codes", body)
    if doc is None:
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.list:
        rows = [("USERNAME", "ROLE", "EXTRA PUBLISH", "EXTRA SUBSCRIBE")]
        rows += [(c["username"], c["role"], ",".join(c["publish"]) or "-", ",".join(c["subscribe"]) or "-")
                 for c in doc["credentials"]]
        print("\n".join(columns(rows)))
        print(f"\nopen codes: {doc['open_codes']}   pending devices: {', '.join(doc['pending']) or 'none'}"
              + ("" if doc["required"] else "   (pairing.required is false: every device is routed to)"))
    elif args.revoke_client:
        print(f"revoked {doc['revoked']}")
    elif args.client:
        print(f"MQTT login for {args.client} (shown once; only its hash is kept):\n"
              f"  broker:   {doc['broker_url']}\n  username: {doc['username']}\n  password: {doc['password']}\n"
              f"  replies:  {doc['reply_namespace']}…  (set it as the MQTT 5 response topic or reply_to)")
    else:
        print(f"Pairing code (valid until {_clock(doc['expires_at'])}, one use): {doc['code']}\n"
              f"On the device:  {doc['agent_command']}")
    return 0


def _clock(ts: float) -> str:
    import time
    return time.strftime("%H:%M:%S", time.localtime(ts))
