"""A supervised MQTT connection shared by the hub and the agent.

aiomqtt gives one connection per ``async with``; this wraps it in a reconnect loop with
exponential backoff that re-subscribes and re-publishes the birth message (and whatever the
owner's ``on_connect`` does, such as a retained announcement) after every reconnect, so that
a broker restart is invisible to the rest of the code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties

from .config import BrokerUrl, TlsConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Birth:
    """A retained status topic: ``online`` after each connect, ``offline`` as the last will."""

    topic: str
    online: bytes = b"online"
    offline: bytes = b"offline"


@dataclass(slots=True)
class MqttOptions:
    url: BrokerUrl
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = 30
    birth: Birth | None = None
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    backoff_max_s: float = 10.0
    #: Messages the broker may queue for us; raised from paho's default for announce storms.
    max_queued_incoming: int = 0


def _tls_context(tls: TlsConfig | None, scheme: str) -> ssl.SSLContext | None:
    if tls is None and scheme != "mqtts":
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file.expanduser()) if tls and tls.ca_file else None)
    if tls and tls.cert_file and tls.key_file:
        ctx.load_cert_chain(str(tls.cert_file.expanduser()), str(tls.key_file.expanduser()))
    if tls and tls.insecure:
        ctx.check_hostname = False
    return ctx


MessageHandler = Callable[[aiomqtt.Message], None]


class MqttLink:
    """``async with MqttLink(opts, on_message) as link: await link.publish(...)``."""

    def __init__(self, opts: MqttOptions, on_message: MessageHandler,
                 on_connect: Callable[["MqttLink"], Awaitable[None]] | None = None,
                 on_state: Callable[[bool, str], None] | None = None) -> None:
        self.opts = opts
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_state = on_state
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.connect_count = 0
        self.last_error = ""
        self._closing = False

    @property
    def url(self) -> str:
        return str(self.opts.url)

    async def __aenter__(self) -> "MqttLink":
        self._task = asyncio.create_task(self._run(), name=f"mqtt {self.opts.client_id or ''}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        client = self._client
        if client is not None and self.connected.is_set() and self.opts.birth:
            # A clean stop says so itself: the broker does not send the will on DISCONNECT.
            try:
                await asyncio.wait_for(
                    client.publish(self.opts.birth.topic, self.opts.birth.offline, qos=1, retain=True), 2)
            except (aiomqtt.MqttError, asyncio.TimeoutError):
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                      properties: Properties | None = None) -> bool:
        """Publish if connected; returns False (and drops the message) otherwise."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            return True
        except aiomqtt.MqttError as exc:
            log.debug("publish to %s failed: %s", topic, exc)
            return False

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        if (topic, qos) not in self.opts.subscriptions:
            self.opts.subscriptions.append((topic, qos))
        if self._client is not None and self.connected.is_set():
            await self._client.subscribe(topic, qos)

    def _client_kwargs(self) -> dict[str, Any]:
        o = self.opts
        will = aiomqtt.Will(o.birth.topic, o.birth.offline, qos=1, retain=True) if o.birth else None
        return dict(
            hostname=o.url.host, port=o.url.port, identifier=o.client_id, username=o.username,
            password=o.password, keepalive=o.keepalive_s, will=will,
            protocol=aiomqtt.ProtocolVersion.V5, tls_context=_tls_context(o.tls, o.url.scheme),
            max_queued_incoming_messages=o.max_queued_incoming, timeout=10,
        )

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with aiomqtt.Client(**self._client_kwargs()) as client:
                    self._client = client
                    for topic, qos in self.opts.subscriptions:
                        await client.subscribe(topic, qos)
                    if self.opts.birth:
                        await client.publish(self.opts.birth.topic, self.opts.birth.online, qos=1, retain=True)
                    self.connect_count += 1
                    self.connected.set()
                    self.last_error = ""
                    if self._on_state:
                        self._on_state(True, "")
                    if self._on_connect is not None:
                        await self._on_connect(self)
                    backoff = 0.2
                    async for message in client.messages:
                        try:
                            self._on_message(message)
                        except Exception:  # a handler bug must not take the connection down
                            log.exception("MQTT handler failed on %s", message.topic)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                log.warning("MQTT %s: %s; reconnecting in %.1f s", self.url, exc, backoff)
            finally:
                self._client = None
                was = self.connected.is_set()
                self.connected.clear()
                if was and self._on_state and not self._closing:
                    self._on_state(False, self.last_error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.opts.backoff_max_s)
