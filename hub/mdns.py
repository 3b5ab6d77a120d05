"""Shared zeroconf settings for the hub and the agent."""

from __future__ import annotations

import ipaddress
from typing import Literal

from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncZeroconf

SERVICE_TYPE = "_sovereign._tcp.local."


def open_zeroconf(interfaces: Literal["all"] | list[str]) -> AsyncZeroconf:
    """``interfaces`` is "all" or a list of addresses. Restricting to ["127.0.0.1"] keeps all
    multicast on the loopback interface (tests and the demo do that)."""
    if interfaces == "all":
        return AsyncZeroconf(interfaces=InterfaceChoice.All)
    v4 = all(ipaddress.ip_address(a).version == 4 for a in interfaces)
    return AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only if v4 else IPVersion.All)
