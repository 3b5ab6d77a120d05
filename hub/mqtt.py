"""A supervised MQTT 5 connection shared by the hub and the agent: paho-mqtt driven by asyncio.

paho does the protocol; the event loop does the I/O (``add_reader``/``add_writer`` on paho's
socket, ``loop_misc`` once a second for keep-alive), and every incoming message goes straight to
the owner's synchronous handler in the loop thread — no queue, no task per message. (aiomqtt
does the same I/O, but its message iterator costs a task and an ``asyncio.wait`` per message,
which tripled the hub's time in an announce storm.)

Around one connection sits a reconnect loop with exponential backoff that re-subscribes and
re-publishes the birth message (and whatever the owner's ``on_connect`` does, such as a retained
announcement) after every reconnect, so that a broker restart is invisible to the rest of the
code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import BrokerUrl, TlsConfig

log = logging.getLogger(__name__)

Message = paho.MQTTMessage


class MqttError(Exception):
    pass


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
    connect_timeout_s: float = 10.0


def _tls_context(tls: TlsConfig | None, scheme: str) -> ssl.SSLContext | None:
    if tls is None and scheme != "mqtts":
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file.expanduser()) if tls and tls.ca_file else None)
    if tls and tls.cert_file and tls.key_file:
        ctx.load_cert_chain(str(tls.cert_file.expanduser()), str(tls.key_file.expanduser()))
    if tls and tls.insecure:
        ctx.check_hostname = False
    return ctx


MessageHandler = Callable[[Message], None]


def publish_properties(correlation: bytes | None, response_topic: str | None = None) -> Properties | None:
    """MQTT 5 request/response properties for a PUBLISH (None when there are none). Built once
    per exchange and reused: paho's Properties cost ~20 µs each."""
    if correlation is None and response_topic is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


class _Connection:
    """One paho client on one socket, its I/O driven by the event loop."""

    def __init__(self, opts: MqttOptions, on_message: MessageHandler) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.connack: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._misc: asyncio.Task[None] | None = None
        self._sock: Any = None
        self._flush_pending = False
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=opts.client_id or "", protocol=paho.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        if opts.username is not None:
            c.username_pw_set(opts.username, opts.password)
        if opts.birth is not None:
            c.will_set(opts.birth.topic, opts.birth.offline, qos=1, retain=True)
        ctx = _tls_context(opts.tls, opts.url.scheme)
        if ctx is not None:
            c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = lambda _c, _u, message: on_message(message)
        c.on_socket_open = lambda _c, _u, sock: self._in_loop(self._socket_open, sock)
        c.on_socket_close = lambda _c, _u, sock: self._in_loop(self._socket_close, sock)
        c.on_socket_register_write = lambda _c, _u, sock: self._in_loop(self._writer, sock, True)
        c.on_socket_unregister_write = lambda _c, _u, sock: self._in_loop(self._writer, sock, False)
        self.client = c

    # paho calls the socket hooks from the executor thread during connect(), from the loop after.
    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, sock: Any) -> None:
        self._sock = sock
        # paho leaves Nagle on: small RPC packets would wait for the peer's delayed ACK.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, self._read)
        self._misc = self.loop.create_task(self._misc_loop())

    def _socket_close(self, sock: Any) -> None:
        try:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        except (ValueError, OSError):  # already closed
            pass
        if self._misc is not None:
            self._misc.cancel()

    def _writer(self, sock: Any, on: bool) -> None:
        if sock.fileno() < 0:
            return
        if on:
            # Usually the socket can take the bytes at once: write them at the end of this loop
            # iteration (one write for every publish queued meanwhile) and only wait for
            # writability when the kernel buffer is full — not an epoll registration and an
            # extra loop turn per publish.
            if not self._flush_pending:
                self._flush_pending = True
                self.loop.call_soon(self._flush)
        else:
            self.loop.remove_writer(sock)

    def _flush(self) -> None:
        self._flush_pending = False
        self.client.loop_write()
        sock = self.client.socket()
        if sock is not None and self.client.want_write():
            self.loop.add_writer(sock, self._write)

    def _read(self) -> None:
        # paho reads one packet per loop_read(). Keep reading while bytes are waiting, so that a
        # burst costs one trip through the event loop instead of one per packet. An SSL socket
        # may also hold decoded bytes that epoll cannot see.
        for _ in range(256):
            self.client.loop_read()
            sock = self.client.socket()
            if sock is None:
                return
            if isinstance(sock, ssl.SSLSocket):
                if sock.pending() > 0:
                    continue
                return
            try:
                if not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return  # EOF: the next readable event lets paho see it
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def _write(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    # -- protocol callbacks (loop thread) -------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connack.done():
            return
        if reason.is_failure:
            hint = ""
            if reason.value in (0x86, 0x87, 4, 5):  # bad user name or password / not authorized (v5, v3)
                hint = (" — this login is unknown to the broker or was revoked; a device gets its own with "
                        "`sovereign pair` on the hub, then `sovereign agent --hub URL --pair CODE`")
            self.connack.set_exception(MqttError(f"broker refused the connection: {reason}{hint}"))
        else:
            self.connack.set_result(None)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        text = str(reason)
        if not self.connack.done():
            self.connack.set_exception(MqttError(f"disconnected before CONNACK: {text}"))
        if not self.closed.done():
            self.closed.set_result(text)
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(MqttError(f"connection lost: {text}"))
        self._acks.clear()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            failed = [str(r) for r in reasons if r.is_failure]
            fut.set_exception(MqttError(f"subscription refused: {failed}")) if failed else fut.set_result(None)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- operations ----------------------------------------------------------------------------

    async def connect(self, opts: MqttOptions) -> None:
        # connect() resolves the name and opens the TCP/TLS socket: blocking, so off the loop.
        rc = await self.loop.run_in_executor(None, functools.partial(
            self.client.connect, opts.url.host, opts.url.port, opts.keepalive_s, clean_start=True))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"connect failed: {paho.error_string(rc)}")
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that comes as
        # the awaited future completes, and MqttLink._run then waited on `closed` for ever: a
        # hub stopped just as it connected never stopped (tests/test_first_hour_cli.py).
        async with asyncio.timeout(opts.connect_timeout_s):
            await asyncio.shield(self.connack)

    def _ack(self, mid: int) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        self._acks[mid] = fut
        return fut

    async def subscribe(self, topic: str, qos: int) -> None:
        rc, mid = self.client.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe to {topic} failed: {paho.error_string(rc)}")
        async with asyncio.timeout(10):  # not wait_for: see connect()
            await self._ack(mid)

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool,
                properties: Properties | None) -> asyncio.Future[Any] | None:
        """Queue a publish; returns a future resolved on PUBACK (QoS > 0), or None on failure."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        if qos == 0:
            done = self.loop.create_future()
            done.set_result(None)
            return done
        if info.is_published():
            done = self.loop.create_future()
            done.set_result(None)
            return done
        return self._ack(info.mid)

    def close(self) -> None:
        if self.client.socket() is not None:
            self.client.disconnect()
        sock = self._sock
        if sock is not None:
            self._socket_close(sock)
        for fut in (self.connack, self.closed):
            if not fut.done():
                fut.cancel()


class MqttLink:
    """``async with MqttLink(opts, on_message) as link: await link.publish(...)``."""

    def __init__(self, opts: MqttOptions, on_message: MessageHandler,
                 on_connect: Callable[["MqttLink"], Awaitable[None]] | None = None,
                 on_state: Callable[[bool, str], None] | None = None) -> None:
        self.opts = opts
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_state = on_state
        self._conn: _Connection | None = None
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

    async def close(self, say_offline: bool = True) -> None:
        """``say_offline=False`` leaves the retained status as it is (an agent going to sleep
        has just published ``sleeping``); the clean DISCONNECT keeps the will unsent either way."""
        self._closing = True
        if say_offline and self.connected.is_set() and self.opts.birth:
            # A clean stop says so itself: the broker does not send the will on DISCONNECT.
            await self.publish(self.opts.birth.topic, self.opts.birth.offline, qos=1, retain=True, wait_s=2)
        task, self._task = self._task, None
        # Cancelled until it ends: a cancellation swallowed inside (wait_for in a callee, say)
        # must not leave the caller waiting for ever.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.debug("MQTT task ended with %r", task.exception())

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                      properties: Properties | None = None, wait_s: float | None = None) -> bool:
        """Publish if connected; returns False (and drops the message) otherwise. With
        ``wait_s``, waits that long for the broker's acknowledgement (QoS > 0)."""
        conn = self._conn
        if conn is None or not self.connected.is_set():
            return False
        ack = conn.publish(topic, payload, qos, retain, properties)
        if ack is None:
            return False
        if wait_s is not None:
            try:
                await asyncio.wait_for(ack, wait_s)
            except (MqttError, asyncio.TimeoutError):
                return False
        return True

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        if (topic, qos) not in self.opts.subscriptions:
            self.opts.subscriptions.append((topic, qos))
        if self._conn is not None and self.connected.is_set():
            await self._conn.subscribe(topic, qos)

    def _handle(self, message: Message) -> None:
        try:
            self._on_message(message)
        except Exception:  # a handler bug must not take the connection down
            log.exception("MQTT handler failed on %s", message.topic)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            conn = _Connection(self.opts, self._handle)
            try:
                await conn.connect(self.opts)
                self._conn = conn
                for topic, qos in self.opts.subscriptions:
                    await conn.subscribe(topic, qos)
                if self.opts.birth:
                    conn.publish(self.opts.birth.topic, self.opts.birth.online, 1, True, None)
                self.connect_count += 1
                self.connected.set()
                self.last_error = ""
                if self._on_state:
                    self._on_state(True, "")
                if self._on_connect is not None:
                    await self._on_connect(self)
                backoff = 0.2
                reason = await conn.closed
                raise MqttError(f"connection lost: {reason}")
            except (MqttError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("MQTT %s: %s; reconnecting in %.1f s", self.url, self.last_error, backoff)
            finally:
                self._conn = None
                was = self.connected.is_set()
                self.connected.clear()
                conn.close()
                if was and self._on_state and not self._closing:
                    self._on_state(False, self.last_error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.opts.backoff_max_s)
