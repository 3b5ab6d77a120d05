"""Hub configuration: a TOML file validated into typed models.

Every error names the key path and the problem, e.g.
``config.toml: mqtt.port: Input should be less than or equal to 65535 (got 70000)``.
Nothing is required: an empty file (or none) gives a working hub with an embedded broker.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .energy.model import ModeThresholds
from .memory.config import MemoryConfig
from .power.plan import PowerConfig
from .router.route import RouterConfig


class ConfigError(Exception):
    """A configuration problem, with every offending key path in the message."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Skip hostname verification (self-signed lab setups). Certificates are still checked.
    insecure: bool = False

    @model_validator(mode="after")
    def _files_exist(self) -> "TlsConfig":
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"{name}: file not found: {path}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerUrl(BaseModel):
    scheme: Literal["mqtt", "mqtts"]
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> "BrokerUrl":
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise ValueError(f"broker URL has an invalid port: {url!r}") from exc
        return cls(scheme=parts.scheme, host=parts.hostname, port=port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class MqttConfig(_Section):
    #: Broker to use. When absent the hub starts and supervises its own Mosquitto.
    url: str | None = None
    topic_root: str = Field(default="sovereign", pattern=r"^[^#+/][^#+]*[^#+/]$|^[^#+/]$")
    client_id: str | None = Field(default=None, max_length=64)
    username: str | None = None
    password: str | None = None
    #: Read the password from this file instead of putting it in the config.
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    #: Payloads larger than this are rejected before parsing.
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Hubs sharing one fleet take commands through the MQTT 5 shared subscription
    #: ``$share/<group>/<root>/cmd/#``: each command reaches one of them. Null: a plain
    #: subscription (every hub would answer every command).
    share_group: str | None = Field(default="sovereign", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            BrokerUrl.parse(v)
        return v

    @model_validator(mode="after")
    def _password(self) -> "MqttConfig":
        if self.password and self.password_file:
            raise ValueError("give password or password_file, not both")
        if self.password_file is not None and not self.password_file.expanduser().is_file():
            raise ValueError(f"password_file: file not found: {self.password_file}")
        return self

    def broker_url(self) -> BrokerUrl | None:
        return BrokerUrl.parse(self.url) if self.url else None

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.expanduser().read_text().strip()
        return self.password


class EmbeddedBrokerConfig(_Section):
    """The Mosquitto the hub starts when ``mqtt.url`` is not set."""

    binary: str = "mosquitto"
    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = Field(default=1883, ge=0, le=65535)
    restart_backoff_max_s: float = Field(default=10, gt=0, le=300)
    #: TLS on the broker's listener with a certificate from a CA the hub makes (data_dir/
    #: mosquitto/tls/ca.pem, handed to devices when they pair). ``auto``: on when ``host`` is
    #: not a loopback address. Off loopback, plain MQTT is refused: passwords would cross the LAN
    #: in clear.
    tls: Literal["auto", "on", "off"] = "auto"
    #: Extra host names or addresses for the broker's certificate (the machine's own names and
    #: addresses are always in it).
    tls_names: list[str] = Field(default_factory=list)
    #: Log refused logins and, when true, each ACL denial (Mosquitto logs those at debug level
    #: only, with every message it relays: costly, for diagnosis).
    log_denials: bool = False

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> "EmbeddedBrokerConfig":
        if self.tls == "off" and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} is not loopback: the broker needs TLS there (tls = \"auto\" or \"on\")")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls == "on" or (self.tls == "auto" and not is_loopback(self.host))


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    #: Bearer token. Required when ``host`` is not a loopback address. May also come from
    #: the SOVEREIGN_TOKEN environment variable.
    token: str | None = Field(default=None, min_length=16)
    #: When a token is needed (hub/auth.py): ``writes`` — every write and every request from
    #: off the loopback; ``remote`` — only requests from off the loopback; ``always``.
    require_token: Literal["writes", "remote", "always"] = "writes"
    #: Wrong tokens from one client within a minute before it is refused for the rest of it.
    max_failures_per_minute: int = Field(default=10, ge=1, le=10_000)
    #: Names the hub answers to besides IP literals, ``localhost`` and this machine's name (with
    #: and without ``.local``): a request whose Host header names anything else is refused, so
    #: that a DNS name re-pointed at the hub (DNS rebinding) cannot reach it. E.g. ["hub.lan"].
    allowed_hosts: list[str] = []
    #: Origins (``scheme://host[:port]``) whose pages may call the API besides the hub's own,
    #: e.g. a reverse proxy's public name when it rewrites Host. E.g. ["https://hub.example.org"].
    allowed_origins: list[str] = []

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        from .auth import split_host
        for h in v:
            if (parsed := split_host(h)) is None or parsed[1] is not None:
                raise ValueError(f"{h!r} is not a host name (a name only: no scheme, port or path)")
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        from .auth import parse_origin
        for o in v:
            if parse_origin(o) is None:
                raise ValueError(f"{o!r} is not an origin (http:// or https://, a host and an optional port, no path)")
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "HttpConfig":
        if self.token is None:
            self.token = os.environ.get("SOVEREIGN_TOKEN") or None
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"host {self.host!r} is not loopback: set http.token (16+ characters) or SOVEREIGN_TOKEN"
            )
        return self


class DiscoveryConfig(_Section):
    #: A device sending nothing (announce, energy, status) for this long is marked offline.
    heartbeat_timeout_s: float = Field(default=30, gt=0, le=86_400)
    #: Devices offline for longer than this are removed and their retained topics cleared.
    forget_after_s: float = Field(default=7 * 86_400, gt=0)


class ZeroconfConfig(_Section):
    enabled: bool = True
    #: "all", or a list of interface addresses (e.g. ["127.0.0.1"] to keep mDNS on loopback).
    interfaces: Literal["all"] | list[str] = "all"
    #: Timeout for fetching a device's capability document over HTTP.
    fetch_timeout_s: float = Field(default=5, gt=0, le=120)

    @field_validator("interfaces")
    @classmethod
    def _addresses(cls, v: Any) -> Any:
        if isinstance(v, list):
            for addr in v:
                ipaddress.ip_address(addr)
        return v


class EnergyConfig(_Section):
    thresholds: ModeThresholds = Field(default_factory=ModeThresholds)
    #: Power readings beyond this (W, either sign) are refused as implausible for a home.
    max_site_power_w: float = Field(default=100_000, gt=0, le=1_000_000)
    #: The snapshot is published on <root>/energy/site at most this often, and at least
    #: every publish_interval_s even when nothing changed (so that ages stay true).
    min_publish_interval_s: float = Field(default=1.0, ge=0.05, le=3600)
    publish_interval_s: float = Field(default=10.0, ge=0.1, le=3600)


class InfluxConfig(_Section):
    url: str
    org: str = "sovereign"
    bucket: str = "sovereign"
    #: Or the INFLUX_TOKEN environment variable.
    token: str | None = None
    #: Points kept on disk while the server is unreachable; the oldest are dropped beyond it.
    spool_max_points: int = Field(default=1_000_000, ge=1000)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=600)
    timeout_s: float = Field(default=10, gt=0, le=300)


class HistoryConfig(_Section):
    #: Raw points are kept this long; older ones survive as 5-minute aggregates.
    raw_retention_days: float = Field(default=7, gt=0, le=3650)
    rollup_retention_days: float = Field(default=365, gt=0, le=36500)
    influx: InfluxConfig | None = None


class DispatchConfig(_Section):
    """Running routed tasks: attempts, escalation, limits."""

    #: An attempt may take this many times the candidate's predicted p95 before the next
    #: candidate is tried, but never less than ``min_attempt_ms``.
    attempt_timeout_factor: float = Field(default=3.0, ge=1)
    min_attempt_ms: float = Field(default=1000, gt=0)
    #: Candidates tried before giving up (busy refusals do not count).
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: Calls that may wait for each slot of a model's announced max_concurrency; beyond, or when
    #: the wait would not fit in the request's budget, the hub tries the next candidate or
    #: answers 503 ``overloaded``.
    queue_per_slot: int = Field(default=8, ge=0, le=1000)
    #: Largest input accepted from a client (text, or base64 data once decoded).
    max_input_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Largest audio input (transcribe, wakeword; decoded bytes): 10 min of 16 kHz 16-bit mono is
    #: 19.2 MB.
    max_audio_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    #: A request with no ``timeout_ms`` of its own ends after this.
    default_timeout_ms: float = Field(default=30_000, gt=0, le=3_600_000)

    def max_body_bytes(self) -> int:
        """The largest request body to read (HTTP, an MQTT command): the larger input cap as JSON
        text (escaping can double text; base64 is 4/3 of the bytes) plus the envelope."""
        return max(1024 * 1024, self.max_input_bytes * 2, self.max_audio_bytes * 4 // 3) + 64 * 1024
    #: Consensus fan-out.
    consensus_k: int = Field(default=3, ge=2, le=9)
    #: Deferred requests held at once (beyond: run now).
    max_deferred: int = Field(default=10_000, ge=0)
    #: After a restart, deferred requests read back from the data directory run no sooner than
    #: this: the devices' retained announcements arrive first.
    resume_after_s: float = Field(default=2.0, ge=0, le=600)


class PairingConfig(_Section):
    """Which devices the hub routes to (hub/trust.py, docs/security.md)."""

    #: Route only to paired devices; others are shown as pending. False trusts every device the
    #: broker lets announce: only for an external broker whose own ACLs bind each device to its
    #: topics (the hub warns at start).
    required: bool = True
    #: How long a pairing code from ``sovereign pair`` stays valid.
    code_ttl_s: float = Field(default=600, ge=10, le=7 * 86_400)
    #: Wrong pairing codes from one client address within a minute before it is refused (429).
    max_failures_per_minute: int = Field(default=5, ge=1, le=1000)


class HomeAssistantConfig(_Section):
    """MQTT discovery for Home Assistant (hub/homeassistant.py)."""

    enabled: bool = True
    prefix: str = Field(default="homeassistant", pattern=r"^[^#+/][^#+]*[^#+/]$|^[^#+/]$")
    #: How often states are re-published (they are also published on every change).
    state_interval_s: float = Field(default=30.0, ge=1, le=3600)


class HubConfig(_Section):
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    hub_id: str = Field(default="hub", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    broker: EmbeddedBrokerConfig = Field(default_factory=EmbeddedBrokerConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    zeroconf: ZeroconfConfig = Field(default_factory=ZeroconfConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    power: PowerConfig = Field(default_factory=PowerConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    #: Per-plugin sections, validated by each plugin's own model when it loads.
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)


def default_data_dir() -> Path:
    if explicit := os.environ.get("SOVEREIGN_DATA_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "sovereign"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_validation_error(exc: ValidationError, prefix: str = "", base: str = "") -> str:
    """One line per problem: ``<prefix><base>.<path>: <message> (got <value>)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "function-before"))
        path = ".".join(p for p in (base, loc) if p) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list, bytes)) or got is None else f" (got {_short(got)})"
        lines.append(f"{prefix}{path}: {msg}{shown}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def parse_config(data: dict[str, Any], source: str = "<config>") -> HubConfig:
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{source}: ")) from None


def load_config(path: Path | None) -> HubConfig:
    """Load and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return parse_config({})
    try:
        raw = path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, source=str(path))
