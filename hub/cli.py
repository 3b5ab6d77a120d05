"""The ``sovereign`` command."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__, cli_memory, cli_pairing, cli_token, cli_voice
from .cli_api import api_call, columns, format_power, open_api
from .capability import Tier, is_valid_device_id
from .config import BrokerUrl, ConfigError, TlsConfig, load_config

DEFAULT_API = "http://127.0.0.1:8700"
URL_HELP = f"the running hub's address (env SOVEREIGN_URL; default {DEFAULT_API})"
JSON_HELP = "print the raw JSON document instead of a table"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _interfaces(values: list[str] | None) -> Any:
    return values if values else "all"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sovereign", description="Sovereign Hub: energy-aware routing of inference across a home's devices")
    p.add_argument("--version", action="version", version=f"sovereign-hub {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the hub")
    run.add_argument("--config", type=Path, help="TOML config file (default: embedded defaults)")
    run.add_argument("--http-port", type=int, help="override http.port (0: any free port)")
    run.add_argument("--data-dir", type=Path, help="override data_dir (one hub per data directory: it is locked)")

    agent = sub.add_parser("agent", help="make this machine a device of the hub")
    agent.add_argument("--broker", default=os.environ.get("SOVEREIGN_BROKER"),
                       help="mqtt://host:port or mqtts://… (env SOVEREIGN_BROKER; default: the one the hub named "
                            "when this device paired, else mqtt://127.0.0.1:1883)")
    agent.add_argument("--pair", metavar="CODE", help="pair with the hub using a code from `sovereign pair` (needs --hub)")
    agent.add_argument("--hub", default=os.environ.get("SOVEREIGN_URL"), metavar="URL",
                       help="the hub's HTTP address for --pair, e.g. http://hub.local:8700 (env SOVEREIGN_URL)")
    agent.add_argument("--credentials", type=Path, metavar="FILE",
                       help="where this device's login is kept (default ~/.config/sovereign/agent-<id>.json)")
    agent.add_argument("--id", dest="device_id", help="device id (default: hostname[-profile])")
    agent.add_argument("--name", help="human-readable name (default: the device id)")
    agent.add_argument("--profile", choices=["watch", "phone", "laptop", "gpu-box"],
                       help="stand in for such a device (hardware and power figures from the profile)")
    agent.add_argument("--tier", choices=[t.value for t in Tier], help="override the tier")
    agent.add_argument("--topic-root", default="sovereign", help="MQTT topic root (default sovereign)")
    agent.add_argument("--username", default=os.environ.get("SOVEREIGN_MQTT_USERNAME"),
                       help="MQTT login (env SOVEREIGN_MQTT_USERNAME; default: the one from pairing)")
    agent.add_argument("--password-env", default="SOVEREIGN_MQTT_PASSWORD",
                       help="environment variable holding the MQTT password")
    agent.add_argument("--ca-file", type=Path, help="TLS: the CA that signed the broker's certificate")
    agent.add_argument("--cert-file", type=Path, help="TLS: this device's client certificate")
    agent.add_argument("--key-file", type=Path, help="TLS: the client certificate's key")
    agent.add_argument("--heartbeat-s", type=float, default=10.0, help="seconds between energy heartbeats (default 10)")
    agent.add_argument("--http-host", default="0.0.0.0", help="where the capability document is served (default 0.0.0.0)")
    agent.add_argument("--http-port", type=int, default=0, help="its port (default 0: any free port)")
    agent.add_argument("--no-zeroconf", action="store_true", help="do not announce over mDNS/zeroconf")
    agent.add_argument("--no-mqtt", action="store_true", help="announce over zeroconf only")
    agent.add_argument("--zeroconf-interface", action="append", metavar="ADDR",
                       help="announce only on this address (repeatable; default: all interfaces)")
    agent.add_argument("--models-dir", type=Path, help="folder of .tflite models to serve")
    agent.add_argument("--ollama-host", default=os.environ.get("OLLAMA_HOST"), help="local Ollama (env OLLAMA_HOST)")
    agent.add_argument("--echo", action="store_true", help="serve the code runtime's echo model (task echo)")
    agent.add_argument("--rules", type=Path, metavar="FILE",
                       help="serve deterministic answers from a JSON table {task: {input: answer}} (code runtime)")
    agent.add_argument("--cloud", action="store_true",
                       help="serve cloud models whose API key is in the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY)")
    agent.add_argument("--seed", type=int, help="seed of the simulated runtime's latencies")
    agent.add_argument("--real-models", action="store_true",
                       help="with --profile: run a profile's model for real where a runtime for it is installed "
                            "(smollm2-135m on llama.cpp)")
    agent.add_argument("--idle-w", type=float, help="power drawn when idle, in watts (when it cannot be measured)")
    agent.add_argument("--active-w", type=float, help="power drawn when running a model, in watts")
    agent.add_argument("--battery-pct", type=float, help="override the reported battery charge")
    sleep = agent.add_argument_group("power states", "let the hub put this machine to sleep and wake it")
    sleep.add_argument("--sleep-command", metavar="CMD",
                       help="shell command that suspends the machine and returns once it has resumed, e.g. "
                            "'systemctl suspend' (without it the agent refuses to sleep)")
    sleep.add_argument("--allow-sleep-after", type=float, metavar="S",
                       help="seconds without work before it accepts to sleep (default 300; needs --sleep-command)")
    sleep.add_argument("--sleep-w", type=float, metavar="W", help="power drawn while asleep, in watts")
    sleep.add_argument("--wake-latency-ms", type=float, metavar="MS",
                       help="estimated time from the wake signal to ready, announced until a wake is measured")
    sleep.add_argument("--wake-j", type=float, metavar="J", help="energy of one wake, in joules")
    sleep.add_argument("--wol-mac", metavar="MAC",
                       help="wake by Wake-on-LAN: this network card's MAC, or auto (the first card that is up)")
    sleep.add_argument("--wol-broadcast", metavar="ADDR",
                       help="where the hub sends the magic packet: a LAN address (default 255.255.255.255)")
    sleep.add_argument("--wol-port", type=int, action="append", metavar="N",
                       help="UDP port of the magic packet (repeatable; default 9 and 7)")
    sleep.add_argument("--wake-switch-topic", metavar="TOPIC",
                       help="wake by a smart plug: the command topic of its switch in Home Assistant's MQTT")
    sleep.add_argument("--wake-switch-payload", metavar="PAYLOAD", help="what turns the plug on (default ON)")
    sleep.add_argument("--unload-on-sleep", action="store_true",
                       help="free the models before sleeping (they load again at their first call; "
                            "default: kept in memory across the suspend)")
    agent.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")

    cli_pairing.add_parser(sub, DEFAULT_API)

    dev = sub.add_parser("devices", help="list the devices the running hub knows; reset ID clears its cooldowns; "
                                         "unpair ID revokes its login and forgets it")
    dev.add_argument("action", nargs="?", choices=["list", "reset", "unpair"], default="list",
                     help="list (default), reset ID or unpair ID")
    dev.add_argument("device_id", nargs="?", help="the device (reset, unpair)")
    dev.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    dev.add_argument("--json", action="store_true", help=JSON_HELP)

    en = sub.add_parser("energy", help="the running hub's energy snapshot and mode")
    en.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    en.add_argument("--json", action="store_true", help=JSON_HELP)

    co = sub.add_parser("costs", help="the cost ledger: per layer today, this week, this month, and the saving")
    co.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    co.add_argument("--json", action="store_true", help=JSON_HELP)

    de = sub.add_parser("deferred", help="requests waiting for a cleaner window, and their outcomes for a day")
    de.add_argument("request_id", nargs="?", help="one request, with its outcome once done")
    de.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    de.add_argument("--json", action="store_true", help=JSON_HELP)

    ru = sub.add_parser("rules", help="compiled patterns: list, approve or disable")
    ru.add_argument("action", choices=["list", "approve", "disable"], help="list, approve ID or disable ID")
    ru.add_argument("rule_id", nargs="?", help="the rule (approve, disable)")
    ru.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    ru.add_argument("--json", action="store_true", help=JSON_HELP)

    ca = sub.add_parser("cache", help="the answer cache: clear it (all tasks, or one)")
    ca.add_argument("action", choices=["clear"], help="clear: forget cached answers")
    ca.add_argument("--task", help="only this task's answers (default: every task)")
    ca.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    ca.add_argument("--json", action="store_true", help=JSON_HELP)

    fb = sub.add_parser("feedback", help="rate an answer (an outcome the router learns from), or show what it learned")
    fb.add_argument("request_id", nargs="?", help="the answer's request id (sovereign infer prints it)")
    fb.add_argument("rating", nargs="?", choices=["up", "down"], help="up: a good answer; down: a wrong or poor one")
    fb.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    fb.add_argument("--json", action="store_true", help=JSON_HELP)

    pw = sub.add_parser("power", help="devices' power states and the hub's plan (sleep, wake), or wake or sleep one now")
    pw.add_argument("device_id", nargs="?", help="the device to wake or put to sleep")
    pw.add_argument("action", nargs="?", choices=["wake", "sleep"], help="wake: wake it and wait until it is back; "
                                                                         "sleep: ask it to sleep")
    pw.add_argument("--timeout-s", type=float, default=600,
                    help="how long to wait for the hub's answer (a wake waits until the device is back; default 600)")
    pw.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    pw.add_argument("--json", action="store_true", help=JSON_HELP)

    for name, helptext in (("infer", "run a task on the fleet and print the answer"),
                           ("route", "dry run: which device and model would take a task, and why")):
        t = sub.add_parser(name, help=helptext)
        t.add_argument("text", nargs="?", help="the input text (default: standard input)")
        t.add_argument("--task", default="qa", help="task type (default qa)")
        t.add_argument("--budget-ms", type=float, default=5000, help="latency budget in ms (default 5000)")
        t.add_argument("--quality-floor", type=float, default=0.0, help="lowest acceptable model quality, 0-1 (default 0)")
        t.add_argument("--local-only", action="store_true", help="never the cloud layer")
        t.add_argument("--mode", choices=["single", "consensus"], default="single",
                       help="single (default) or consensus: several models, the answer most agree on")
        t.add_argument("--requester", help="device id asking")
        t.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
        t.add_argument("--json", action="store_true", help="print the whole JSON result")
        t.add_argument("--file", type=Path, help="the input from a file, sent as data (audio for transcribe: a WAV)")
        t.add_argument("--model", help="only this model (on whichever device serving it the router picks)")
        if name == "infer":
            t.add_argument("--stream", action="store_true", help="print text as it is generated")
            t.add_argument("--max-tokens", type=int, help="at most this many tokens of output")
            t.add_argument("--timeout-ms", type=float, help="give up after this long (default 30000)")
            t.add_argument("--context", choices=["notes"], help="qa, summarize, draft: send the notes retrieved for "
                                                                "the text with the prompt, and list them")

    eeg = sub.add_parser("eeg", help="EEG biofeedback sessions (the eeg plugin)")
    eeg.add_argument("action", choices=["start", "stop", "pause", "resume", "list", "report"],
                     help="start a session, stop|pause|resume|report ID, or list them")
    eeg.add_argument("session", nargs="?", help="session id (stop, pause, resume, report)")
    eeg.add_argument("--board", help="synthetic, playback, cyton, ganglion, muse-s, muse-2, or a BrainFlow board id")
    eeg.add_argument("--serial-port", help="the board's serial port (cyton, ganglion)")
    eeg.add_argument("--file", help="playback: a recording in BrainFlow's format")
    eeg.add_argument("--master-board", help="playback: the board that recorded the file")
    eeg.add_argument("--protocol", choices=["alpha", "focus", "ratio"], help="what the feedback rewards (default alpha)")
    eeg.add_argument("--baseline-s", type=float, help="seconds of calibration before feedback (default 30)")
    eeg.add_argument("--all", action="store_true", help="list: stopped sessions too")
    eeg.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API), help=URL_HELP)
    eeg.add_argument("--json", action="store_true", help=JSON_HELP)

    pr = sub.add_parser("provision", help="put the MicroPython firmware on a board over USB serial")
    pr.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    pr.add_argument("--device-id", required=True, help="the board's device id")
    pr.add_argument("--name", help="human-readable name (default: the device id)")
    pr.add_argument("--broker", help="mqtt://HOST:PORT the board connects to (default with --pair: the one the "
                                     "hub names)")
    pr.add_argument("--pair", metavar="CODE", help="pair the board with a code from `sovereign pair` (asks the hub "
                                                   "at --url for the board's own MQTT login)")
    pr.add_argument("--wifi-ssid", help="the Wi-Fi network the board joins")
    pr.add_argument("--wifi-password-env", default="SOVEREIGN_WIFI_PASSWORD",
                    help="environment variable holding the Wi-Fi password (asked for when unset)")
    pr.add_argument("--battery-adc-pin", type=int, help="ADC pin reading the battery voltage, if any")
    pr.add_argument("--topic-root", default="sovereign", help="MQTT topic root (default sovereign)")
    pr.add_argument("--dry-run", action="store_true", help="list what would be written, write nothing")
    pr.add_argument("--url", default=os.environ.get("SOVEREIGN_URL", DEFAULT_API),
                    help="the hub to watch for the board's announcement")
    pr.add_argument("--wait-s", type=float, default=60, help="how long to wait for the announcement (0: do not)")

    sim = sub.add_parser("simulate", help="replay a task trace through the router under each policy")
    sim.add_argument("--fleet", type=Path, required=True, help="the fleet, TOML (examples/fleet.toml)")
    sim.add_argument("--trace", type=Path, required=True, help="the tasks, JSON lines (examples/trace.jsonl)")
    sim.add_argument("--carbon", type=Path, help="Time,Carbon Intensity CSV (default: bundled GB 2020)")
    sim.add_argument("--solar", type=Path, help="Time,Solar MW CSV (default: bundled GB 2020)")
    sim.add_argument("--start", default="2020-06-01T00:00:00", help="where in the data the trace starts")
    sim.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    sim.add_argument("--policy", action="append", help="only these policies (repeatable)")
    sim.add_argument("--json", action="store_true", help="print the results as JSON")
    sim.add_argument("--wrap", action="store_true",
                     help="read the carbon and solar data round when the trace runs past their end")

    demo = sub.add_parser("demo", help="hub + simulated fleet, no configuration")
    demo.add_argument("--http-port", type=int, default=8700,
                      help="the dashboard's and API's port (default 8700; 0: any free port)")
    demo.add_argument("--data-dir", type=Path,
                      help="where the demo keeps its data (default $SOVEREIGN_DEMO_DIR, else "
                           "~/.local/share/sovereign-demo); a second demo needs its own")
    demo.add_argument("--log-level", default="warning", help="debug, info, warning (default) or error")
    demo.add_argument("--replay-speed", type=float, default=720,
                      help="recorded seconds of grid data per real second (default 720: a day in 2 minutes)")

    cli_token.add_parser(sub)
    cli_voice.add_parser(sub, DEFAULT_API, URL_HELP)
    cli_memory.add_parsers(sub, DEFAULT_API, URL_HELP)

    comp = sub.add_parser("completion", help="print the shell completion script",
                          description="bash: eval \"$(sovereign completion bash)\" in ~/.bashrc; zsh: the same in "
                                      "~/.zshrc (after compinit)")
    comp.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command; a reader that goes away (``| head``) ends it quietly with 141, like SIGPIPE."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a broken pipe often shows only here
        return code
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point stdout at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        import argcomplete  # shell completion (`sovereign completion bash`): answers and exits
    except ImportError:
        pass
    else:
        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "agent":
            return _cmd_agent(args)
        if args.command == "pair":
            return cli_pairing.run(args)
        if args.command == "devices":
            if args.action in ("reset", "unpair"):
                return _cmd_device_action(args)
            return _show(args, "/api/devices", lambda data: format_device_table(data["devices"]))
        if args.command == "energy":
            return _show(args, "/api/energy", format_energy)
        if args.command == "costs":
            return _show(args, "/api/costs", format_costs)
        if args.command == "deferred":
            if args.request_id:
                return _show(args, f"/api/deferred/{urllib.parse.quote(args.request_id, safe='')}", format_deferred_one)
            return _show(args, "/api/deferred", lambda data: format_deferred(data["deferred"]))
        if args.command == "rules":
            return _cmd_rules(args)
        if args.command == "cache":
            return _cmd_cache(args)
        if args.command == "feedback":
            return _cmd_feedback(args)
        if args.command == "power":
            return _cmd_power(args)
        if args.command in ("infer", "route"):
            return _cmd_task(args)
        if args.command == "eeg":
            return _cmd_eeg(args)
        if args.command == "provision":
            return _cmd_provision(args)
        if args.command == "simulate":
            return _cmd_simulate(args)
        if args.command == "token":
            return cli_token.run(args)
        if args.command == "listen":
            return cli_voice.run(args)
        if args.command in ("search", "memory"):
            return cli_memory.run(args)
        if args.command == "completion":
            import argcomplete
            print(argcomplete.shellcode(["sovereign"], shell=args.shell), end="")
            return 0
        if args.command == "demo":
            from .demo import run_demo
            _setup_logging(args.log_level)
            return asyncio.run(run_demo(args.http_port, args.data_dir, args.replay_speed))
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _cmd_run(args: argparse.Namespace) -> int:
    from .runtime import run_hub
    config = load_config(args.config)
    if args.http_port is not None:
        config.http.port = args.http_port
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    _setup_logging(config.log_level)
    try:
        asyncio.run(run_hub(config))
    except RuntimeError as exc:  # start-up problems (port in use, no broker) are reported plainly
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def default_device_id(profile: str | None) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-.") or "device"
    return f"{host}-{profile}" if profile else host


def _cmd_agent(args: argparse.Namespace) -> int:
    from .agent.agent import AgentOptions, code_models
    _setup_logging(args.log_level)
    device_id = args.device_id or default_device_id(args.profile)
    if not is_valid_device_id(device_id):
        print(f"error: invalid device id {device_id!r}: letters, digits, '_', '.', '-' only (max 64)", file=sys.stderr)
        return 2
    from .agent.sleep import options_from_flags  # checked before pairing spends a code
    try:
        wake, power_states = options_from_flags(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .agent import credentials
    cred_path = args.credentials or credentials.default_path(device_id)
    try:
        if args.pair:
            if not args.hub:
                print("error: --pair needs --hub URL (the hub's HTTP address) or SOVEREIGN_URL", file=sys.stderr)
                return 2
            creds, ca_pem = credentials.redeem(args.hub, args.pair, device_id)
            creds = credentials.save(cred_path, creds, ca_pem)
            print(f"paired {device_id} with {args.hub}; login kept in {cred_path}", flush=True)
        else:
            creds = credentials.load(cred_path)
    except credentials.PairingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    username, password = args.username, os.environ.get(args.password_env)
    if creds is not None and username is None and creds.username:
        username, password = creds.username, creds.password
    try:
        broker = BrokerUrl.parse(args.broker or (creds.broker_url if creds else None) or "mqtt://127.0.0.1:1883")
        tls = None
        ca_file = args.ca_file or (Path(creds.ca_file) if creds and creds.ca_file else None)
        if ca_file or args.cert_file:
            tls = TlsConfig(ca_file=ca_file, cert_file=args.cert_file, key_file=args.key_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opts = AgentOptions(
        broker=broker, device_id=device_id, name=args.name or device_id, profile=args.profile,
        tier=Tier(args.tier) if args.tier else None, topic_root=args.topic_root, username=username,
        password=password, tls=tls, heartbeat_s=args.heartbeat_s,
        http_host=args.http_host, http_port=args.http_port, zeroconf=not args.no_zeroconf, mqtt=not args.no_mqtt,
        zeroconf_interfaces=_interfaces(args.zeroconf_interface), models_dir=args.models_dir,
        ollama_host=args.ollama_host, idle_w=args.idle_w, active_w=args.active_w, battery_pct=args.battery_pct,
        rules_file=args.rules, cloud=args.cloud, seed=args.seed, real_models=args.real_models,
        sleep_command=args.sleep_command, allow_sleep_after_s=power_states.get("allow_sleep_after_s"),
        sleep_w=args.sleep_w, wake_latency_ms=args.wake_latency_ms, wake_j=args.wake_j, wake=wake,
        unload_on_sleep=args.unload_on_sleep,
    )
    try:
        opts.extra_models = code_models(echo=args.echo, rules_file=args.rules)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_agent(opts))


async def _run_agent(opts: Any) -> int:
    from .agent.agent import Agent
    from .signals import enter_unless_stopped, stop_on_signals
    stop = asyncio.Event()
    stop_on_signals(stop)
    agent = Agent(opts)
    if not await enter_unless_stopped(agent, stop):
        return 0  # stopped during start-up
    try:
        print(f"agent {opts.device_id} ({agent.capability.tier.value}) → {opts.broker}; "
              f"capability at http://{opts.http_host}:{agent.http_port}/capability", flush=True)
        await stop.wait()
    finally:
        await agent.__aexit__(None, None, None)
    return 0


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    with open_api("GET", url, timeout=timeout) as resp:
        return json.load(resp)


def _api_get(url: str, path: str) -> Any:
    """GET from the running hub, or None after printing why not."""
    try:
        return fetch_json(url.rstrip("/") + path)
    except urllib.error.HTTPError as exc:
        print(f"error: the hub at {url} answered HTTP {exc.code}"
              + (" (set SOVEREIGN_TOKEN)" if exc.code == 401 else ""), file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: no hub at {url} ({getattr(exc, 'reason', exc)}); is `sovereign run` or "
              "`sovereign demo` running? (--url or SOVEREIGN_URL)", file=sys.stderr)
    return None


def _show(args: argparse.Namespace, path: str, render: Any) -> int:
    """GET ``path`` from the running hub; print it as JSON (--json) or through ``render``."""
    data = _api_get(args.url, path)
    if data is None:
        return 1
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(render(data))
    return 0


def format_energy(snap: dict[str, Any]) -> str:
    def show(v: Any, unit: str, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f} {unit}"

    lines = [f"mode: {snap['mode']}"] + [f"  - {r}" for r in snap["mode_reasons"]]
    lines += [
        f"carbon intensity: {show(snap['carbon_g_per_kwh'], 'g/kWh')}   "
        f"forecast points: {len(snap['carbon_forecast'])}",
        f"price: {show(snap['price_per_kwh'], '/kWh', 3)}   export: {show(snap['export_price_per_kwh'], '/kWh', 3)}",
        f"PV: {show(snap['pv_w'], 'W')}   load: {show(snap['load_w'], 'W')}   grid: {show(snap['grid_w'], 'W')}   "
        f"surplus: {show(snap['solar_surplus_w'], 'W')}   home battery: {show(snap['battery_soc_pct'], '%')}",
        "", "INPUT                  VALUE                STATUS   AGE     SOURCE      ERROR",
    ]
    for name, i in sorted(snap["inputs"].items()):
        age = "-" if i["age_s"] is None else f"{i['age_s']:.0f} s"
        value = "-" if i["value"] is None else f"{i['value']:.4g} {i['unit']}"
        lines.append(f"{name:22} {value:20} {i['status']:8} {age:7} {i['source']:11} {i.get('error') or ''}".rstrip())
    if snap["devices"]:
        lines += ["", "DEVICE            POWER    BATTERY  MODE          gCO2/kWh  PRICE/kWh"]
        for device_id, d in sorted(snap["devices"].items()):
            battery = "-" if d["battery_pct"] is None else f"{d['battery_pct']:.0f}%"
            lines.append(f"{device_id:17} {d['source']:8} {battery:8} {d['mode']:13} "
                         f"{show(d['marginal_g_per_kwh'], ''):9} {show(d['marginal_price_per_kwh'], '', 3)}")
    return "\n".join(lines)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .energy.series import SeriesError
    from .simulate import POLICIES, format_table, simulate
    data = Path(__file__).resolve().parent.parent / "plugins" / "replay" / "data"
    policies = tuple(args.policy) if args.policy else POLICIES
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"error: unknown policy {unknown[0]!r} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    for path in (args.fleet, args.trace, args.carbon, args.solar):
        if path is not None and not path.is_file():
            print(f"error: {path}: file not found", file=sys.stderr)
            return 2
    try:
        start = datetime.fromisoformat(args.start)
    except ValueError:
        print(f"error: --start: not a time: {args.start!r}", file=sys.stderr)
        return 2
    try:
        result = simulate(args.fleet, args.trace, args.carbon or data / "gb_ci_2020.csv",
                          args.solar or data / "gb_solar_2020.csv", start, args.seed, policies, args.wrap)
    except SeriesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"{result['tasks']} tasks from {args.trace}, seed {args.seed}")
        print(format_table(result))
    return 0


def _cmd_task(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"task": args.task, "budget_ms": args.budget_ms,
                            "quality_floor": args.quality_floor, "local_only": args.local_only, "mode": args.mode}
    if args.file is not None:
        if args.text is not None:
            print("error: give the input as text or --file, not both", file=sys.stderr)
            return 2
        try:
            body["data"] = base64.b64encode(args.file.read_bytes()).decode()
        except OSError as exc:
            print(f"error: --file: {exc}", file=sys.stderr)
            return 2
    else:
        body["text"] = args.text if args.text is not None else sys.stdin.read()
    if args.model:
        body["model"] = args.model
    if args.requester:
        body["requester"] = args.requester
    infer = args.command == "infer"
    if infer:
        body["stream"] = args.stream
        if args.max_tokens:
            body["options"] = {"max_tokens": args.max_tokens}
        if args.timeout_ms:
            body["timeout_ms"] = args.timeout_ms
        if args.context:
            body["context"] = args.context
    timeout = (args.timeout_ms or 30_000) / 1000 + 5 if infer else 10
    try:
        resp = open_api("POST", f"{args.url.rstrip('/')}/api/{'infer' if infer else 'route'}", body, timeout)
    except urllib.error.HTTPError as exc:
        doc = json.load(exc)
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            err = doc.get("error") or {}
            print(f"error ({err.get('code', exc.code)}): {err.get('message', exc)}", file=sys.stderr)
            for reason in doc.get("reasons", [])[1:]:
                print(f"  - {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: no hub at {args.url} ({getattr(exc, 'reason', exc)}); is `sovereign run` or "
              "`sovereign demo` running? (--url or SOVEREIGN_URL)", file=sys.stderr)
        return 1
    with resp:
        if infer and args.stream:
            doc = {}
            chunks = 0
            for line in resp:
                item = json.loads(line)
                if "chunk" in item and not args.json:
                    print(item["chunk"], end="", flush=True)
                    chunks += 1
                elif item.get("done"):
                    doc = item
            if not args.json and not chunks and doc.get("ok") and doc.get("output") is not None:
                # No chunk came (a hub that does not stream cached answers): the answer itself.
                print(doc["output"] if isinstance(doc["output"], str) else json.dumps(doc["output"]), end="")
            if not args.json:
                print()
        else:
            doc = json.load(resp)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0 if doc.get("ok", True) else 1
    if not infer:
        print(format_decision(doc))
        return 0
    if not doc.get("ok", True):
        # Streamed text stopped short: the lines above are not a whole answer, and the exit says so.
        err = doc.get("error") or {}
        print(f"error ({err.get('code', 'failed')}): {err.get('message', 'no answer')}"
              + (" — the text above is incomplete" if args.stream else ""), file=sys.stderr)
        return 1
    if not (args.stream):
        print(doc["output"] if isinstance(doc["output"], str) else json.dumps(doc["output"]))
    by = doc.get("served_by") or {}
    extra = f", confidence {doc['confidence']:.2f}" if doc.get("confidence") is not None else ""
    print(f"-- {doc['id']}: {by.get('model')} on {by.get('device')} ({by.get('layer')}), "
          f"{doc['latency_ms']:.0f} ms, {doc['joules']:.3g} J, ${doc['cost']:.6f}{extra}"
          + (", simulated" if doc.get("simulated") else "")
          + (", a question meaning the same was answered before" if doc.get("cached") == "semantic" else "")
          + (f", after {len(doc['attempts']) - 1} failed attempt(s)" if len(doc["attempts"]) > 1 else ""),
          file=sys.stderr)
    for src in doc.get("sources") or []:
        print(f"   [{src['n']}] {cli_memory.where(src)}", file=sys.stderr)
    return 0


def _cmd_eeg(args: argparse.Namespace) -> int:
    base = "/api/eeg/sessions"
    if args.action != "start" and args.action != "list" and not args.session:
        print(f"error: sovereign eeg {args.action} needs a session id (see sovereign eeg list)", file=sys.stderr)
        return 2
    body: dict[str, Any] = {}
    if args.action == "start":
        for key in ("board", "serial_port", "file", "master_board", "protocol", "baseline_s"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
    method, path = {"start": ("POST", base), "list": ("GET", base), "stop": ("DELETE", f"{base}/{args.session}"),
                   "pause": ("POST", f"{base}/{args.session}/pause"), "resume": ("POST", f"{base}/{args.session}/resume"),
                   "report": ("POST", f"{base}/{args.session}/report")}[args.action]
    doc = api_call(method, args.url, path, body if method == "POST" else None, timeout=60)
    if doc is None:
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.action == "report":
        print(doc["path"])
    elif args.action == "list":
        print(format_eeg_sessions(doc, args.all))
    else:
        print(f"{doc['session']}  {doc['state']}  board {doc['board']}, protocol {doc['protocol']}, "
              f"{_num(doc.get('updates'))} updates, mean score {_num(doc.get('mean_score'), 3)}")
    return 0


def _num(value: Any, digits: int | None = None) -> str:
    """A number for a table: "-" when there is none (a session stopped before its first score)."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits is not None and isinstance(value, (int, float)) else str(value)


def format_eeg_sessions(doc: dict[str, Any], include_stopped: bool = False) -> str:
    sessions = list(doc.get("sessions", []))
    stopped = list(doc.get("stopped", [])) if include_stopped else []
    if not sessions and not stopped:
        hidden = len(doc.get("stopped", []))
        return "no session running" + (f" ({hidden} stopped: --all lists them)" if hidden else "")
    rows = [("SESSION", "STATE", "BOARD", "PROTOCOL", "UPDATES", "MEAN SCORE")]
    rows += [(s["session"], s["state"], s["board"], s["protocol"], _num(s.get("updates")),
              _num(s.get("mean_score"), 3)) for s in sessions + stopped]
    return "\n".join(columns(rows))


def _cmd_provision(args: argparse.Namespace) -> int:
    import getpass
    import time

    from .provision import ProvisionError, ProvisionOptions, describe, provision
    if not is_valid_device_id(args.device_id):
        print(f"error: invalid device id {args.device_id!r}", file=sys.stderr)
        return 2
    login: tuple[str | None, str | None] = (None, None)
    named, ca_pem = args.broker, None
    if args.pair and not args.dry_run:
        from .agent import credentials
        try:
            creds, ca_pem = credentials.redeem(args.url, args.pair, args.device_id)
        except credentials.PairingFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        login, named = (creds.username, creds.password), args.broker or creds.broker_url
    if not named:
        print("error: give --broker mqtt://HOST:PORT, or --pair CODE to take it from the hub", file=sys.stderr)
        return 2
    try:
        broker = BrokerUrl.parse(named)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if broker.scheme == "mqtts" and not ca_pem:
        print(f"error: the broker {broker} speaks TLS: pair the board (--pair CODE) so that it gets the hub's CA",
              file=sys.stderr)
        return 2
    password = None
    if args.wifi_ssid:
        password = os.environ.get(args.wifi_password_env)
        if password is None and not args.dry_run:
            password = getpass.getpass(f"Wi-Fi password for {args.wifi_ssid}: ")  # never echoed
    opts = ProvisionOptions(args.port, args.device_id, broker.host, broker.port, args.wifi_ssid, password, args.name,
                            args.topic_root, args.battery_adc_pin, mqtt_user=login[0], mqtt_password=login[1],
                            ca_pem=ca_pem if broker.scheme == "mqtts" else None)
    if args.dry_run:
        print(f"would write to {args.port}:")
        for line in describe(opts):
            print("  " + line)
        return 0
    try:
        provision(opts)
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.wait_s <= 0:
        return 0
    print(f"waiting up to {args.wait_s:.0f} s for {args.device_id} to announce itself to {args.url} …", flush=True)
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:
        try:
            doc = fetch_json(f"{args.url.rstrip('/')}/api/devices/{args.device_id}", timeout=2)
            if doc.get("online"):
                print(f"{args.device_id} is online ({doc['tier']}, models: "
                      f"{', '.join(m['name'] for m in doc['capability']['models'])})")
                return 0
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    print(f"error: {args.device_id} did not reach the hub within {args.wait_s:.0f} s (Wi-Fi credentials? broker "
          "address reachable from the board?)", file=sys.stderr)
    return 1


def format_decision(d: dict[str, Any]) -> str:
    lines = [f"policy {d['policy']}, minimum tier {d['min_tier']}"]
    for i, c in enumerate(d["chain"]):
        mark = "→" if i == 0 else " "
        lines.append(f"{mark} {c['model']} on {c['device']} ({c['tier']}): p95 {c['p95_ms']:.0f} ms, {c['joules']:.3g} J, "
                     f"{c['gco2']:.3g} gCO2, ${c['cost']:.6f}, quality {c['quality']:.2f}, score {c['score']:.3f}")
    lines += [f"  excluded {e['device']}{'/' + e['model'] if e['model'] else ''}: {e['reason']}" for e in d["excluded"]]
    lines += [f"  - {r}" for r in d["reasons"]]
    return "\n".join(lines)


def _cmd_device_action(args: argparse.Namespace) -> int:
    if not args.device_id:
        print(f"error: sovereign devices {args.action} needs a device id (see sovereign devices)", file=sys.stderr)
        return 2
    path = f"/api/devices/{urllib.parse.quote(args.device_id, safe='')}"
    method, path = ("POST", f"{path}/reset") if args.action == "reset" else ("DELETE", f"{path}/pairing")
    doc = api_call(method, args.url, path)
    if doc is None:
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.action == "reset":
        print(f"{doc['reset']}: cooldowns and failure counts cleared ({doc['pairs']} model/task pairs)")
    else:
        print(f"{doc['unpaired']}: login revoked at the broker, device forgotten")
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(args, "/api/rules", format_rules)
    if not args.rule_id:
        print(f"error: sovereign rules {args.action} needs a rule id (see sovereign rules list)", file=sys.stderr)
        return 2
    rule = api_call("POST", args.url, f"/api/rules/{args.rule_id}/{args.action}")
    if rule is None:
        return 1
    print(f"rule {rule['id']} is now {rule['state']}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    """``cache clear [--task T]``: DELETE /api/cache (an admin write: SOVEREIGN_TOKEN)."""
    query = f"?task={urllib.parse.quote(args.task, safe='')}" if args.task else ""
    doc = api_call("DELETE", args.url, f"/api/cache{query}")
    if doc is None:
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"removed {doc['removed']} cached answer{'' if doc['removed'] == 1 else 's'}"
              + (f" of task {doc['task']}" if doc.get("task") else ""))
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    """``feedback``: what the per-prompt predictor learned; ``feedback ID up|down``: rate an answer."""
    if args.request_id is None:
        return _show(args, "/api/feedback", format_feedback)
    if args.rating is None:
        print("error: sovereign feedback ID needs a rating: up or down", file=sys.stderr)
        return 2
    doc = api_call("POST", args.url, f"/api/feedback/{urllib.parse.quote(args.request_id, safe='')}",
                   {"rating": args.rating})
    if doc is None:
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"rated {doc['rating']}: {doc['model']} now has {doc['outcomes']} outcomes at {doc['task']} "
              f"(estimates from {doc['min_samples']})")
    return 0


def _cmd_power(args: argparse.Namespace) -> int:
    """``power``: states and plan (GET /api/power); ``power ID wake|sleep``: now (an admin write)."""
    if args.device_id is None:
        return _show(args, "/api/power", format_power)
    if args.action is None:
        print("error: sovereign power ID needs an action: wake or sleep", file=sys.stderr)
        return 2
    doc = api_call("POST", args.url, f"/api/power/{urllib.parse.quote(args.device_id, safe='')}",
                   {"action": args.action}, timeout=args.timeout_s)
    if doc is None:  # refused, not woken, or no hub: api_call printed why
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{doc['device']}: {doc['result']}")
    return 0 if doc["ok"] else 1


def format_feedback(data: dict[str, Any]) -> str:
    fb = data["feedback"]
    lines = [f"per-prompt predictor {'on' if data['enabled'] else 'off'} for {', '.join(data['tasks'])}; "
             f"estimates from {data['min_samples']} outcomes; feedback {fb['up']} up, {fb['down']} down"]
    for task, models in data["outcomes"].items():
        for model, n in sorted(models.items()):
            lines.append(f"  {task:10} {model:30} {n:6} outcomes{'' if n >= data['min_samples'] else ' (cold)'}")
    if not data["outcomes"]:
        lines.append("  nothing learned yet")
    return "\n".join(lines)


def format_rules(data: dict[str, Any]) -> str:
    rows = [("ID", "STATE", "TASK", "SEEN", "HITS", "INPUT", "ANSWER")]
    for r in data["rules"]:
        rows.append((r["id"], r["state"], r["task"], str(r["observed"]), str(r["hits"]), r["pattern"][2:42],
                     json.dumps(r["answer"])[:40]))
    if len(rows) == 1:
        return "(no compiled patterns yet)"
    return "\n".join(columns(rows))


def _fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, never "-0.0000"."""
    return f"{round(value, digits) + 0.0:.{digits}f}"


def format_costs(report: dict[str, Any]) -> str:
    lines = []
    cf = report.get("counterfactual") or {}
    priced = cf.get("input_per_mtok") is not None
    for period in ("today", "week", "month"):
        r = report[period]
        t = r["total"]
        line = f"{period}: {t['count']} tasks, cost {_fixed(t['cost'], 6)}, {t['joules']:.0f} J, {t['gco2']:.2f} gCO2; "
        if t.get("saved_cost") is None or (not priced and not t["count"]):
            line += "all-cloud: no price"
        else:
            line += (f"all-cloud would have cost {_fixed(t['all_cloud_cost'], 6)} "
                     f"(saved {_fixed(t['saved_cost'], 6)}, estimate)")
            if t.get("unpriced"):
                line += f"; {t['unpriced']} tasks without a cloud price left out"
        lines.append(line)
        for layer, v in r["by_layer"].items():
            lines.append(f"  {layer:8} {v['count']:6} tasks  cost {_fixed(v['cost'], 6)}  {v['gco2']:.2f} gCO2  "
                         f"mean {v['mean_latency_ms']:.0f} ms")
    cache = report.get("cache", {})
    lines.append(f"cache: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses")
    if cf:
        model = cf.get("model")
        lines.append(f"all-cloud priced as {model} at {cf['input_per_mtok']:g} in / {cf['output_per_mtok']:g} out per "
                     f"million tokens: {cf.get('source')}" if priced else
                     f"all-cloud: no price for {model} (set router.cloud_prices.{model} or router.counterfactual_model "
                     "in hub.toml)")
    return "\n".join(lines)


def _clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_deferred(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no deferred requests"
    rows = [("ID", "TASK", "STATE", "RUNS AT", "DEADLINE", "ANSWER TO")]
    rows += [(d["id"], d["task"], d["state"], _clock(d["run_at"]) if d["state"] == "waiting" else "-",
              _clock(d["deadline"]), d["reply_topic"] or "HTTP (by id)") for d in items]
    return "\n".join(columns(rows))


def format_deferred_one(d: dict[str, Any]) -> str:
    lines = [f"{d['id']}: {d['task']}, {d['state']}; deadline {_clock(d['deadline'])}"]
    if d["state"] == "waiting":
        lines.append(f"runs at {_clock(d['run_at'])}")
    out = d.get("outcome")
    if out is not None:
        lines.append(f"finished {_clock(d.get('finished_at'))}: " + (
            f"{out.get('output')!r} via {(out.get('served_by') or {}).get('model')}" if out.get("ok")
            else f"failed: {(out.get('error') or {}).get('message')}"))
    return "\n".join(lines)


def format_device_table(devices: list[dict[str, Any]]) -> str:
    rows = [("ID", "TIER", "STATUS", "POWER", "BATTERY", "MODELS", "SOURCES")]
    for d in devices:
        cap = d["capability"]
        power = (d.get("energy") or cap["power"])
        battery = power.get("battery_pct")
        rows.append((
            d["id"], d["tier"], d.get("state") or ("online" if d["online"] else "offline"),
            power.get("source", "?"), "-" if battery is None else f"{battery:.0f}%",
            ", ".join(m["name"] for m in cap.get("models", [])) or "-", ",".join(d["sources"]),
        ))
    lines = columns(rows)
    if len(rows) == 1:
        lines.append("(no devices yet)")
    if any(d.get("state") == "pending" for d in devices):
        lines.append("pending: seen but not paired, never routed to (`sovereign pair` prints a code for it)")
    return "\n".join(lines)
