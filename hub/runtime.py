"""The hub runtime: one asyncio program assembling bus, state, registry, broker connection,
discovery, plugins and the HTTP API, and taking them down again in reverse order.

``async with Hub(config) as hub: ...`` is the whole lifecycle; ``run_hub`` adds signal handling
for the command line.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from .broker import BrokerAuth, EmbeddedBroker
from .commands import Commands
from .deferred import DeferredStore
from .dispatch import Dispatcher
from .rpc_client import RpcClient
from .bus import EventBus
from .children import PIDFILE as CHILDREN_FILE, Children, current as current_children
from .config import HubConfig
from .discovery.mqtt import MqttDiscovery
from .discovery.zeroconf import ZeroconfDiscovery
from .energy.model import EnergyMode, EnergySnapshot
from .energy.snapshot import compute_snapshot
from .energy.store import EnergyInputsChanged, EnergyReading, EnergyStore
from .history import SqliteHistory
from .lock import DataDirLock
from .memory.service import Memory
from .signals import enter_unless_stopped, stop_on_signals
from .auth import AdminToken, Guard
from .homeassistant import HomeAssistantDiscovery
from .live import EnergyPublished, LiveFeed, TaskCompleted
from .power.manager import PowerManager
from .power.signals import WakeError, WakeSignals
from .router.fleet import FleetView, device_energy_views, fleet_snapshot
from .router.model import FleetSnapshot
from .router.cache import ResultCache
from .router.ledger import Ledger
from .router.request import InferOutcome, InferRequest
from .router.rules import RuleBook
from .router.learner import PromptLearner
from .router.stats import StatsStore
from .http_api import make_app
from .mqtt import Birth, Message, MqttLink, MqttOptions, publish_properties
from .plugin_api import PluginServices
from .plugins import PluginManager
from .registry import DeviceChanged, DeviceRegistry, DeviceRemoved
from .rejects import Rejections
from .state import StateStore
from .topics import Topics, topic_matches
from .trust import Role, TrustStore, mosquitto_hash, username_for
from .mqtt_probe import anonymous_publish_allowed
from .pairing import Pairing

log = logging.getLogger(__name__)

#: Discovery subscribes at QoS 0: nothing is lost by it, because everything that matters is
#: retained (announce, status) and re-read after every reconnect, and energy reports are QoS 0
#: anyway. It spares a PUBACK round per message in an announce storm.
DISCOVERY_QOS = 0


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.bus = EventBus()
        self.state = StateStore(self.bus)
        self.rejections = Rejections(self.state)
        self.topics = Topics(config.mqtt.topic_root)
        self.data_dir = config.data_dir.expanduser()
        self.registry: DeviceRegistry
        self.mqtt: MqttLink | None = None
        self.embedded_broker: EmbeddedBroker | None = None
        self.plugins: PluginManager | None = None
        self.broker_url = ""
        self.http_url = ""
        self.started_monotonic = time.monotonic()
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening_since = 0.0
        self._energy_changed = asyncio.Event()
        self.last_energy_snapshot: EnergySnapshot | None = None
        self._gc_threshold: tuple[int, int, int] | None = None
        #: (filter, handler, has a wildcard): most filters are exact topics, compared as strings.
        self._plugin_subscriptions: list[tuple[str, Any, bool]] = []
        self.plugin_routes: list[tuple[str, str, Any]] = []
        #: Said at start and in /api/health when the set-up is less safe than the defaults.
        self.security_warnings: list[str] = []

    async def __aenter__(self) -> "Hub":
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        cfg = self.config
        # One data directory, one hub: before anything in it is written (hub/lock.py).
        lock = DataDirLock(self.data_dir)
        lock.acquire()
        self._stack.callback(lock.release)  # first in, so last out
        # Children a previous hub on this data directory left running (it was killed) go first;
        # ours are recorded from here on: the broker, the demo's agents (hub/children.py).
        self.children = Children(self.data_dir / CHILDREN_FILE)
        await self.children.stop_stale()
        current_children.set(self.children)
        self._stack.callback(self.children.close)  # first in, so last out: after the broker stopped
        self.registry = DeviceRegistry(self.bus, self.data_dir / "registry.sqlite3")
        self._stack.callback(self.registry.close)
        self.energy = EnergyStore(self.bus, self.rejections, cfg.energy.max_site_power_w)
        self.history = SqliteHistory(self.data_dir / "history.sqlite3", cfg.history.raw_retention_days,
                                     cfg.history.rollup_retention_days)
        self._stack.callback(self.history.close)
        self.influx = None
        if cfg.history.influx is not None:
            from .influx import InfluxWriter
            self.influx = await self._stack.enter_async_context(
                InfluxWriter(cfg.history.influx, self.data_dir / "influx-spool.sqlite3"))
        self.bus.subscribe(EnergyReading, lambda r: self.record(r.metric, r.at, r.value))
        # What the router learns from outcomes survives restarts.
        self.stats = StatsStore(cfg.router.learning, self.data_dir / "router-stats.sqlite3")
        self._stack.callback(self.stats.close)
        self.learner = PromptLearner(cfg.router.predictor, self.data_dir / "router-predictor.sqlite3")
        self._stack.callback(self.learner.close)
        self.ledger = Ledger(self.data_dir / "ledger.sqlite3")
        self._stack.callback(self.ledger.close)
        self.cache = ResultCache(cfg.router.cache, self.data_dir / "cache.sqlite3")
        self._stack.callback(self.cache.close)
        self.rules = RuleBook(cfg.router.rules, self.data_dir / "rules.sqlite3")
        self._stack.callback(self.rules.close)
        self.bus.subscribe(EnergyInputsChanged, lambda _e: self._energy_changed.set())
        # Plugin configs are validated before anything starts, so that a typo fails fast.
        self.plugins = PluginManager(self.bus, self.state, self.registry, self.energy, self.data_dir, cfg.plugins)

        self.trust = TrustStore(self.data_dir / "trust.json")
        url = cfg.mqtt.broker_url()
        username, password, tls = cfg.mqtt.username, cfg.mqtt.resolved_password(), cfg.mqtt.tls
        if url is None:
            # The hub's own login to its own broker: made anew at every start, never stored.
            username, password = username_for(Role.hub, cfg.hub_id), secrets.token_urlsafe(32)
            hub_hash = mosquitto_hash(password)
            ha_prefix = cfg.homeassistant.prefix if cfg.homeassistant.enabled else None
            auth = BrokerAuth(
                render=lambda: (self.trust.passwd_text({username: hub_hash}),
                                self.trust.acl_text(self.topics.root, username, ha_prefix,
                                                    cfg.power.switch_topics)),
                on_refusal=lambda who, why: self.rejections.reject(who, why, counter="mqtt_refused"))
            self.embedded_broker = await self._stack.enter_async_context(
                EmbeddedBroker(cfg.broker, self.data_dir, auth))
            url, tls = self.embedded_broker.url, self.embedded_broker.client_tls()
        else:
            await self._check_external_broker(url, tls)
        self.pairing = Pairing(self.trust, cfg.pairing, self.embedded_broker, self._trust_changed)
        self.registry.is_trusted, self.registry.is_paired = self.pairing.is_trusted, self.trust.is_paired
        if not cfg.pairing.required:
            self._warn("pairing.required is false: every device the broker lets announce is routed to")
        self.broker_url = str(url)

        self.discovery = MqttDiscovery(self.topics, self.registry, self.rejections, cfg.mqtt.max_payload_bytes)
        opts = MqttOptions(
            url=url, client_id=cfg.mqtt.client_id or f"sovereign-{cfg.hub_id}", username=username,
            password=password, tls=tls, keepalive_s=cfg.mqtt.keepalive_s,
            birth=Birth(self.topics.hub_status), subscriptions=[(f, DISCOVERY_QOS) for f in self.topics.discovery_filters],
        )
        self.rpc = RpcClient(self.topics, cfg.hub_id)
        self.power = PowerManager(
            cfg.power, cfg.router, records=self.registry.all, energy=self.energy_snapshot, rpc=self.rpc,
            signals=WakeSignals(self._publish_switch, cfg.power.switch_topics, cfg.power.wol_repeats,
                                cfg.power.wol_interval_ms / 1000),
            trusted=self.pairing.is_trusted, on_change=lambda: self.fleet.changed())
        self._stack.push_async_callback(self.power.aclose)
        self.fleet = FleetView(lambda: fleet_snapshot(self.registry.all(), self.energy_snapshot(),
                                                      self.pairing.is_trusted,
                                                      lambda device_id: not self.power.wake_failed(device_id)),
                               time.monotonic)
        # Notes and repositories, searched on the hub and embedded by the fleet (hub/memory).
        self.memory = Memory(cfg.memory, self.data_dir, cache_ttl_s=cfg.router.cache.ttl_s,
                             run_task=lambda req: self.dispatcher.infer(req))
        self.deferred_store = deferred = DeferredStore(self.data_dir / "deferred.sqlite3")
        self._stack.callback(deferred.close)
        self.dispatcher = Dispatcher(
            cfg.dispatch, cfg.router, fleet=self.fleet, energy=self.energy_snapshot, stats=self.stats,
            cache=self.cache, rules=self.rules, ledger=self.ledger, rpc=self.rpc, store=deferred,
            known_device=lambda device_id: self.registry.get(device_id) is not None,
            on_outcome=self._task_finished, hub_id=cfg.hub_id, thresholds=cfg.energy.thresholds,
            learner=self.learner, power=self.power, memory=self.memory if cfg.memory.enabled else None)
        self._stack.push_async_callback(self.dispatcher.aclose)
        self._stack.push_async_callback(self.memory.aclose)  # before the dispatcher: its batches use it
        self.commands = Commands(self)
        opts.subscriptions += [(self.commands.subscription, 1), (self.rpc.reply_topic, 1)]
        self.homeassistant = HomeAssistantDiscovery(self, cfg.homeassistant) if cfg.homeassistant.enabled else None
        if self.homeassistant is not None:
            opts.subscriptions.append((self.homeassistant.status_topic, 1))
        self.mqtt = await self._stack.enter_async_context(
            MqttLink(opts, self._on_mqtt_message, on_state=self._on_mqtt_state, on_connect=self._on_mqtt_connect))
        if self.homeassistant is not None:
            self.homeassistant.start()
            self._stack.push_async_callback(self.homeassistant.stop)
        self.rpc.link = self.mqtt
        self._stack.push_async_callback(self.commands.aclose)
        resumed = self.commands.resume_deferred()
        if resumed:
            log.info("resuming %d deferred request(s) from %s", resumed, self.data_dir)
        self.bus.subscribe(DeviceChanged, self._device_liveness)
        self.bus.subscribe(DeviceRemoved, self._clear_retained)
        for event in (DeviceChanged, DeviceRemoved, EnergyInputsChanged):
            self.bus.subscribe(event, self.fleet.changed)

        if cfg.zeroconf.enabled:
            await self._stack.enter_async_context(ZeroconfDiscovery(cfg.zeroconf, self.registry, self.rejections))

        await self.plugins.start(self._plugin_services())
        self._stack.push_async_callback(self.plugins.stop)

        self.admin_token = AdminToken(self.data_dir / "admin-token.json")
        self.admin_token.load()
        self.new_admin_token: str | None = None
        self.guard = Guard(self.admin_token, cfg.http.token, cfg.http.require_token, cfg.http.max_failures_per_minute)
        self.live = LiveFeed(self)
        self._stack.callback(self.live.close)
        runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=2)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise RuntimeError(f"cannot listen on http://{cfg.http.host}:{cfg.http.port}: {exc.strerror} "
                               "(set http.port, or --http-port)") from None
        port = runner.addresses[0][1]
        self.http_url = f"http://{cfg.http.host}:{port}"
        # The admin token is made only now that start-up has succeeded (nothing can fail after
        # this line), so that it is always shown: a start that failed (port taken) used to make
        # one that nobody ever saw. Printed by `sovereign run` and the demo, never logged.
        self.new_admin_token = self.admin_token.ensure()
        if self.new_admin_token:
            log.warning("created the admin token; only its hash is kept (%s)", self.admin_token.path)

        await self.memory.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="registry housekeeping"))
        self._tasks.append(asyncio.create_task(self._publish_energy(), name="energy publisher"))
        self._tasks.append(asyncio.create_task(self.power.run(), name="power planner"))
        # Everything allocated so far (modules, classes, config) lives as long as the hub: keep
        # it out of the cyclic collector's full scans, which otherwise paused an announce storm
        # for 50-180 ms; and collect the young generation every 50,000 allocations instead of
        # 700, since validated payloads are freed by reference counting anyway (a 1,000-device
        # storm: 74 → 67 ms median; benchmarks/discovery.py, docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        self._gc_threshold = gc.get_threshold()
        gc.set_threshold(50_000, 20, 20)
        self.started_monotonic = time.monotonic()
        log.info("hub %s up: API %s, broker %s", cfg.hub_id, self.http_url, self.broker_url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.bus.drain()
        await self._stack.aclose()
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            gc.unfreeze()
            self._gc_threshold = None

    # -- trust ---------------------------------------------------------------------------------

    def _warn(self, text: str) -> None:
        self.security_warnings.append(text)
        log.warning("SECURITY: %s", text)

    async def _check_external_broker(self, url: Any, tls: Any) -> None:
        """An external broker cannot be configured by the hub: check that it at least refuses
        strangers, and say loudly when it does not (docs/security.md has the ACL it needs)."""
        verdict = await anonymous_publish_allowed(url, tls, f"{self.topics.root}/hub/anonymous-probe")
        if verdict is True:
            self._warn(f"the broker {url} lets anonymous clients publish: anyone who reaches it can "
                       "announce devices and send commands (set allow_anonymous false and an ACL: docs/security.md)")
        elif verdict is None:
            log.info("could not tell whether %s refuses anonymous clients", url)

    async def unpair(self, device_id: str) -> bool:
        """Revoke the device's login at the broker (a connected device is cut off) and forget it."""
        revoked = self.pairing.unpair(device_id)
        forgotten = await self.forget_device(device_id, "unpaired")
        return revoked or forgotten

    def _trust_changed(self, device_id: str | None) -> None:
        self.fleet.refresh()  # a paired or unpaired device enters or leaves the router's view now
        rec = self.registry.get(device_id) if device_id else None
        if rec is not None:  # pending → paired: the dashboard and Home Assistant show it at once
            self.bus.publish(DeviceChanged(rec.id, online=rec.online))

    # -- MQTT ----------------------------------------------------------------------------------

    def _on_mqtt_message(self, message: Message) -> None:
        self.state.count("mqtt_messages")
        if self.rpc.handle(message) or self.commands.handle(message):
            return
        if self.homeassistant is not None and self.homeassistant.handle(message.topic, message.payload):
            return
        if self._plugin_subscriptions:
            topic = message.topic
            for topic_filter, handler, wild in tuple(self._plugin_subscriptions):
                if topic_filter == topic or wild and topic_matches(topic_filter, topic):
                    try:
                        handler(message)
                    except Exception:  # a plugin's bug is its own
                        log.exception("plugin handler for %s failed", topic_filter)
                    return
        self.discovery.handle(message.topic, message.payload, message.retain)

    # -- plugins ---------------------------------------------------------------------------------

    def _plugin_services(self) -> PluginServices:
        async def publish(topic: str, payload: bytes | str, qos: int, retain: bool, correlation: bytes | None) -> bool:
            if self.mqtt is None:
                return False
            return await self.mqtt.publish(topic, payload, qos=qos, retain=retain,
                                           properties=publish_properties(correlation))

        async def subscribe(topic_filter: str, qos: int, handler: Any) -> Any:
            entry = (topic_filter, handler, "+" in topic_filter or "#" in topic_filter)
            self._plugin_subscriptions.append(entry)
            if self.mqtt is not None:
                await self.mqtt.subscribe(topic_filter, qos)
            return lambda: self._plugin_subscriptions.remove(entry) if entry in self._plugin_subscriptions else None

        def add_route(method: str, path: str, handler: Any) -> None:
            self.plugin_routes.append((method, path, handler))

        async def infer(body: dict[str, Any]) -> dict[str, Any]:
            req = InferRequest.model_validate(body)
            return (await self.dispatcher.infer(req)).to_dict()

        return PluginServices(self.topics.root, publish, subscribe, add_route, self.record, infer)

    def _task_finished(self, out: InferOutcome) -> None:
        """To the live feed, and the figures Grafana charts into the history."""
        if self.live.clients:
            self.bus.publish(TaskCompleted(out.to_dict()))
        layer = (out.served_by or {}).get("layer", "failed")
        now = time.time()
        for figure, value in (("latency_ms", out.latency_ms), ("cost", out.cost), ("gco2", out.gco2),
                              ("joules", out.joules)):
            self.record(f"route.{layer}.{figure}", now, value)

    def _device_liveness(self, event: DeviceChanged) -> None:
        if event.online_changed and not event.online:
            self.rpc.device_offline(event.device_id)
        if event.online_changed:
            self.power.observed(event.device_id, event.online)

    async def _publish_switch(self, topic: str, payload: str) -> None:
        """A smart plug's command (hub/power/signals.py): a broker that is down is a failed wake."""
        if self.mqtt is None or not await self.mqtt.publish(topic, payload, qos=1, wait_s=5):
            raise WakeError(f"switch command on {topic!r} not delivered: the broker is not connected "
                            "or did not acknowledge it")

    async def _on_mqtt_connect(self, _link: MqttLink) -> None:
        if self.homeassistant is not None:
            await self.homeassistant.publish_all()

    def _on_mqtt_state(self, connected: bool, error: str) -> None:
        self.state.set("mqtt.connected", connected)
        if connected:
            self._listening_since = time.time()
        if not connected:
            log.warning("lost the broker (%s); devices keep their last state until it is back", error or "closed")

    async def _clear_retained(self, event: DeviceRemoved) -> None:
        """A forgotten device must not come back from its own retained announcement."""
        if self.mqtt is None:
            return
        for kind in ("announce", "status"):
            await self.mqtt.publish(self.topics.device(event.device_id, kind), b"", qos=1, retain=True)

    async def forget_device(self, device_id: str, reason: str) -> bool:
        removed = self.registry.remove(device_id, reason)
        if removed:
            self.registry.flush()
        return removed

    async def _housekeeping(self) -> None:
        d = self.config.discovery
        interval = min(1.0, d.heartbeat_timeout_s / 4)
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            # Do not time devices out while we cannot hear them: that is our outage, not theirs.
            if self.mqtt is not None and self.mqtt.connected.is_set():
                self.registry.expire(time.time(), d.heartbeat_timeout_s, d.forget_after_s,
                                     listening_since=self._listening_since)
            if time.monotonic() - last_flush >= 0.5:
                await self.registry.flush_async()
                await self.history.flush_async()
                self.stats.flush()
                self.ledger.flush()
                await self.learner.flush_async()
                await self.history.maintain()
                last_flush = time.monotonic()


    # -- energy ----------------------------------------------------------------------------------

    def record(self, metric: str, ts: float, value: float) -> None:
        """Into every configured history: SQLite always, InfluxDB when configured."""
        self.history.add(metric, ts, value)
        if self.influx is not None:
            self.influx.add(metric, ts, value)

    def refresh_fleet(self) -> FleetSnapshot:
        """The router's view rebuilt now, not within the second: for a caller that has just
        changed a device and must route on the change (tests, `devices reset`)."""
        return self.fleet.refresh()

    def energy_snapshot(self, now: float | None = None) -> EnergySnapshot:
        return compute_snapshot(time.time() if now is None else now, self.energy.inputs, self.energy.forecasts,
                                device_energy_views(self.registry.all()), self.config.energy.thresholds)

    async def _publish_energy(self) -> None:
        """Publish the snapshot (retained) when an input changes, at most every
        min_publish_interval_s, and at least every publish_interval_s; record derived values."""
        cfg = self.config.energy
        topic = f"{self.topics.root}/energy/site"
        modes = list(EnergyMode)
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and this loop would then outlive the hub's stop.
            try:
                async with asyncio.timeout(cfg.publish_interval_s):
                    await self._energy_changed.wait()
            except TimeoutError:
                pass
            self._energy_changed.clear()
            snap = self.energy_snapshot()
            self.last_energy_snapshot = snap
            grid = snap.grid_w
            if grid is None and snap.pv_w is not None and snap.load_w is not None:
                grid = snap.load_w - snap.pv_w  # no meter reports the grid: the balance (no home battery)
            for metric, value in (("solar_surplus_w", snap.solar_surplus_w), ("site_grid_w", grid),
                                  ("site_marginal_g_per_kwh", snap.site_marginal_g_per_kwh),
                                  ("site_marginal_price_per_kwh", snap.site_marginal_price_per_kwh),
                                  ("energy_mode", float(modes.index(snap.mode)))):
                if value is not None:
                    self.record(metric, snap.now, value)
            for device_id, d in snap.devices.items():
                if d.battery_pct is not None:
                    self.record(f"device.{device_id}.battery_pct", snap.now, d.battery_pct)
            if self.mqtt is not None:
                await self.mqtt.publish(topic, snap.model_dump_json(), qos=0, retain=True)
            if self.live.clients:
                self.bus.publish(EnergyPublished(snap.model_dump(mode="json")))
            await asyncio.sleep(cfg.min_publish_interval_s)


async def run_hub(config: HubConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly (also when one comes during start-up)."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    hub = Hub(config)
    if not await start_hub(hub, stop):
        return
    try:
        print(f"Sovereign Hub {config.hub_id}: API {hub.http_url}  broker {hub.broker_url}", flush=True)
        if hub.new_admin_token:
            print(f"Admin token (shown once; only its hash is kept): {hub.new_admin_token}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping")
    finally:
        await hub.stop()


async def start_hub(hub: Hub, stop: asyncio.Event) -> bool:
    """Start ``hub`` unless ``stop`` is set first (False: nothing is left running)."""
    if not await enter_unless_stopped(hub, stop):
        return False
    # The start ran in a task of its own: the children record must be this task's too, for
    # what is spawned from here on (the demo's agents).
    current_children.set(hub.children)
    return True
