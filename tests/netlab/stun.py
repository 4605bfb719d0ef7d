"""A small STUN/TURN client (RFC 5389 / 8489, RFC 5766 / 8656): Binding over UDP, and an
Allocate over UDP, TCP or TLS with long-term credentials (coturn's static users, or the TURN REST
API's time-limited ones), then a relayed round trip to a UDP echo peer through the allocation.
Enough to prove that a TURN server works from a given namespace; not a general library.
"""

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import time
import zlib

MAGIC = 0x2112A442
BINDING, ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION = 0x001, 0x003, 0x004, 0x006, 0x007, 0x008
REQUEST, INDICATION, SUCCESS, ERROR = 0x000, 0x010, 0x100, 0x110

A_USERNAME, A_MI, A_ERROR, A_LIFETIME, A_PEER, A_DATA = 0x0006, 0x0008, 0x0009, 0x000D, 0x0012, 0x0013
A_REALM, A_NONCE, A_RELAYED, A_TRANSPORT, A_MAPPED = 0x0014, 0x0015, 0x0016, 0x0019, 0x0020
A_FINGERPRINT = 0x8028


class StunError(RuntimeError):
    pass


def rest_credentials(secret, name="netlab", ttl=3600):
    """coturn's --use-auth-secret credentials: username 'expiry:name',
    password base64(HMAC-SHA1(secret, username))."""
    username = f"{int(time.time()) + ttl}:{name}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


def _attr(t, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", t, len(value)) + value + b"\0" * pad


def _xor_addr(ip, port, tid):
    x_port = port ^ (MAGIC >> 16)
    x_ip = struct.unpack("!I", socket.inet_aton(ip))[0] ^ MAGIC
    return struct.pack("!BBHI", 0, 1, x_port, x_ip)


def _parse_xor_addr(v):
    family, x_port, x_ip = v[1], struct.unpack("!H", v[2:4])[0], struct.unpack("!I", v[4:8])[0]
    if family != 1:
        raise StunError("only IPv4 addresses are expected here")
    return socket.inet_ntoa(struct.pack("!I", x_ip ^ MAGIC)), x_port ^ (MAGIC >> 16)


class Message:
    def __init__(self, method, cls, tid=None):
        self.method, self.cls = method, cls
        self.tid = tid or os.urandom(12)
        self.attrs = []

    def add(self, t, value):
        self.attrs.append((t, value))
        return self

    def encode(self, key=None, fingerprint=True):
        body = b"".join(_attr(t, v) for t, v in self.attrs)
        mtype = self.method | self.cls
        if key is not None:
            head = struct.pack("!HHI", mtype, len(body) + 24, MAGIC) + self.tid
            mac = hmac.new(key, head + body, hashlib.sha1).digest()
            body += _attr(A_MI, mac)
        if fingerprint:
            head = struct.pack("!HHI", mtype, len(body) + 8, MAGIC) + self.tid
            crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
            body += _attr(A_FINGERPRINT, struct.pack("!I", crc))
        return struct.pack("!HHI", mtype, len(body), MAGIC) + self.tid + body


def decode(data):
    if len(data) < 20:
        raise StunError("short STUN message")
    mtype, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC:
        raise StunError("not a STUN message")
    attrs, off = {}, 20
    while off + 4 <= 20 + length:
        t, n = struct.unpack("!HH", data[off : off + 4])
        attrs.setdefault(t, data[off + 4 : off + 4 + n])
        off += 4 + n + (4 - n % 4) % 4
    return {"method": mtype & 0x3EEF, "cls": mtype & 0x0110, "tid": data[8:20], "attrs": attrs}


def _error(msg):
    v = msg["attrs"].get(A_ERROR, b"\0\0\0\0")
    return v[2] * 100 + v[3], v[4:].decode(errors="replace")


class Transport:
    """One STUN conversation over UDP, TCP or TLS (TCP framing: messages back to back, and
    ChannelData is not used here)."""

    def __init__(self, kind, server, ca_file=None, timeout=3.0, sock=None):
        self.kind, self.server, self.timeout = kind, server, timeout
        if kind == "udp":
            self.sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.settimeout(timeout)
        else:
            raw = socket.create_connection(server, timeout=timeout)
            if kind == "tls":
                ctx = ssl.create_default_context(cafile=ca_file)
                raw = ctx.wrap_socket(raw, server_hostname=server[0])
            self.sock = raw
            self.buf = b""

    def send(self, data):
        if self.kind == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv(self, deadline):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no STUN answer")
            self.sock.settimeout(left)
            if self.kind == "udp":
                data, _ = self.sock.recvfrom(65536)
                return data
            while len(self.buf) >= 20:
                n = 20 + struct.unpack("!H", self.buf[2:4])[0]
                if len(self.buf) >= n:
                    msg, self.buf = self.buf[:n], self.buf[n:]
                    return msg
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise StunError("the server closed the connection")
            self.buf += chunk

    def transact(self, msg, key=None, retries=4):
        """Send a request and return the answer with the same transaction id."""
        data = msg.encode(key)
        tries = retries if self.kind == "udp" else 1
        for attempt in range(tries):
            self.send(data)
            deadline = time.monotonic() + (self.timeout / tries if self.kind == "udp" else self.timeout)
            try:
                while True:
                    ans = decode(self.recv(deadline))
                    if ans["tid"] == msg.tid:
                        return ans
            except socket.timeout:
                if attempt == tries - 1:
                    raise StunError(f"no answer from {self.server[0]}:{self.server[1]} over {self.kind}") from None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def binding(server, timeout=2.0, sock=None, kind="udp"):
    """Our address as the server sees it: (ip, port)."""
    t = Transport(kind, server, timeout=timeout, sock=sock)
    try:
        ans = t.transact(Message(BINDING, REQUEST))
        if ans["cls"] != SUCCESS or A_MAPPED not in ans["attrs"]:
            raise StunError("Binding failed")
        return _parse_xor_addr(ans["attrs"][A_MAPPED])
    finally:
        if sock is None:
            t.close()


def allocate_and_relay(kind, server, username, password, peer, ca_file=None, timeout=4.0):
    """Allocate a UDP relay over `kind` (udp/tcp/tls), permit `peer` (an echo server's
    (ip, port)), send it a datagram through the relay and wait for the echo. Returns
    {relayed, mapped, echo_ms}. Raises StunError with the server's error code on refusal."""
    t = Transport(kind, server, ca_file=ca_file, timeout=timeout)
    try:
        req = Message(ALLOCATE, REQUEST).add(A_TRANSPORT, bytes([17, 0, 0, 0]))
        ans = t.transact(req)
        if ans["cls"] != ERROR or _error(ans)[0] != 401:
            raise StunError(f"unexpected first Allocate answer: {ans['cls']:#x} {_error(ans)}")
        realm, nonce = ans["attrs"][A_REALM], ans["attrs"][A_NONCE]
        key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()

        def signed(method):
            return (
                Message(method, REQUEST)
                .add(A_USERNAME, username.encode())
                .add(A_REALM, realm)
                .add(A_NONCE, nonce)
            )

        ans = t.transact(signed(ALLOCATE).add(A_TRANSPORT, bytes([17, 0, 0, 0])), key)
        if ans["cls"] != SUCCESS:
            code, reason = _error(ans)
            raise StunError(f"Allocate refused over {kind}: {code} {reason}")
        relayed = _parse_xor_addr(ans["attrs"][A_RELAYED])
        mapped = _parse_xor_addr(ans["attrs"][A_MAPPED]) if A_MAPPED in ans["attrs"] else None
        perm = signed(CREATE_PERMISSION).add(A_PEER, _xor_addr(peer[0], peer[1], None))
        ans = t.transact(perm, key)
        if ans["cls"] != SUCCESS:
            code, reason = _error(ans)
            raise StunError(f"CreatePermission for {peer[0]} refused: {code} {reason}")
        payload = b"netlab-relay-" + os.urandom(8).hex().encode()
        send = Message(SEND, INDICATION).add(A_PEER, _xor_addr(peer[0], peer[1], None)).add(A_DATA, payload)
        start = time.monotonic()
        echo_ms = None
        for _ in range(4):
            t.send(send.encode(fingerprint=True))
            deadline = time.monotonic() + timeout / 4
            try:
                while True:
                    msg = decode(t.recv(deadline))
                    if msg["method"] == DATA and msg["attrs"].get(A_DATA) == payload:
                        echo_ms = (time.monotonic() - start) * 1000
                        break
            except socket.timeout:
                continue
            break
        if echo_ms is None:
            raise StunError(f"nothing came back through the relay over {kind}")
        # Release the allocation.
        try:
            t.transact(signed(REFRESH).add(A_LIFETIME, struct.pack("!I", 0)), key, retries=1)
        except (StunError, OSError):
            pass
        return {"relayed": f"{relayed[0]}:{relayed[1]}", "mapped": mapped and f"{mapped[0]}:{mapped[1]}", "echo_ms": round(echo_ms, 2)}
    finally:
        t.close()
