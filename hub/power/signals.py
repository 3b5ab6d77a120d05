"""Waking a device for real: Wake-on-LAN magic packets, or a smart plug's switch over MQTT.

A magic packet is 6 bytes of 0xFF followed by the target's MAC address 16 times (102 bytes),
sent as a UDP datagram to the LAN's broadcast address, conventionally on port 9 (discard) or 7
(echo); the network card matches the pattern whatever the port. UDP may drop a datagram, so
each port gets ``repeats`` packets ``interval_s`` apart.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..capability import WakeMethod
from ..topics import topic_matches

MAGIC_PREFIX = b"\xff" * 6


class WakeError(Exception):
    """The wake signal could not be sent; the message says where and why."""


def magic_packet(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise WakeError(f"mac {mac!r} is not 6 bytes")
    return MAGIC_PREFIX + raw * 16


def is_magic_packet(data: bytes, mac: str) -> bool:
    """What a listener checks: exactly the prefix and 16 copies of ``mac``."""
    return data == magic_packet(mac)


async def send_magic_packets(mac: str, broadcast: str, ports: list[int], repeats: int = 3,
                             interval_s: float = 0.1) -> int:
    """Send ``repeats`` packets to each port; returns how many were sent. Raises WakeError with
    the address and the system's reason when the address cannot be reached at all."""
    packet = magic_packet(mac)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setblocking(False)
    sent = 0
    try:
        for i in range(repeats):
            if i:
                await asyncio.sleep(interval_s)
            for port in ports:
                try:
                    await loop.sock_sendto(sock, packet, (broadcast, port))
                except OSError as exc:
                    raise WakeError(f"magic packet to {broadcast}:{port}: {exc.strerror or exc}") from None
                sent += 1
    finally:
        sock.close()
    return sent


Publish = Callable[[str, str], Awaitable[None]]


@dataclass
class WakeSignals:
    """Sends a device's announced wake signal. ``publish`` is the hub's MQTT link (topic,
    payload); ``switch_topics`` the filters a plug's command topic must match."""

    publish: Publish | None
    switch_topics: list[str]
    repeats: int = 3
    interval_s: float = 0.1

    async def send(self, device_id: str, wake: WakeMethod) -> str:
        """What was sent, in words; WakeError when nothing could be."""
        if wake.kind == "wol":
            assert wake.mac is not None  # WakeMethod's validator
            n = await send_magic_packets(wake.mac, wake.broadcast, wake.ports, self.repeats, self.interval_s)
            return f"{n} magic packets for {wake.mac} to {wake.broadcast} port {'/'.join(map(str, wake.ports))}"
        if wake.kind == "ha_switch":
            topic = wake.command_topic or ""
            if not any(topic_matches(f, topic) for f in self.switch_topics):
                raise WakeError(f"{device_id}'s switch topic {topic!r} is not among power.switch_topics "
                                f"({', '.join(self.switch_topics) or 'none configured'}): the hub publishes only "
                                "to plugs its owner allowed")
            if self.publish is None:
                raise WakeError("no MQTT link to publish the switch command on")
            await self.publish(topic, wake.payload_on)
            return f"switch {topic} set {wake.payload_on}"
        raise WakeError(f"{device_id} announced no way to wake it (wake kind none)")
