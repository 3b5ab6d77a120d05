"""A certificate authority of the hub's own, for the embedded broker's TLS listener.

Made once with Debian's ``openssl`` command (no Python crypto dependency): an EC P-256 CA valid
for ten years, and a server certificate it signs whose names are this machine's host names and
addresses plus any configured ones. Devices receive ``ca.pem`` when they pair and verify the
broker against it. The server certificate is made again when the set of names changes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import psutil


class TlsError(RuntimeError):
    pass


def local_names(host: str, extra: list[str]) -> list[str]:
    """Names and addresses a device may use to reach this machine."""
    names = {"localhost", "127.0.0.1", "::1", *extra}
    hostname = socket.gethostname()
    names |= {hostname, f"{hostname}.local"}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host)
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                names.add(a.address.split("%")[0])
    return sorted(names)


def _san(names: list[str]) -> str:
    parts = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            parts.append(f"IP:{name}")
        except ValueError:
            parts.append(f"DNS:{name}")
    return ",".join(parts)


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise TlsError("the broker needs TLS off loopback and 'openssl' is not installed (Debian: apt-get install openssl)")
    done = subprocess.run([binary, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def ensure_broker_certificate(tls_dir: Path, host: str, extra_names: list[str]) -> list[str]:
    """CA (once) and a server certificate for the current names in ``tls_dir``; returns the names."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    ca_key, ca_pem = tls_dir / "ca.key", tls_dir / "ca.pem"
    if not (ca_key.is_file() and ca_pem.is_file()):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(ca_key), "-out", str(ca_pem), "-days", "3650",
                 "-subj", "/CN=Sovereign Hub local CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    names = local_names(host, extra_names)
    stamp = tls_dir / "server-names.json"
    key, pem = tls_dir / "server.key", tls_dir / "server.pem"
    if key.is_file() and pem.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == names:
        return names
    csr = tls_dir / "server.csr"
    ext = tls_dir / "server.ext"
    ext.write_text(f"subjectAltName={_san(names)}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", "/CN=Sovereign Hub broker")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(pem), "-days", "825", "-extfile", str(ext))
    for path in (ca_key, key):
        os.chmod(path, 0o600)
    csr.unlink(missing_ok=True)
    stamp.write_text(json.dumps(names))
    return names
