"""The power planner: ``plan_power(devices, demand, deferred, now, cfg, weights) -> PowerPlan``.

Pure, like ``route()``: no I/O, no clock of its own. For every device it says whether it should
stay awake, go to sleep, wake now or wake at a later moment, with its reasons in words.

Everything is priced in the router's own currency, the score (hub/router/route.py: each term
weighted and normalised per decision), so that "being ready" and "the idle draw" are compared
in one unit:
- the value of being ready is what the device, awake, saves the decisions that prefer it over
  the best other device (:func:`readiness`), summed over the last ``demand_window_s`` and
  assumed to go on at that rate;
- the price of staying awake is its idle draw above its sleep draw, in joules, priced at the
  device's marginal carbon and price now with the router's weights;
- a wake costs its announced joules (or active watts x wake latency).

A device stays awake while being ready is worth its idle draw; deferrable work (a request with a
deadline that the hub holds for a cheap or clean window) is not demand for readiness: it is a
batch, and a sleeping device is woken ahead of its batch, by its wake latency, when the batch is
worth the wake and the idle minutes after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..router.model import RouteDecision
from ..router.route import RouterConfig

#: A decision with no other device able to serve it: being ready is worth this much (ten times
#: the over-budget penalty of a score; the device is the only way to do the task).
NO_ALTERNATIVE = 10.0

#: A batch's device is woken this many wake latencies ahead of it: a wake takes longer some
#: times than others, and a request that finds it still waking waits.
WAKE_AHEAD = 1.25

PowerState = Literal["awake", "sleeping", "waking"]
PowerAction = Literal["stay_awake", "sleep", "wake", "stay_asleep", "waking"]


class PowerConfig(BaseModel):
    """``[power]`` in hub.toml: putting idle devices to sleep and waking them for work."""

    model_config = ConfigDict(extra="forbid")
    #: False: the hub never puts a device to sleep (it still wakes one that sleeps on its own).
    enabled: bool = True
    #: Demand for readiness is counted over this span and assumed to go on at its rate.
    demand_window_s: float = Field(default=3600, gt=0, le=7 * 86400)
    #: How often the plan is made again (also at once after a device changes or work is deferred).
    plan_every_s: float = Field(default=30, gt=0, le=3600)
    #: Deferred work due within this is what a wake is planned for.
    lookahead_s: float = Field(default=12 * 3600, ge=0)
    #: Deferred requests due within this of the first one of a batch run in one awake window.
    batch_span_s: float = Field(default=1800, ge=0)
    #: A device not back within its wake latency x this is given up on: the work goes to the next
    #: candidate (or stays deferred).
    wake_timeout_factor: float = Field(default=2.0, ge=1, le=100)
    #: Wake-on-LAN: magic packets sent per port, this far apart (UDP may drop one).
    wol_repeats: int = Field(default=3, ge=1, le=20)
    wol_interval_ms: float = Field(default=100, ge=0, le=10_000)
    #: MQTT topic filters the hub may publish a smart plug's ``payload_on`` to (``+`` and ``#``
    #: allowed): a device announcing another command topic cannot be woken. Empty: no plugs.
    switch_topics: list[str] = Field(default_factory=list)
    #: Devices never put to sleep, whatever they announce.
    keep_awake: list[str] = Field(default_factory=list)

    @field_validator("switch_topics")
    @classmethod
    def _filters(cls, topics: list[str]) -> list[str]:
        for t in topics:
            if not t or len(t) > 256 or t.startswith("$") or "\n" in t or ("#" in t and not t.endswith("#")):
                raise ValueError(f"{t!r} is not an MQTT topic filter the hub may publish to")
        return topics


@dataclass(frozen=True, slots=True)
class Readiness:
    """One decision's say on whom being awake helps: the device the router would pick if every
    device were awake, and how much score that saves against the best other device."""

    device_id: str
    advantage: float


def readiness(decision: RouteDecision) -> Readiness | None:
    """None when no local device is preferred (the cloud is always ready) or the chain is empty."""
    best, best_score = None, 0.0
    for c in decision.chain:
        awake_score = c.score - c.wake_score
        if best is None or awake_score < best_score:
            best, best_score = c, awake_score
    if best is None or best.tier.value == "large" or best.device_id == "hub":
        return None
    others = [c.score - c.wake_score for c in decision.chain if c.device_id != best.device_id]
    advantage = (min(others) - best_score) if others else NO_ALTERNATIVE
    return Readiness(best.device_id, max(0.0, advantage))


@dataclass(frozen=True, slots=True)
class DevicePower:
    """A device as the planner sees it: its power figures, its state and how busy it is."""

    id: str
    state: PowerState
    #: Empty when the hub may put it to sleep; else why not, in words.
    cannot_sleep: str
    idle_w: float
    sleep_w: float
    wake_ms: float
    wake_j: float
    allow_sleep_after_s: float
    busy: int  # calls running on it now
    idle_since: float  # when its last call ended (or it woke, or the hub first saw it)
    #: Marginal carbon (g/kWh) and price per kWh of its energy now.
    g_per_kwh: float
    price_per_kwh: float
    waking_since: float | None = None
    wake_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Demand:
    """Readiness summed over the demand window for one device."""

    decisions: int
    advantage: float


@dataclass(frozen=True, slots=True)
class DeferredWork:
    """A deferred request: when it runs and whom it would prefer (its readiness at deferral)."""

    run_at: float
    device_id: str
    advantage: float


@dataclass(frozen=True, slots=True)
class PowerDecision:
    device_id: str
    state: PowerState
    action: PowerAction
    at: float  # when to act: now, or a future wake
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"device": self.device_id, "state": self.state, "action": self.action, "at": self.at,
                "reasons": list(self.reasons)}


@dataclass(frozen=True, slots=True)
class PowerPlan:
    now: float
    decisions: tuple[PowerDecision, ...]
    #: When the plan should be made again at the latest (a wake due, an idle device's threshold).
    next_at: float

    def to_dict(self) -> dict[str, object]:
        return {"now": self.now, "next_at": self.next_at, "devices": [d.to_dict() for d in self.decisions]}


def score_per_joule(d: DevicePower, router: RouterConfig) -> float:
    """What a joule on this device costs in the router's score units, now."""
    return (router.weight_carbon * d.g_per_kwh / 3.6e6 / router.carbon_ref_g
            + router.weight_money * d.price_per_kwh / 3.6e6 / router.money_ref)


def plan_power(devices: Sequence[DevicePower], demand: Mapping[str, Demand],
               deferred: Mapping[str, Sequence[DeferredWork]], now: float, cfg: PowerConfig,
               router: RouterConfig) -> PowerPlan:
    """``deferred``: per device, its deferred work sorted by ``run_at``."""
    decisions = []
    next_at = now + cfg.plan_every_s
    for d in devices:
        decision = _decide(d, demand.get(d.id), deferred.get(d.id, ()), now, cfg, router)
        decisions.append(decision)
        if decision.at > now:
            next_at = min(next_at, decision.at)
    return PowerPlan(now, tuple(decisions), next_at)


def _decide(d: DevicePower, demand: Demand | None, work: Sequence[DeferredWork], now: float, cfg: PowerConfig,
            router: RouterConfig) -> PowerDecision:
    per_j = score_per_joule(d, router)
    saved_w = max(0.0, d.idle_w - d.sleep_w)
    idle_per_h = saved_w * 3600 * per_j
    n, value = (demand.decisions, demand.advantage) if demand is not None else (0, 0.0)
    value_per_h = value * 3600 / cfg.demand_window_s
    ready = (f"being ready is worth {value_per_h:.3g}/h ({n} decisions preferred it in the last "
             f"{cfg.demand_window_s / 60:.0f} min) against {idle_per_h:.3g}/h for its idle draw "
             f"({saved_w:.3g} W above sleep, score units)")

    def out(action: PowerAction, *reasons: str, at: float = now) -> PowerDecision:
        return PowerDecision(d.id, d.state, action, at, reasons)

    if d.state == "waking":
        since = d.waking_since if d.waking_since is not None else now
        return out("waking", f"waking since {now - since:.1f} s ago; given up after {d.wake_timeout_s:.0f} s",
                   at=since + d.wake_timeout_s)
    if d.cannot_sleep:
        return out("stay_awake" if d.state == "awake" else "stay_asleep", d.cannot_sleep)
    # A wake costs its energy; sleeping shorter than this saves less than the wake costs.
    break_even_s = d.wake_j / saved_w if saved_w else float("inf")
    batch, batch_at = _first_batch(work, now, cfg)
    if d.state == "awake":
        if not cfg.enabled:
            return out("stay_awake", "power management is off (power.enabled = false)")
        if d.busy:
            return out("stay_awake", f"{d.busy} calls running")
        idle_s = now - d.idle_since
        if idle_s < d.allow_sleep_after_s:
            return out("stay_awake", f"idle {idle_s:.0f} s: it sleeps only after {d.allow_sleep_after_s:.0f} s "
                                     "without work", ready, at=d.idle_since + d.allow_sleep_after_s)
        if batch and batch_at - now < break_even_s + d.wake_ms / 1000 * WAKE_AHEAD:
            return out("stay_awake", f"{len(batch)} deferred requests for it in {max(0.0, batch_at - now):.0f} s: "
                                     f"sleeping until then saves less than the wake costs "
                                     f"(break-even {break_even_s:.0f} s)", at=max(now, batch_at))
        if value_per_h > idle_per_h:  # strictly: with no energy data idle is free, and so is being asleep
            return out("stay_awake", ready)
        why = [ready]
        if batch:
            why.append(f"{len(batch)} deferred requests in {batch_at - now:.0f} s: woken ahead of them")
        return out("sleep", *why)
    # Asleep.
    wake_cost = d.wake_j * per_j
    if cfg.enabled and value_per_h > idle_per_h + wake_cost * 3600 / cfg.demand_window_s:
        return out("wake", ready + f", and the wake ({wake_cost:.3g}) repays within the window")
    if not batch:
        return out("stay_asleep", ready, "no deferred work for it" + (
            f" in the next {cfg.lookahead_s / 3600:.0f} h" if cfg.lookahead_s else ""))
    worth = sum(w.advantage for w in batch)
    awake_s = d.allow_sleep_after_s + (batch[-1].run_at - batch_at)
    cost = wake_cost + saved_w * awake_s * per_j
    if worth < cost:
        return out("stay_asleep", f"its {len(batch)} deferred requests at {batch_at - now:.0f} s are worth "
                                  f"{worth:.3g}, less than waking it ({wake_cost:.3g}) and {awake_s:.0f} s awake "
                                  f"({cost - wake_cost:.3g})")
    ahead_s = d.wake_ms / 1000 * WAKE_AHEAD
    wake_at = batch_at - ahead_s
    why = (f"{len(batch)} deferred requests at {batch_at - now:.0f} s are worth {worth:.3g} against {cost:.3g} "
           f"for the wake and {awake_s:.0f} s awake: woken {ahead_s:.1f} s ahead (its wake latency and a quarter)")
    if wake_at <= now:
        return out("wake", why)
    return out("stay_asleep", why, at=wake_at)


def _first_batch(work: Sequence[DeferredWork], now: float, cfg: PowerConfig) -> tuple[list[DeferredWork], float]:
    """The deferred work of the first awake window: everything due within ``batch_span_s`` of
    the first request still ahead (or overdue) and within the lookahead."""
    batch: list[DeferredWork] = []
    first = 0.0
    for w in work:
        if not batch:
            if w.run_at > now + cfg.lookahead_s:
                break
            first = max(w.run_at, now)
        elif w.run_at > first + cfg.batch_span_s:
            break
        batch.append(w)
    return batch, first
