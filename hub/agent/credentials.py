"""An agent's MQTT login, got once by pairing and kept on the device.

``sovereign agent --hub URL --pair CODE`` sends the one-time code from ``sovereign pair`` to the
hub (``POST /api/pair``) and receives a login of its own, the broker's address and, when the
broker speaks TLS, the hub's CA. They are kept in ``~/.config/sovereign/agent-<id>.json`` (mode
0600; ``--credentials`` moves it) and used by every later start.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ..private_file import write_private


class PairingFailed(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    device_id: str
    broker_url: str
    username: str | None
    password: str | None
    topic_root: str = "sovereign"
    ca_file: str | None = None


def default_path(device_id: str) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "sovereign" / f"agent-{device_id}.json"


def redeem(hub_url: str, code: str, device_id: str, timeout_s: float = 10.0) -> tuple[AgentCredentials, str | None]:
    """Exchange the code; returns the credentials and the CA certificate (PEM) if any."""
    body = json.dumps({"code": code, "device_id": device_id}).encode()
    req = urllib.request.Request(hub_url.rstrip("/") + "/api/pair", body, {"Content-Type": "application/json"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise PairingFailed(f"the hub at {hub_url} refused the pairing (HTTP {exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PairingFailed(f"no hub at {hub_url} ({getattr(exc, 'reason', exc)})") from None
    try:
        creds = AgentCredentials(device_id=doc["device_id"], broker_url=doc["broker_url"], username=doc["username"],
                                 password=doc["password"], topic_root=doc.get("topic_root", "sovereign"))
    except (KeyError, TypeError) as exc:
        raise PairingFailed(f"the hub at {hub_url} answered an unexpected pairing document ({exc})") from None
    return creds, doc.get("ca_pem")


def save(path: Path, creds: AgentCredentials, ca_pem: str | None) -> AgentCredentials:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if ca_pem:
        ca_path = path.with_suffix(".ca.pem")
        write_private(ca_path, ca_pem)
        creds = AgentCredentials(**{**asdict(creds), "ca_file": str(ca_path)})
    write_private(path, json.dumps(asdict(creds), indent=1))
    return creds


def load(path: Path) -> AgentCredentials | None:
    if not path.is_file():
        return None
    try:
        return AgentCredentials(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise PairingFailed(f"{path}: unreadable credentials ({exc}); pair again with --pair CODE") from None
