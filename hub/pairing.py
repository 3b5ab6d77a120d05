"""The running hub's trust decisions: who is paired, pairing codes and logins, applied at once.

``TrustStore`` (hub/trust.py) keeps the facts; this service changes them and makes each change
take effect: the embedded broker re-reads its password and ACL files, and ``on_change`` tells the
hub (the router's fleet view, the dashboard, Home Assistant).
"""

from __future__ import annotations

from collections.abc import Callable

from .broker import EmbeddedBroker
from .config import PairingConfig
from .trust import Issued, Role, TrustStore, username_for


class Pairing:
    def __init__(self, store: TrustStore, cfg: PairingConfig, broker: EmbeddedBroker | None,
                 on_change: Callable[[str | None], None]) -> None:
        self.store, self.cfg, self.broker, self._on_change = store, cfg, broker, on_change

    def is_trusted(self, device_id: str) -> bool:
        """May the router send work to this device? Paired, or pairing not required."""
        return not self.cfg.required or self.store.is_paired(device_id)

    def pair_device(self, device_id: str) -> Issued:
        """New credentials for a device (pairing again rotates them)."""
        issued = self.store.issue(Role.device, device_id)
        self._apply(device_id)
        return issued

    def redeem(self, code: str, device_id: str) -> Issued:
        issued = self.store.redeem(code, device_id)
        self._apply(device_id)
        return issued

    def add_client(self, role: Role, name: str, publish: list[str], subscribe: list[str]) -> Issued:
        issued = self.store.issue(role, name, publish, subscribe)
        self._apply(None)
        return issued

    def unpair(self, device_id: str) -> bool:
        """Revoke the device's login: a connected device is cut off by the broker's reload."""
        return self.revoke(username_for(Role.device, device_id), device_id)

    def revoke(self, username: str, device_id: str | None = None) -> bool:
        if not self.store.revoke(username):
            return False
        self._apply(device_id)
        return True

    def _apply(self, device_id: str | None) -> None:
        if self.broker is not None:
            self.broker.reload()
        self._on_change(device_id)
