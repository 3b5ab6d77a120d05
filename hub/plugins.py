"""Loading plugins from the ``sovereign.plugins`` entry-point group.

Built-in plugins are declared in this project's ``pyproject.toml`` exactly as a third-party
package would declare its own, so both take this one path. A plugin that fails to import or to
set up is reported (log and ``/api/health``) and skipped; a plugin *config* error stops the hub
at start-up with the key path, like any other config error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .bus import EventBus
from .config import ConfigError, format_validation_error
from .energy.store import EnergyStore
from .plugin_api import DeviceSink, EnergySink, Plugin, PluginContext, PluginServices
from .registry import DeviceRegistry
from .state import StateStore

log = logging.getLogger(__name__)

GROUP = "sovereign.plugins"


@dataclass
class PluginStatus:
    name: str
    version: str = ""
    source: str = ""
    description: str = ""
    state: str = "disabled"  # loaded | disabled | failed
    error: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "source": self.source, "state": self.state, "error": self.error}


def discover() -> tuple[dict[str, Plugin[Any]], list[PluginStatus], dict[str, str]]:
    """Import every plugin in the entry-point group. Broken ones come back as failed statuses."""
    found: dict[str, Plugin[Any]] = {}
    broken: list[PluginStatus] = []
    sources: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        source = f"{ep.value} ({ep.dist.name if ep.dist else 'unknown distribution'})"
        try:
            obj = ep.load()
        except Exception as exc:  # third-party code: any failure is its own
            log.error("plugin %s failed to import: %r", ep.name, exc)
            broken.append(PluginStatus(ep.name, source=source, state="failed", error=f"import failed: {exc!r}"))
            continue
        if not isinstance(obj, Plugin):
            broken.append(PluginStatus(ep.name, source=source, state="failed",
                                       error=f"entry point is a {type(obj).__name__}, not a hub.plugin_api.Plugin"))
            continue
        if obj.name in found:
            broken.append(PluginStatus(ep.name, source=source, state="failed", error=f"duplicate plugin name {obj.name!r}"))
            continue
        found[obj.name] = obj
        sources[obj.name] = source
    return found, broken, sources


class PluginManager:
    def __init__(self, bus: EventBus, state: StateStore, registry: DeviceRegistry, energy: EnergyStore,
                 data_dir: Path, sections: dict[str, dict[str, Any]], source: str = "config") -> None:
        self._bus, self._state, self._registry, self._data_dir = bus, state, registry, data_dir
        self._energy = energy
        self.available, broken, sources = discover()
        self.statuses: dict[str, PluginStatus] = {s.name: s for s in broken}
        self._contexts: list[PluginContext[Any]] = []
        self._configs: dict[str, Any] = {}
        unknown = sorted(set(sections) - set(self.available) - set(self.statuses))
        if unknown:
            raise ConfigError(f"{source}: plugins.{unknown[0]}: no installed plugin of that name "
                              f"(installed: {', '.join(sorted(self.available)) or 'none'})")
        errors = []
        for name, plugin in self.available.items():
            section = sections.get(name)
            self.statuses[name] = PluginStatus(name, plugin.version, sources.get(name, ""), description=plugin.description)
            if section is None and not plugin.default_enabled:
                continue
            try:
                self._configs[name] = plugin.config_model.model_validate(section or {})
            except ValidationError as exc:
                errors.append(format_validation_error(exc, prefix=f"{source}: ", base=f"plugins.{name}"))
        if errors:
            raise ConfigError("\n".join(errors))

    async def start(self, services: PluginServices | None = None) -> None:
        for name, cfg in self._configs.items():
            if not getattr(cfg, "enabled", True):
                continue
            plugin = self.available[name]
            ctx = PluginContext(name=name, config=cfg, bus=self._bus, state=self._state,
                                devices=DeviceSink(self._registry, name), energy=EnergySink(self._energy, name),
                                data_dir=self._data_dir / "plugins" / name, log=logging.getLogger(f"plugins.{name}"),
                                services=services)
            ctx.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                await plugin.setup(ctx)
            except Exception as exc:
                log.exception("plugin %s failed to set up", name)
                self.statuses[name].state, self.statuses[name].error = "failed", f"setup failed: {exc!r}"
                await ctx._stop()
                continue
            self._contexts.append(ctx)
            self.statuses[name].state = "loaded"
            log.info("plugin %s %s loaded", name, plugin.version)

    async def stop(self) -> None:
        for ctx in reversed(self._contexts):
            await ctx._stop()
        self._contexts.clear()
