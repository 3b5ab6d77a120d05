# A small MQTT 3.1.1 client for MicroPython (and CPython, for the tests): connect with a last
# will, publish (QoS 0/1), subscribe, and a non-blocking check for incoming messages. umqtt.simple
# would do, but it is not in every build (not in the unix port) and blocks on reads.
import socket
import struct
import time

try:
    import select
except ImportError:  # pragma: no cover
    import uselect as select


class MQTTError(Exception):
    pass


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _remaining(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class MQTTClient:
    def __init__(self, client_id, host, port=1883, keepalive=30, user=None, password=None, ca_der=None):
        self.client_id, self.host, self.port, self.keepalive = client_id, host, port, keepalive
        self.user, self.password = user, password
        self.ca_der = ca_der  # the broker's CA (DER): TLS, the certificate verified against it
        self.will = None
        self.sock = None
        self.cb = None
        self.pid = 0
        self.last_tx = 0

    def set_callback(self, cb):
        self.cb = cb

    def set_last_will(self, topic, msg, retain=True, qos=1):
        self.will = (topic, msg, retain, qos)

    def _send(self, data):
        view, sent = memoryview(data), 0
        while sent < len(data):
            n = self.sock.write(view[sent:]) if hasattr(self.sock, "write") else self.sock.send(view[sent:])
            if n is None:
                n = 0
            sent += n
        self.last_tx = time.time()

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise MQTTError("connection closed by the broker")
            buf += chunk
        return buf

    def connect(self, timeout_s=10):
        addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        self.sock = socket.socket()
        self.sock.settimeout(timeout_s)
        self.sock.connect(addr)
        if self.ca_der is not None:
            import ssl  # only boards that talk TLS pay for it
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.ca_der)
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
        flags = 0x02  # clean session
        payload = _str(self.client_id)
        if self.will:
            topic, msg, retain, qos = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        var = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive)
        self._send(bytes([0x10]) + _remaining(len(var) + len(payload)) + var + payload)
        resp = self._recv(4)
        if resp[0] != 0x20 or resp[3] != 0:
            raise MQTTError("broker refused the connection (CONNACK code %d)" % resp[3])

    def publish(self, topic, msg, retain=False, qos=0):
        if isinstance(msg, str):
            msg = msg.encode()
        body = _str(topic)
        if qos:
            self.pid = self.pid % 65535 + 1
            body += struct.pack("!H", self.pid)
        body += msg
        self._send(bytes([0x30 | (qos << 1) | (1 if retain else 0)]) + _remaining(len(body)) + body)

    def subscribe(self, topic, qos=1):
        self.pid = self.pid % 65535 + 1
        body = struct.pack("!H", self.pid) + _str(topic) + bytes([qos])
        self._send(bytes([0x82]) + _remaining(len(body)) + body)

    def ping(self):
        self._send(b"\xc0\x00")

    def disconnect(self):
        try:
            self._send(b"\xe0\x00")
        finally:
            self.sock.close()
            self.sock = None

    def check_msg(self, timeout_ms=0):
        """Handle what has arrived, waiting at most ``timeout_ms`` for the first packet."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        waited = timeout_ms
        # CPython's TLS socket may hold decrypted bytes that poll() cannot see (pending());
        # MicroPython's reports them through poll itself.
        pending = getattr(self.sock, "pending", None)
        while (pending is not None and pending()) or poller.poll(waited):
            self._packet()
            waited = 0
        if time.time() - self.last_tx >= self.keepalive / 2:
            self.ping()

    def _packet(self):
        head = self._recv(1)[0]
        n, shift = 0, 0
        while True:
            b = self._recv(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        body = self._recv(n) if n else b""
        kind = head & 0xF0
        if kind == 0x30:  # PUBLISH
            tlen = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + tlen].decode()
            pos = 2 + tlen
            qos = (head >> 1) & 0x03
            if qos:
                pid = body[pos:pos + 2]
                pos += 2
                self._send(b"\x40\x02" + pid)  # PUBACK
            if self.cb:
                self.cb(topic, body[pos:])
        # CONNACK, PUBACK, SUBACK, PINGRESP: nothing to do
