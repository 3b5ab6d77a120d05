"""The agent's side of power states (issue 16): RPC ``sleep``, and coming back afterwards.

The hub asks an idle device to sleep; the agent accepts only when it has a sleep command
(``--sleep-command``), no call is running and the last one ended at least
``allow_sleep_after_s`` ago. After its reply has gone out, :meth:`Sleeper.run`:

1. refuses new ``infer`` calls (``busy``) until it is back, and stops the heartbeats (an energy
   report tells the hub the device is awake);
2. publishes the retained status ``sleeping`` (QoS 1, acknowledged), so that the hub keeps the
   device as asleep and wakeable rather than gone;
3. disconnects cleanly without publishing ``offline`` (a clean DISCONNECT also keeps the broker
   from sending the ``offline`` will), so that ``sleeping`` stays;
4. frees the models (``--unload-on-sleep``);
5. runs the sleep command through the shell; it returns once the machine has resumed, as
   ``systemctl suspend`` does (a non-zero exit: the machine did not sleep, back at once);
6. reconnects (retained ``online``, re-announcement), the announcement carrying the measured
   resume-to-ready time as ``power.wake_latency_ms``.

The zeroconf record and the HTTP endpoint stay up; while the machine sleeps they cannot answer
anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any, Protocol

import psutil
from pydantic import ValidationError

from ..capability import Power, PowerSource, WakeMethod
from ..mqtt import MqttLink
from ..rpc import SleepParams
from .executors.base import ExecError

log = logging.getLogger(__name__)

#: Seconds without work before the agent accepts to sleep, when a sleep command is given.
DEFAULT_ALLOW_SLEEP_AFTER_S = 300.0
#: The retained status an agent leaves on its status topic while it sleeps.
SLEEPING = b"sleeping"
#: How long the broker may take to acknowledge ``sleeping`` before the agent stays awake.
STATUS_ACK_S = 10.0

#: WakeMethod's fields, as the ``sovereign agent`` flags that set them.
WAKE_FLAGS = {"mac": "--wol-mac", "broadcast": "--wol-broadcast", "ports": "--wol-port",
              "command_topic": "--wake-switch-topic", "payload_on": "--wake-switch-payload"}
#: Power's sleep fields, as their flags.
POWER_FLAGS = {"sleep_w": "--sleep-w", "wake_latency_ms": "--wake-latency-ms", "wake_j": "--wake-j",
               "allow_sleep_after_s": "--allow-sleep-after"}


def power_states(command: str | None, allow_sleep_after_s: float | None, sleep_w: float | None,
                 wake_latency_ms: float | None, wake_j: float | None, wake: WakeMethod) -> dict[str, Any]:
    """What the agent announces in ``power`` about sleeping: only what was given, and
    ``allow_sleep_after_s`` only with a sleep command (None: the device does not sleep)."""
    updates: dict[str, Any] = {"sleep_w": sleep_w, "wake_latency_ms": wake_latency_ms, "wake_j": wake_j}
    updates = {k: v for k, v in updates.items() if v is not None}
    if wake.kind != "none":
        updates["wake"] = wake
    if command:
        updates["allow_sleep_after_s"] = (DEFAULT_ALLOW_SLEEP_AFTER_S if allow_sleep_after_s is None
                                          else allow_sleep_after_s)
    return updates


def options_from_flags(args: argparse.Namespace) -> tuple[WakeMethod, dict[str, Any]]:
    """``sovereign agent``'s power-state flags: the wake method and :func:`power_states`, checked
    as Power checks them; ValueError naming the flag and why."""
    if not args.sleep_command:  # they would silently do nothing
        given = [flag for flag, value in (("--allow-sleep-after", args.allow_sleep_after is not None),
                                          ("--unload-on-sleep", args.unload_on_sleep)) if value]
        if given:
            raise ValueError(f"{given[0]} needs --sleep-command (how this machine goes to sleep)")
    wake = wake_method(args.wol_mac, args.wol_broadcast, args.wol_port, args.wake_switch_topic,
                       args.wake_switch_payload)
    if args.sleep_command and wake.kind == "none":
        raise ValueError("--sleep-command needs a way for the hub to wake this machine: --wol-mac MAC (or auto) "
                         "or --wake-switch-topic TOPIC")
    updates = power_states(args.sleep_command, args.allow_sleep_after, args.sleep_w, args.wake_latency_ms,
                           args.wake_j, wake)
    try:
        Power(source=PowerSource.mains, **updates)
    except ValidationError as exc:
        raise ValueError(_flag_errors(exc, POWER_FLAGS)) from None
    return wake, updates


def wake_method(mac: str | None, broadcast: str | None, ports: list[int] | None, switch_topic: str | None,
                switch_payload: str | None) -> WakeMethod:
    """The wake method from the agent's flags; ValueError naming the flag and why (WakeMethod's
    own messages). ``mac`` ``auto``: this machine's first network card that is up."""
    if mac and switch_topic:
        raise ValueError("--wol-mac and --wake-switch-topic: give one wake method, not both")
    if not mac:
        for flag, value in (("--wol-broadcast", broadcast), ("--wol-port", ports)):
            if value:
                raise ValueError(f"{flag} needs --wol-mac (the network card to wake)")
    if not switch_topic and switch_payload is not None:
        raise ValueError("--wake-switch-payload needs --wake-switch-topic (the plug's command topic)")
    fields: dict[str, Any]
    if mac:
        fields = {"kind": "wol", "mac": first_mac() if mac == "auto" else mac}
        if broadcast is not None:
            fields["broadcast"] = broadcast
        if ports:
            fields["ports"] = ports
    elif switch_topic:
        fields = {"kind": "ha_switch", "command_topic": switch_topic}
        if switch_payload is not None:
            fields["payload_on"] = switch_payload
    else:
        return WakeMethod()
    try:
        return WakeMethod(**fields)
    except ValidationError as exc:
        raise ValueError(_flag_errors(exc, WAKE_FLAGS)) from None


def _flag_errors(exc: ValidationError, flags: dict[str, str]) -> str:
    out = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        if field == "mac":
            msg = "not a MAC address (six pairs of hex digits, e.g. 3c:7c:3f:12:34:56, or auto)"
        elif field == "command_topic" and err["type"] == "string_pattern_mismatch":
            msg = "not a concrete MQTT topic (1 to 256 characters, no wildcards # or +)"
        flag = flags.get(field, field or "wake method")
        got = err.get("input")
        shown = f" {got!r}" if isinstance(got, (str, int, float)) and field else ""
        out.append(f"{flag}{shown}: {msg}")
    return "; ".join(out)


def first_mac() -> str:
    """The MAC of the first (by name) network card that is up and not the loopback."""
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        st = stats.get(name)
        if st is None or not st.isup or "loopback" in getattr(st, "flags", "").split(","):
            continue
        for a in addrs:
            if a.family == psutil.AF_LINK and a.address and a.address.strip("0:-"):
                log.info("--wol-mac auto: %s of %s", a.address, name)
                return a.address
    raise ValueError("--wol-mac auto: no network card is up besides the loopback; give its MAC "
                     "(`ip link` shows it as link/ether)")


class SleepHost(Protocol):
    """What the sleep sequence needs of the agent."""

    mqtt: MqttLink | None
    status_topic: str

    @property
    def active(self) -> int: ...

    async def close_mqtt(self, say_offline: bool = True) -> None: ...

    async def open_mqtt(self) -> None: ...

    async def unload_models(self) -> None: ...


class Sleeper:
    """Whether the agent may sleep now, and the sleep sequence itself (module docstring)."""

    def __init__(self, command: str | None, allow_sleep_after_s: float | None, wake: WakeMethod,
                 wake_latency_ms: float | None, unload: bool) -> None:
        self.command = command
        self.allow_after_s = DEFAULT_ALLOW_SLEEP_AFTER_S if allow_sleep_after_s is None else allow_sleep_after_s
        self.wake = wake
        self.estimate_ms = wake_latency_ms
        self.unload = unload
        #: From acceptance until the agent is connected again.
        self.sleeping = False
        #: When the last call ended (or the agent started, or woke): the idle time counts from it.
        self.last_work = time.monotonic()
        #: When the sleep command returned after a real sleep: the resume-to-ready clock.
        self._resumed_at: float | None = None

    def work_ended(self) -> None:
        self.last_work = time.monotonic()

    def refuse_work(self) -> None:
        """A new call while the agent is going to sleep (or asleep) is refused as ``busy``."""
        if self.sleeping:
            raise ExecError("busy", "going to sleep", retry_after_s=max(1.0, (self.estimate_ms or 0) / 1000))

    def accept(self, params: SleepParams, active: int) -> dict[str, Any]:
        """The ``sleep`` RPC's answer, or ExecError (``unavailable``, ``busy``). On success the
        agent is going to sleep from here on: the caller runs :meth:`run` after the reply."""
        if not self.command:
            raise ExecError("unavailable", "this device does not sleep: the agent was started without --sleep-command")
        if self.sleeping:
            raise ExecError("busy", "already going to sleep")
        wait = max(1.0, self.allow_after_s)
        if active:
            raise ExecError("busy", f"{active} call{'s' if active != 1 else ''} running; it sleeps only "
                                    f"{self.allow_after_s:g} s after the last one ends", retry_after_s=wait)
        idle = time.monotonic() - self.last_work
        if idle < self.allow_after_s:
            raise ExecError("busy", f"idle {int(idle)} s of the {self.allow_after_s:g} s it waits before sleeping",
                            retry_after_s=round(max(0.1, self.allow_after_s - idle), 1))
        self.sleeping = True
        log.info("going to sleep (%s)", params.reason or "no reason given")
        return {"sleeping": True, "after_s": 0, "wake": self.wake.model_dump(mode="json", exclude_none=True)}

    async def run(self, host: SleepHost) -> None:
        """The sequence after an accepted ``sleep`` (module docstring); the agent is back and
        serving when it returns, whatever happened."""
        try:
            link = host.mqtt
            if link is not None:
                if not await link.publish(host.status_topic, SLEEPING, qos=1, retain=True, wait_s=STATUS_ACK_S):
                    log.warning("status 'sleeping' not acknowledged by the broker: staying awake")
                    return
                await host.close_mqtt(say_offline=False)
            if self.unload:
                await host.unload_models()  # loaded again by the first call that needs them
            slept = await self._run_command()
            self._resumed_at = time.monotonic() if slept else None
            self.last_work = time.monotonic()  # just woken, most likely for work: not straight back
            if link is not None:
                await host.open_mqtt()
        finally:
            self.sleeping = False

    async def _run_command(self) -> bool:
        """Run the sleep command; True when it exited 0 (the machine slept and has resumed)."""
        assert self.command
        log.info("sleeping: running %r", self.command)
        try:
            proc = await asyncio.create_subprocess_shell(self.command, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.warning("sleep command %r could not start: %s; the machine did not sleep", self.command, exc)
            return False
        rc = await proc.wait()
        if rc != 0:
            log.warning("sleep command %r exited with status %s: the machine did not sleep; back at once",
                        self.command, rc)
            return False
        log.info("sleep command exited with status 0: resumed")
        return True

    def resumed_ms(self) -> float | None:
        """Called as the agent announces itself after reconnecting: milliseconds since the sleep
        command returned (resume to connected, subscribed and announcing, models in memory unless
        ``--unload-on-sleep``, which loads them at their first call instead), once per wake.

        This is only the device's half: the hub measures the full latency, from its wake signal
        to the device online again (hardware resume included), and keeps what it observes."""
        if self._resumed_at is None:
            return None
        ms = (time.monotonic() - self._resumed_at) * 1000
        self._resumed_at = None
        log.info("ready %.0f ms after resuming", ms)
        return ms

    def wake_latency_ms(self, measured_ms: float) -> float:
        """What to announce: the configured estimate unless this wake took longer."""
        return round(max(self.estimate_ms or 0.0, measured_ms), 1)
