"""``sovereign token show-hint|reset``: the admin token, worked on in the data directory itself.

The hub keeps only the token's SHA-256 (``data_dir/admin-token.json``), so a lost token cannot be
shown again; what can be shown honestly is when it was made and a short fingerprint of the hash,
against which a token you kept can be checked (``SOVEREIGN_TOKEN``). ``reset`` needs no running hub
and no token — being able to write the data directory is the authority — and a running hub uses
the new hash from its next request on (hub/auth.py re-reads the file when it changes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

TOKEN_FILE = "admin-token.json"


def add_parser(sub: Any) -> None:
    tk = sub.add_parser("token", help="the admin token: show-hint (when it was made, its fingerprint) or reset "
                                      "(make a new one)",
                        description="Works on the data directory directly (no running hub needed). The token itself "
                                    "is never stored, only its SHA-256: a lost one cannot be shown again, only reset.")
    tk.add_argument("action", choices=["show-hint", "reset"],
                    help="show-hint: where the hash is, when it was made, its fingerprint, and whether "
                         "SOVEREIGN_TOKEN is it; reset: make a new token and print it once")
    where = tk.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help="the hub's data directory (default: data_dir of --config, else "
                                                     "$SOVEREIGN_DATA_DIR or ~/.local/share/sovereign)")
    where.add_argument("--demo", action="store_true",
                       help="the demo's data directory ($SOVEREIGN_DEMO_DIR or ~/.local/share/sovereign-demo)")
    tk.add_argument("--config", type=Path, help="the hub's TOML config file, for its data_dir")


def data_dir_of(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return args.data_dir.expanduser()
    if args.demo:
        from .demo import demo_data_dir
        return demo_data_dir()
    from .config import load_config
    return load_config(args.config).data_dir.expanduser()


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "unknown"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def run(args: argparse.Namespace) -> int:
    from .auth import AdminToken, fingerprint
    from .lock import DataDirLock
    data_dir = data_dir_of(args)
    try:
        if not data_dir.is_dir():
            print(f"error: {data_dir} is not a hub data directory (no such directory): give --data-dir, --config "
                  "or --demo", file=sys.stderr)
            return 1
        path = data_dir / TOKEN_FILE
        path.exists()
    except PermissionError:
        print(f"error: cannot reach {data_dir}: permission denied (run as the user who runs the hub)", file=sys.stderr)
        return 1
    admin = AdminToken(path)
    running = DataDirLock(data_dir).holder()
    if args.action == "show-hint":
        if not path.exists():
            print(f"no admin token in {data_dir} yet: the hub makes one at its first successful start and prints "
                  "it once")
            return 1
        try:
            info = admin.info()
        except OSError as exc:
            print(f"error: cannot read {path}: {exc.strerror} (run as the user who runs the hub)", file=sys.stderr)
            return 1
        if info is None:
            print(f"error: {path} is not an admin-token file; `sovereign token reset` makes a new one",
                  file=sys.stderr)
            return 1
        print(f"admin token of the hub in {data_dir}" + (f" (running, pid {running})" if running else ""))
        print(f"  stored:      only its SHA-256, in {path}; the token itself cannot be shown again")
        print(f"  made:        {_when(info['created'])}")
        print(f"  fingerprint: {fingerprint(info['sha256'])} (the first 8 hex digits of the SHA-256: "
              "`printf %s TOKEN | sha256sum` of a token you kept starts with them if it is this one)")
        given = os.environ.get("SOVEREIGN_TOKEN")
        if given:
            same = hashlib.sha256(given.encode()).hexdigest() == info["sha256"]
            print(f"  SOVEREIGN_TOKEN: {'is this token' if same else 'is NOT this token'}"
                  + ("" if same else " (it may still be the hub's http.token)"))
        print("lost it? `sovereign token reset` makes a new one (the old one stops working at once)")
        return 0
    # reset
    if not os.access(data_dir, os.W_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        print(f"error: cannot write {data_dir}: only whoever runs the hub (or root) may reset its token",
              file=sys.stderr)
        return 1
    st = data_dir.stat()
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None
    try:
        token = admin.create(owner)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"new admin token (shown once; only its hash is kept): {token}", flush=True)
    print("the old token no longer works; "
          + (f"the running hub (pid {running}) uses the new one from its next request on" if running
             else "the hub uses the new one when it starts"), file=sys.stderr)
    return 0
