"""``sovereign provision``: put the MicroPython firmware and its configuration on a board.

Talks to the board's raw REPL over pyserial (Ctrl-A: no echo, so credentials never appear on
the terminal), writes the files in chunks, resets the board and waits until its announcement
reaches the hub. Errors name the cause: a port that does not exist or is in use, a board that is
not running MicroPython, a full filesystem.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import serial

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware" / "micropython"
CHUNK = 256  # bytes per write() call in the raw REPL: small boards have small input buffers


class ProvisionError(Exception):
    pass


@dataclass
class ProvisionOptions:
    port: str
    device_id: str
    broker_host: str
    broker_port: int = 1883
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    name: str | None = None
    topic_root: str = "sovereign"
    battery_adc_pin: int | None = None
    baudrate: int = 115200
    #: The board's own MQTT login, from pairing (``sovereign provision --pair CODE``).
    mqtt_user: str | None = None
    mqtt_password: str | None = None
    #: The broker's CA (PEM) when it speaks TLS (the hub's own, from pairing).
    ca_pem: str | None = None


def pem_to_der_b64(pem: str) -> str:
    """A PEM certificate's body is its DER in base64: what the firmware's TLS (mbedtls) loads."""
    body = [line.strip() for line in pem.strip().splitlines() if line.strip() and not line.startswith("-----")]
    if not body or not pem.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        raise ProvisionError("the broker's CA is not a PEM certificate")
    return "".join(body)


def board_config(o: ProvisionOptions) -> dict[str, object]:
    broker: dict[str, object] = {"host": o.broker_host, "port": o.broker_port}
    if o.mqtt_user:
        broker.update(user=o.mqtt_user, password=o.mqtt_password or "")
    if o.ca_pem:
        broker["ca_der_b64"] = pem_to_der_b64(o.ca_pem)
    cfg: dict[str, object] = {"device_id": o.device_id, "name": o.name or o.device_id, "topic_root": o.topic_root,
                              "broker": broker}
    if o.wifi_ssid:
        cfg["wifi"] = {"ssid": o.wifi_ssid, "password": o.wifi_password or ""}
    if o.battery_adc_pin is not None:
        cfg["battery"] = {"adc_pin": o.battery_adc_pin, "divider": 2.0}
    return cfg


def files(o: ProvisionOptions) -> list[tuple[str, bytes]]:
    out = [(p.name, p.read_bytes()) for p in sorted(FIRMWARE.glob("*.py"))]
    out += [(f"models/{p.name}", p.read_bytes()) for p in sorted((FIRMWARE / "models").glob("*.json"))]
    out.append(("config.json", json.dumps(board_config(o)).encode()))
    return out


def describe(o: ProvisionOptions) -> list[str]:
    """What would be written (--dry-run), with the Wi-Fi and MQTT passwords masked."""
    lines = []
    for name, data in files(o):
        if name == "config.json":
            shown = board_config(o)
            for key in ("wifi", "broker"):
                if isinstance(shown.get(key), dict) and "password" in shown[key]:  # type: ignore[operator]
                    shown[key] = {**shown[key], "password": "***"}  # type: ignore[dict-item]
            lines.append(f"{name:<32} {len(data):>7} bytes  {json.dumps(shown)}")
        else:
            lines.append(f"{name:<32} {len(data):>7} bytes")
    return lines


class RawRepl:
    def __init__(self, port: str, baudrate: int = 115200, timeout_s: float = 5.0) -> None:
        if not os.path.exists(port):
            raise ProvisionError(f"serial port {port} does not exist (is the board plugged in?)")
        try:
            self.ser = serial.Serial(port, baudrate, timeout=0.1, exclusive=True)
        except serial.SerialException as exc:
            raise ProvisionError(f"cannot open {port}: {exc} (another program, such as a serial monitor, "
                                 "may be using it)") from None
        self.timeout_s = timeout_s
        self._buf = bytearray()

    def close(self) -> None:
        self.ser.close()

    def _read_until(self, marker: bytes, timeout_s: float | None = None) -> bytes:
        """Bytes up to and including ``marker``; what came after it stays buffered."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while (i := self._buf.find(marker)) < 0:
            if time.monotonic() > deadline:
                raise TimeoutError(bytes(self._buf))
            self._buf += self.ser.read(max(1, self.ser.in_waiting))
        out = bytes(self._buf[:i + len(marker)])
        del self._buf[:i + len(marker)]
        return out

    def enter(self) -> None:
        self.ser.write(b"\r\x03\x03")  # stop whatever runs (the firmware's loop)
        time.sleep(0.2)
        self.ser.reset_input_buffer()
        self._buf.clear()
        self.ser.write(b"\x01")
        try:
            self._read_until(b"raw REPL; CTRL-B to exit\r\n>", 3.0)
        except TimeoutError as exc:
            seen = exc.args[0][-80:] if exc.args else b""
            raise ProvisionError(f"no MicroPython raw REPL on {self.ser.port} (got {seen!r}): is MicroPython "
                                 "flashed? See firmware/README.md for the official images") from None

    def exec(self, code: str) -> str:
        self.ser.write(code.encode() + b"\x04")
        try:
            self._read_until(b"OK")
            out = self._read_until(b"\x04")[:-1]
            err = self._read_until(b"\x04")[:-1]
            self._read_until(b">")
        except TimeoutError:
            raise ProvisionError("the board stopped answering") from None
        if err:
            text = err.decode(errors="replace")
            # MicroPython says "OSError: 28" (ENOSPC), CPython-style ports "[Errno 28] ...".
            if "ENOSPC" in text or "OSError: 28" in text or "Errno 28" in text:
                raise ProvisionError("the board's filesystem is full: remove files or use a board with more flash")
            raise ProvisionError(f"the board said: {text.strip().splitlines()[-1]}")
        return out.decode(errors="replace")

    def put(self, path: str, data: bytes) -> None:
        if "/" in path:
            self.exec(f"import os\ntry:\n os.mkdir({path.rsplit('/', 1)[0]!r})\nexcept OSError:\n pass")
        self.exec(f"f=open({path + '.tmp'!r},'wb')\nw=f.write")
        for i in range(0, len(data), CHUNK):
            self.exec(f"w({data[i:i + CHUNK]!r})")
        # Written whole, then renamed: a reset mid-upload never leaves half a main.py.
        self.exec(f"f.close()\nimport os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass\n"
                  f"os.rename({path + '.tmp'!r},{path!r})")

    def reset(self) -> None:
        """machine.reset() where there is one (a board); a soft reboot otherwise."""
        self.ser.write(b"try:\n import machine\n machine.reset()\nexcept (ImportError, AttributeError):\n pass\n\x04")
        time.sleep(0.3)
        self.ser.write(b"\x02\x04")  # leave the raw REPL; Ctrl-D soft-reboots into main.py


def provision(o: ProvisionOptions, progress: "callable[[str], None]" = print) -> None:  # type: ignore[valid-type]
    repl = RawRepl(o.port, o.baudrate)
    try:
        repl.enter()
        impl = repl.exec("import sys\nprint(sys.implementation.name, sys.platform)").strip()
        progress(f"board: {impl}")
        for name, data in files(o):
            repl.put(name, data)
            progress(f"wrote {name} ({len(data)} bytes)")
        repl.reset()
        progress("reset the board")
    finally:
        repl.close()
