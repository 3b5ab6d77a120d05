"""Who may talk to the hub over MQTT: paired devices, command clients, the hub itself.

The trust store is the authority on pairing. It keeps one credential per MQTT identity (role,
name, a Mosquitto ``$7$`` PBKDF2-SHA512 hash — never a password) and the one-time pairing codes
that are waiting to be redeemed, in ``data_dir/trust.json`` (mode 0600, replaced atomically).
From it the embedded broker's ``password_file`` and ``acl_file`` are rendered: every identity may
publish and read only its own topics (docs/security.md lists them).

Passwords are 32 random bytes, so the hash's stretching adds little; Mosquitto's own default of
101 iterations keeps a connection's check cheap during an announce storm.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .capability import is_valid_device_id
from .private_file import write_private

#: Mosquitto's password-file format: ``user:$7$<iterations>$<salt b64>$<hash b64>``.
HASH_ITERATIONS = 101
#: Unambiguous characters for codes a person types (no 0/O, 1/I/L).
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_GROUPS, CODE_GROUP_LEN = 3, 4
CLIENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Role(str, enum.Enum):
    hub = "hub"
    device = "device"
    client = "client"
    homeassistant = "homeassistant"


class TrustError(ValueError):
    """A pairing request or credential change that cannot be done; the message says why."""


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, stored: str) -> bool:
    try:
        _, kind, iterations, salt, _digest = stored.split("$")
        if kind != "7":
            return False
        return hmac.compare_digest(mosquitto_hash(password, base64.b64decode(salt), int(iterations)), stored)
    except ValueError:
        return False


def username_for(role: Role, name: str) -> str:
    """Usernames carry their role, so that a client named like a device is still a client."""
    return f"{role.value}-{name}"


def _digest(code: str) -> str:
    return hashlib.sha256(normalize_code(code).encode()).hexdigest()


def normalize_code(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())


@dataclass(slots=True)
class Credential:
    role: Role
    name: str
    password_hash: str
    created: float
    #: Extra topic filters this identity may publish / read beyond its role's (e.g. a gaze tracker
    #: publishing ``sovereign/gaze/samples``).
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)

    @property
    def username(self) -> str:
        return username_for(self.role, self.name)

    def public(self) -> dict[str, object]:
        return {"username": self.username, "role": self.role.value, "name": self.name, "created": self.created,
                "publish": self.publish, "subscribe": self.subscribe}


@dataclass(slots=True)
class PairingCode:
    digest: str
    expires: float
    #: When set, the code pairs only this device id.
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential just made: the only time its password exists in clear."""

    username: str
    password: str


class TrustStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._creds: dict[str, Credential] = {}
        self._codes: list[PairingCode] = []
        self._load()

    # -- persistence -----------------------------------------------------------------------

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text())
            for c in data.get("credentials", []):
                cred = Credential(Role(c["role"]), c["name"], c["password_hash"], float(c["created"]),
                                  list(c.get("publish", [])), list(c.get("subscribe", [])))
                self._creds[cred.username] = cred
            self._codes = [PairingCode(c["digest"], float(c["expires"]), c.get("device_id"))
                           for c in data.get("codes", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Refuse to start rather than silently un-pair every device.
            raise TrustError(f"{self.path}: unreadable ({exc}); restore it from a backup or delete it "
                             "to pair every device again") from None

    def _save(self) -> None:
        data = {"credentials": [dict(asdict(c), role=c.role.value) for c in self._creds.values()],
                "codes": [asdict(c) for c in self._codes]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(data, indent=1))

    # -- queries ---------------------------------------------------------------------------

    def is_paired(self, device_id: str) -> bool:
        return username_for(Role.device, device_id) in self._creds

    def paired_devices(self) -> list[str]:
        return sorted(c.name for c in self._creds.values() if c.role is Role.device)

    def credentials(self) -> list[Credential]:
        return sorted(self._creds.values(), key=lambda c: c.username)

    def open_codes(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(1 for c in self._codes if c.expires > now)

    # -- changes ---------------------------------------------------------------------------

    def issue(self, role: Role, name: str, publish: list[str] | None = None,
              subscribe: list[str] | None = None, persist: bool = True) -> Issued:
        """A new password for (role, name), replacing any earlier one (pairing again rotates)."""
        if role is Role.device and not is_valid_device_id(name):
            raise TrustError(f"invalid device id {name!r}")
        if role is not Role.device and not CLIENT_NAME.match(name):
            raise TrustError(f"invalid name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
        for flt in (publish or []) + (subscribe or []):
            _check_filter(flt)
        password = secrets.token_urlsafe(32)
        cred = Credential(role, name, mosquitto_hash(password), time.time(), list(publish or []), list(subscribe or []))
        self._creds[cred.username] = cred
        if persist:
            self._save()
        return Issued(cred.username, password)

    def revoke(self, username: str) -> bool:
        if self._creds.pop(username, None) is None:
            return False
        self._save()
        return True

    def new_code(self, ttl_s: float, device_id: str | None = None) -> str:
        if device_id is not None and not is_valid_device_id(device_id):
            raise TrustError(f"invalid device id {device_id!r}")
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LEN))
        code = "-".join(raw[i:i + CODE_GROUP_LEN] for i in range(0, len(raw), CODE_GROUP_LEN))
        now = time.time()
        self._codes = [c for c in self._codes if c.expires > now]
        self._codes.append(PairingCode(_digest(code), now + ttl_s, device_id))
        self._save()
        return code

    def redeem(self, code: str, device_id: str) -> Issued:
        """Exchange a one-time code for a device credential. The code is spent whatever the id."""
        if not is_valid_device_id(device_id):
            raise TrustError(f"invalid device id {device_id!r}")
        now, digest = time.time(), _digest(code)
        match = next((c for c in self._codes if hmac.compare_digest(c.digest, digest)), None)
        self._codes = [c for c in self._codes if c.expires > now and c is not match]
        if match is None or match.expires <= now:
            self._save()
            raise TrustError("unknown or expired pairing code")
        if match.device_id is not None and match.device_id != device_id:
            self._save()
            raise TrustError(f"this code pairs {match.device_id!r}, not {device_id!r}")
        return self.issue(Role.device, device_id)

    # -- the broker's files ----------------------------------------------------------------

    def passwd_text(self, extra: dict[str, str] | None = None) -> str:
        """Mosquitto ``password_file``: every stored credential, plus ``extra`` (username →
        hash; the hub's own, which is made anew at each start and never stored)."""
        lines = [f"{c.username}:{c.password_hash}" for c in self.credentials()]
        lines += [f"{user}:{h}" for user, h in (extra or {}).items()]
        return "\n".join(lines) + "\n"

    def acl_text(self, root: str, hub_username: str, ha_prefix: str | None, hub_writes: list[str] | None = None) -> str:
        return acl_text(self.credentials(), root, hub_username, ha_prefix, hub_writes)


def _check_filter(flt: str) -> None:
    if not flt or len(flt) > 256 or "\n" in flt or flt.startswith("$") or ("#" in flt and not flt.endswith("#")):
        raise TrustError(f"invalid topic filter {flt!r}")


def role_grants(role: Role, name: str, root: str, ha_prefix: str | None) -> list[tuple[str, str]]:
    """(access, topic filter) for one identity: what each role may do, in one place."""
    read_status = [("read", f"{root}/hub/status"), ("read", f"{root}/energy/site")]
    if role is Role.device:
        base = f"{root}/device/{name}"
        return [("write", f"{base}/announce"), ("write", f"{base}/status"), ("write", f"{base}/energy"),
                ("write", f"{base}/voice"), ("read", f"{base}/rpc"),
                # RPC replies go to the asking hub's reply topic; correlation ids are random and
                # a device reads no other device's requests, so it cannot answer for another.
                ("write", f"{root}/hub/+/reply"), *read_status]
    if role is Role.client:
        user = username_for(role, name)
        return [("write", f"{root}/cmd/#"), ("read", f"{root}/reply/{user}/#"), ("read", f"{root}/eeg/#"),
                ("read", f"{root}/gaze/attention"), *read_status]
    if role is Role.homeassistant:
        grants = [("read", f"{root}/#")]
        if ha_prefix:
            grants += [("read", f"{ha_prefix}/#"), ("write", f"{ha_prefix}/status")]
        return grants
    return []


def acl_text(creds: list[Credential], root: str, hub_username: str, ha_prefix: str | None,
             hub_writes: list[str] | None = None) -> str:
    """``hub_writes``: further topics the hub publishes to (power.switch_topics: smart plugs)."""
    for flt in hub_writes or ():
        _check_filter(flt)
    blocks = [f"user {hub_username}\ntopic readwrite {root}/#\n"
              + (f"topic readwrite {ha_prefix}/#\n" if ha_prefix else "")
              + "".join(f"topic write {t}\n" for t in hub_writes or ())]
    for cred in creds:
        grants = role_grants(cred.role, cred.name, root, ha_prefix)
        grants += [("write", t) for t in cred.publish] + [("read", t) for t in cred.subscribe]
        blocks.append(f"user {cred.username}\n" + "".join(f"topic {a} {t}\n" for a, t in grants))
    return "\n".join(blocks)
