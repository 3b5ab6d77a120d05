# Sovereign Hub firmware for watch- and wearable-class boards (MicroPython).
#
# At boot: Wi-Fi (where the port has it), MQTT with the device's status topic as its last will,
# the retained capability announcement (tier tiny, the same schema as `sovereign agent`), then a
# loop that answers the hub's RPC requests (health, echo, infer for the tiny models in models/)
# and sends an energy heartbeat with the battery every `heartbeat_s`. Configuration: config.json.
import json
import sys
import time

from model import Model
from mqtt_lite import MQTTClient

try:
    import network
except ImportError:  # the unix port: the host's network is already up
    network = None
try:
    import machine
except ImportError:
    machine = None

VERSION = "0.1.0"
DEFAULTS = {"broker": {"host": "127.0.0.1", "port": 1883}, "topic_root": "sovereign", "heartbeat_s": 10,
            "models": ["intent-tiny", "eeg-state-tiny"], "power": {"active_w": 0.25, "idle_w": 0.02},
            "battery": {}, "battery_floor_pct": 30, "idle_sleep_ms": 50}


def ticks_us():
    return time.ticks_us() if hasattr(time, "ticks_us") else int(time.time() * 1e6)


def ticks_diff(a, b):
    return time.ticks_diff(a, b) if hasattr(time, "ticks_diff") else a - b


def load_config(path):
    with open(path) as f:
        cfg = json.load(f)
    for key, value in DEFAULTS.items():
        cfg.setdefault(key, value)
    if "device_id" not in cfg:
        raise ValueError("config.json: device_id is required")
    return cfg


def wifi(cfg):
    """Connect with retry and exponential backoff; set the mDNS hostname where supported."""
    if network is None or "wifi" not in cfg:
        return
    try:
        network.hostname(cfg["device_id"])
    except (AttributeError, ValueError, OSError):
        pass
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    backoff = 1
    while not wlan.isconnected():
        wlan.connect(cfg["wifi"]["ssid"], cfg["wifi"].get("password", ""))
        for _ in range(backoff * 10):
            if wlan.isconnected():
                return
            time.sleep(0.1)
        backoff = min(backoff * 2, 30)


class Battery:
    """Voltage on an ADC pin through a divider → % by a linear Li-ion curve (3.3 V empty, 4.2 V
    full); a charging-detect pin if wired. Boards without either report the configured `pct`."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.adc = None
        self.charge_pin = None
        if machine is not None and "adc_pin" in cfg and hasattr(machine, "ADC"):
            self.adc = machine.ADC(machine.Pin(cfg["adc_pin"]))
        if machine is not None and "charging_pin" in cfg and hasattr(machine, "Pin"):
            self.charge_pin = machine.Pin(cfg["charging_pin"], machine.Pin.IN)

    def read(self):
        if self.adc is not None:
            volts = self.adc.read_uv() / 1e6 * self.cfg.get("divider", 2.0)
            lo, hi = self.cfg.get("v_empty", 3.3), self.cfg.get("v_full", 4.2)
            pct = max(0.0, min(100.0, (volts - lo) / (hi - lo) * 100))
        else:
            pct = self.cfg.get("pct")
        charging = bool(self.charge_pin.value()) if self.charge_pin is not None else self.cfg.get("charging")
        return pct, charging


class Device:
    def __init__(self, cfg, base="."):
        self.cfg = cfg
        self.id = cfg["device_id"]
        root = cfg["topic_root"]
        self.topics = {k: "%s/device/%s/%s" % (root, self.id, k) for k in ("announce", "status", "energy", "rpc")}
        self.models = {}
        for name in cfg["models"]:
            self.models[name] = Model.load("%s/models/%s.json" % (base, name))
        self.battery = Battery(cfg["battery"])
        self.latency = {}  # model -> recent compute times, ms
        self.client = None
        self.active = 0

    # -- what the hub sees ---------------------------------------------------------------------

    def capability(self):
        pct, charging = self.battery.read()
        power = {"source": "battery" if pct is not None else "mains", "idle_w": self.cfg["power"]["idle_w"],
                 "active_w": self.cfg["power"]["active_w"], "battery_floor_pct": self.cfg["battery_floor_pct"]}
        if pct is not None:
            power["battery_pct"] = round(pct, 1)
            power["charging"] = bool(charging)
        models = []
        for name, m in self.models.items():
            spec = {"name": name, "runtime": "micropython", "tasks": m.tasks, "max_concurrency": 1}
            lat = sorted(self.latency.get(name, []))
            if lat:
                p50 = lat[len(lat) // 2]
                spec["latency_ms"] = {"p50": round(p50, 3), "p95": round(max(lat[int(0.95 * (len(lat) - 1))], p50), 3)}
                spec["energy_j_per_call"] = round(self.cfg["power"]["active_w"] * p50 / 1000, 6)
            models.append(spec)
        impl = sys.implementation
        return {"v": 1, "id": self.id, "name": self.cfg.get("name", self.id), "tier": "tiny",
                "hardware": {"cpu": "%s (%s)" % (sys.platform, impl.name), "cores": 1},
                "power": power, "models": models,
                "software": "sovereign-firmware %s (%s %s)" % (VERSION, impl.name, ".".join(str(v) for v in impl.version[:3]))}

    def energy(self):
        pct, charging = self.battery.read()
        doc = {"v": 1, "ts": time.time(), "source": "battery" if pct is not None else "mains",
               "power_w": self.cfg["power"]["active_w" if self.active else "idle_w"], "load": {"active": self.active}}
        if pct is not None:
            doc["battery_pct"] = round(pct, 1)
            doc["charging"] = bool(charging)
        return doc

    # -- MQTT ----------------------------------------------------------------------------------

    def connect(self):
        b = self.cfg["broker"]
        ca = b.get("ca_der_b64")  # TLS: the hub's CA, from pairing (sovereign provision --pair)
        if ca:
            import binascii
            ca = binascii.a2b_base64(ca)
        c = MQTTClient("sovereign-fw-" + self.id, b["host"], b.get("port", 1883), keepalive=b.get("keepalive", 30),
                       user=b.get("user"), password=b.get("password"), ca_der=ca or None)
        c.set_last_will(self.topics["status"], "offline", retain=True, qos=1)
        c.set_callback(self.on_message)
        c.connect()
        c.publish(self.topics["status"], "online", retain=True, qos=1)
        c.publish(self.topics["announce"], json.dumps(self.capability()), retain=True, qos=1)
        c.subscribe(self.topics["rpc"], qos=1)
        c.publish(self.topics["energy"], json.dumps(self.energy()))
        self.client = c

    def reply(self, topic, doc):
        if topic and topic.startswith(self.cfg["topic_root"] + "/") and "#" not in topic and "+" not in topic:
            self.client.publish(topic, json.dumps(doc), qos=1)

    def on_message(self, topic, payload):
        received = ticks_us()
        rid, reply_to = None, None
        try:
            req = json.loads(payload)
            rid, reply_to = req.get("id"), req.get("reply_to")
            result = self.call(req.get("method"), req.get("params") or {})
            doc = {"v": 1, "id": rid, "ok": True, "result": result,
                   "timings": {"queue_ms": 0.0, "compute_ms": ticks_diff(ticks_us(), received) / 1000}}
        except RpcError as exc:
            doc = {"v": 1, "id": rid, "ok": False, "error": {"code": exc.code, "message": exc.message}}
        except (ValueError, KeyError, TypeError) as exc:
            doc = {"v": 1, "id": rid, "ok": False, "error": {"code": "bad_request", "message": str(exc)}}
        self.reply(reply_to, doc)

    def call(self, method, params):
        if method == "health":
            return {"device_id": self.id, "active": self.active, "version": VERSION}
        if method == "echo":
            return {"echo": params}
        if method == "cancel":
            return {"cancelled": False, "reason": "calls here finish in milliseconds"}
        if method != "infer":
            raise RpcError("unknown_method", "unknown method %r (known: health, echo, infer, cancel)" % method)
        name = params.get("model")
        m = self.models.get(name)
        if m is None:
            raise RpcError("unknown_model", "no model %r here (it has %s)" % (name, ", ".join(self.models)))
        if params.get("task") not in m.tasks:
            raise RpcError("bad_request", "model %s does not do %r" % (name, params.get("task")))
        text = params.get("text")
        if text is None:
            raise RpcError("bad_request", "text input required")
        inp = text if m.features["kind"] == "hashing" else json.loads(text)
        self.active += 1
        t0 = ticks_us()
        try:
            label, p, _ = m.predict(inp)
        finally:
            self.active -= 1
        ms = ticks_diff(ticks_us(), t0) / 1000
        lat = self.latency.setdefault(name, [])
        lat.append(ms)
        if len(lat) > 50:
            lat.pop(0)
        return {"model": name, "output": label, "confidence": round(p, 4), "joules_estimated": True,
                "joules": round(self.cfg["power"]["active_w"] * ms / 1000, 9), "stats": {"compute_ms": ms}}

    # -- the loop ------------------------------------------------------------------------------

    def run(self):
        backoff = 1
        while True:
            try:
                wifi(self.cfg)
                self.connect()
                backoff = 1
                self.serve()
            except (OSError, ValueError) as exc:  # lost the broker or the network: back off, retry
                print("sovereign: %s; retrying in %d s" % (exc, backoff))
                time.sleep(backoff)
                backoff = min(backoff * 2, 60)

    def serve(self):
        last_beat = time.time()
        calls = 0
        while True:
            self.client.check_msg(self.cfg["idle_sleep_ms"])
            if time.time() - last_beat >= self.cfg["heartbeat_s"]:
                last_beat = time.time()
                self.client.publish(self.topics["energy"], json.dumps(self.energy()))
                n = sum(len(v) for v in self.latency.values())
                if n != calls:  # measured latency changed: announce it
                    calls = n
                    self.client.publish(self.topics["announce"], json.dumps(self.capability()), retain=True, qos=1)
            pct, _ = self.battery.read()
            if pct is not None and machine is not None and hasattr(machine, "lightsleep"):
                machine.lightsleep(self.cfg["idle_sleep_ms"])  # on battery: sleep between requests


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def main(path="config.json", base="."):
    Device(load_config(path), base).run()


if __name__ == "__main__":
    main(*sys.argv[1:])
