#!/usr/bin/env python3
"""Real-traffic probes of the test network: the probe server that runs in the internet
namespace (`probe.py serve IP`), and the client side that the self-check runs from a host's
namespace (sockets made there with system.in_netns).

Server ports (UDP unless said), see spec.PROBE_PORTS:
- reflect_a / reflect_b: "M"+nonce -> "M"+nonce+"ip:port" as seen (the NAT mapping per
  destination); "U"+nonce -> the unsolicited port sends "U"+nonce to that address (filtering).
- echo: anything echoed unchanged; "E"+sid+seq... counted per session; "S"+sid -> the count.
- rate: "D"+sid+seq+padding counted (bytes after a warm-up, unique seqs); "Q"+sid -> stats;
  "B"+json{sid,kbit,size,secs} -> the server sends such a stream back to the asker.
- TCP PROBE_TCP_PORT: accepts and echoes (filter checks).
"""

import json
import os
import select
import socket
import statistics
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec import PROBE_PORTS, PROBE_TCP_PORT  # noqa: E402

WIRE_OVERHEAD = 14 + 20 + 8  # Ethernet + IPv4 + UDP headers: what a qdisc counts beyond payload
MAX_SESSIONS = 1000


# ---------------------------------------------------------------- server


class RateSession:
    def __init__(self, now, warm):
        self.first = now
        self.warm = warm
        self.last = now
        self.packets = 0
        self.seqs = set()
        self.bytes_after_warm = 0

    def add(self, now, seq, size):
        self.packets += 1
        self.seqs.add(seq)
        self.last = now
        if now >= self.first + self.warm:
            self.bytes_after_warm += size + WIRE_OVERHEAD

    def report(self):
        span = self.last - (self.first + self.warm)
        return {
            "packets": self.packets,
            "unique": len(self.seqs),
            "kbit": round(self.bytes_after_warm * 8 / span / 1000, 1) if span > 0.05 else None,
        }


class Blast:
    def __init__(self, sock, addr, sid, kbit, size, secs):
        self.sock, self.addr, self.sid = sock, addr, sid
        self.size = max(16, min(1400, size))
        self.interval = (self.size + WIRE_OVERHEAD) * 8 / (kbit * 1000)
        self.count = int(secs / self.interval)
        self.start = time.monotonic()
        self.sent = 0

    def due(self):
        return self.start + self.sent * self.interval

    def pump(self, now):
        pad = b"\0" * (self.size - 13)
        while self.sent < self.count and self.due() <= now:
            try:
                self.sock.sendto(b"D" + self.sid + struct.pack("!I", self.sent) + pad, self.addr)
            except OSError:
                pass
            self.sent += 1
        return self.sent < self.count


def serve(ip):
    import system

    system.realtime(20)
    socks = {}
    for name, port in PROBE_PORTS.items():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        s.bind((ip, port))
        s.setblocking(False)
        socks[name] = s
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((ip, PROBE_TCP_PORT))
    tcp.listen(16)
    by_fd = {s.fileno(): (name, s) for name, s in socks.items()}
    echo_counts, rate_sessions, blasts, started = {}, {}, [], {}
    conns = []
    while True:
        now = time.monotonic()
        timeout = 0.5
        if blasts:
            timeout = max(0.0, min(b.due() for b in blasts) - now)
        readable, _, _ = select.select(list(socks.values()) + [tcp] + conns, [], [], timeout)
        for r in readable:
            if r is tcp:
                c, _ = tcp.accept()
                conns.append(c)
                continue
            if r in conns:
                try:
                    data = r.recv(4096)
                except OSError:
                    data = b""
                if data:
                    r.sendall(data)
                else:
                    conns.remove(r)
                    r.close()
                continue
            name, s = by_fd[r.fileno()]
            for _ in range(256):
                try:
                    data, addr = s.recvfrom(65536)
                except BlockingIOError:
                    break
                handle(name, s, data, addr, socks, echo_counts, rate_sessions, blasts, started)
        now = time.monotonic()
        blasts[:] = [b for b in blasts if b.pump(now)]
        for table in (echo_counts, rate_sessions, started):
            while len(table) > MAX_SESSIONS:
                table.pop(next(iter(table)))


def handle(name, s, data, addr, socks, echo_counts, rate_sessions, blasts, started):
    kind, body = data[:1], data[1:]
    if name in ("reflect_a", "reflect_b"):
        if kind == b"M":
            s.sendto(b"M" + body[:8] + f"{addr[0]}:{addr[1]}".encode(), addr)
        elif kind == b"U":
            socks["unsolicited"].sendto(b"U" + body[:8], addr)
    elif name == "echo":
        # Everything but a stats query is echoed (TURN relay checks send their own payloads).
        sid = body[:8]
        if kind == b"S":
            s.sendto(b"S" + sid + json.dumps({"received": echo_counts.get(sid, 0)}).encode(), addr)
        else:
            if kind == b"E":
                echo_counts[sid] = echo_counts.get(sid, 0) + 1
            s.sendto(data, addr)
    elif name == "rate":
        sid = body[:8]
        if kind == b"D" and len(body) >= 12:
            now = time.monotonic()
            sess = rate_sessions.get(sid)
            if sess is None:
                sess = rate_sessions[sid] = RateSession(now, 0.3)
            sess.add(now, struct.unpack("!I", body[8:12])[0], len(data))
        elif kind == b"Q":
            sess = rate_sessions.get(sid)
            s.sendto(b"Q" + sid + json.dumps(sess.report() if sess else None).encode(), addr)
        elif kind == b"B":
            try:
                req = json.loads(body)
                sid = bytes.fromhex(req["sid"])
                if sid not in started:
                    started[sid] = True
                    blasts.append(Blast(s, addr, sid, float(req["kbit"]), int(req["size"]), float(req["secs"])))
            except (ValueError, KeyError, TypeError):
                pass


# ---------------------------------------------------------------- client side


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    s.bind(("0.0.0.0", 0))
    return s


def _ask(sock, dest, msg, want, timeout=2.0, tries=5):
    """Send `msg` until an answer starting with `want` comes (UDP: both may be lost)."""
    for _ in range(tries):
        sock.sendto(msg, dest)
        deadline = time.monotonic() + timeout / tries
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(65536)
            except socket.timeout:
                break
            if data.startswith(want):
                return data[len(want) :]
    return None


def nat_behaviour(sock, probe_ip):
    """From one socket: the mapping seen by two destinations (ports) and whether an unsolicited
    packet from a third port gets in. Returns a dict."""
    local_port = sock.getsockname()[1]
    seen = {}
    for name in ("reflect_a", "reflect_b"):
        nonce = os.urandom(8)
        ans = _ask(sock, (probe_ip, PROBE_PORTS[name]), b"M" + nonce, b"M" + nonce)
        seen[name] = ans.decode() if ans else None
    nonce = os.urandom(8)
    got = _ask(sock, (probe_ip, PROBE_PORTS["reflect_a"]), b"U" + nonce, b"U" + nonce, timeout=1.0, tries=2)
    mapping = None
    if seen["reflect_a"] and seen["reflect_b"]:
        mapping = "endpoint-independent" if seen["reflect_a"] == seen["reflect_b"] else "endpoint-dependent"
    return {
        "local_port": local_port,
        "mapped_a": seen["reflect_a"],
        "mapped_b": seen["reflect_b"],
        "mapping": mapping,
        "unsolicited_in": got is not None,
    }


def classify(b):
    """NAT kind from nat_behaviour's result (None when the probe got no answers)."""
    if not b["mapping"]:
        return None
    if b["mapping"] == "endpoint-dependent":
        return "symmetric"
    return "cone" if b["unsolicited_in"] else "port-restricted"


def echo_rtt(probe_ip, count, spacing):
    """`count` echo requests `spacing` s apart. RTTs in ms, and losses per direction."""
    sock = _udp()
    sock.setblocking(False)
    sid = os.urandom(8)
    dest = (probe_ip, PROBE_PORTS["echo"])
    sent_at, rtts = {}, {}
    start = time.monotonic()
    i = 0
    end = start + count * spacing + 1.0 + spacing
    while True:
        now = time.monotonic()
        if i < count and now >= start + i * spacing:
            sent_at[i] = now
            sock.sendto(b"E" + sid + struct.pack("!I", i) + b"\0" * 48, dest)
            i += 1
            continue
        if now >= end or (i == count and len(rtts) == count):
            break
        nxt = start + i * spacing if i < count else end
        r, _, _ = select.select([sock], [], [], max(0.0, min(nxt, end) - now))
        if r:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                if data[:9] == b"E" + sid:
                    seq = struct.unpack("!I", data[9:13])[0]
                    if seq in sent_at and seq not in rtts:
                        rtts[seq] = (time.monotonic() - sent_at[seq]) * 1000
    sock.setblocking(True)
    ans = _ask(sock, dest, b"S" + sid, b"S" + sid)
    server_received = json.loads(ans)["received"] if ans else None
    sock.close()
    values = [rtts[k] for k in sorted(rtts)]
    out = {"sent": count, "server_received": server_received, "replies": len(values)}
    if values:
        q = statistics.quantiles(values, n=20) if len(values) >= 2 else [values[0]] * 19
        out.update(
            rtt_median_ms=round(statistics.median(values), 2),
            rtt_p10_ms=round(q[1], 2),
            rtt_p25_ms=round(q[4], 2),
            rtt_p75_ms=round(q[14], 2),
            rtt_p90_ms=round(q[17], 2),
            rtt_min_ms=round(min(values), 2),
            rtt_max_ms=round(max(values), 2),
            rtt_stdev_ms=round(statistics.pstdev(values), 2),
        )
    if server_received is not None:
        out["up_loss"] = round(1 - server_received / count, 4)
        out["down_loss"] = round(1 - len(values) / server_received, 4) if server_received else None
    return out


def rate_up(probe_ip, kbit, size, secs):
    """Send `kbit` (wire rate) of `size`-byte UDP payloads for `secs` to the rate port; the
    server reports the rate it received after a warm-up and the unique packets."""
    sock = _udp()
    sid = os.urandom(8)
    dest = (probe_ip, PROBE_PORTS["rate"])
    interval = (size + WIRE_OVERHEAD) * 8 / (kbit * 1000)
    count = int(secs / interval)
    pad = b"\0" * (size - 13)
    start = time.monotonic()
    i = 0
    while i < count:
        # Whatever is due now goes out, then sleep a little: small bursts, never a busy loop.
        due = min(count, int((time.monotonic() - start) / interval) + 1)
        while i < due:
            try:
                sock.sendto(b"D" + sid + struct.pack("!I", i) + pad, dest)
            except OSError:
                pass
            i += 1
        time.sleep(max(0.001, start + i * interval - time.monotonic()))
    time.sleep(0.3)
    ans = _ask(sock, dest, b"Q" + sid, b"Q" + sid, timeout=3.0, tries=6)
    sock.close()
    rep = json.loads(ans) if ans else None
    return {"sent": count, "send_secs": round(time.monotonic() - start - 0.3, 3), **(rep or {"packets": None})}


def rate_down(probe_ip, kbit, size, secs, warm=0.3):
    """Ask the server for `kbit` of `size`-byte payloads for `secs`; measure what arrives."""
    sock = _udp()
    sid = os.urandom(8)
    dest = (probe_ip, PROBE_PORTS["rate"])
    req = b"B" + json.dumps({"sid": sid.hex(), "kbit": kbit, "size": size, "secs": secs}).encode()
    interval = (size + WIRE_OVERHEAD) * 8 / (kbit * 1000)
    expected = int(secs / interval)
    seqs, first, last, bytes_after = set(), None, None, 0
    deadline = time.monotonic() + secs + 3.0
    asked = 0
    next_ask = time.monotonic()
    while time.monotonic() < deadline:
        now = time.monotonic()
        if first is None and now >= next_ask and asked < 5:
            sock.sendto(req, dest)
            asked += 1
            next_ask = now + 0.3
        sock.settimeout(0.3 if first is None else 0.5)
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            if first is not None:
                break
            continue
        if data[:9] != b"D" + sid:
            continue
        now = time.monotonic()
        if first is None:
            first = now
        last = now
        seqs.add(struct.unpack("!I", data[9:13])[0])
        if now >= first + warm:
            bytes_after += len(data) + WIRE_OVERHEAD
        if len(seqs) >= expected:
            break
    sock.close()
    span = (last - first - warm) if first is not None else 0
    return {
        "sent": expected,
        "packets": len(seqs),
        "unique": len(seqs),
        "kbit": round(bytes_after * 8 / span / 1000, 1) if span > 0.05 else None,
    }


def icmp_ping(dest, count=3, timeout=1.0):
    """ICMP echo from this thread's namespace (raw socket, root). Returns RTTs in ms."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    rtts = []
    try:
        for seq in range(count):
            payload = os.urandom(16)
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            csum = _checksum(hdr + payload)
            pkt = struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload
            start = time.monotonic()
            s.sendto(pkt, (dest, 0))
            deadline = start + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    data, addr = s.recvfrom(2048)
                except socket.timeout:
                    break
                ihl = (data[0] & 0x0F) * 4
                t, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if t == 0 and rid == ident and rseq == seq and addr[0] == dest:
                    rtts.append(round((time.monotonic() - start) * 1000, 3))
                    break
    finally:
        s.close()
    return rtts


def _checksum(b):
    if len(b) % 2:
        b += b"\0"
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def tcp_reachable(ip, port, timeout=1.0):
    try:
        c = socket.create_connection((ip, port), timeout=timeout)
        c.close()
        return True
    except OSError:
        return False


def udp_answers(ip, port, timeout=1.0):
    """Whether a STUN Binding to ip:port over UDP gets an answer."""
    import stun

    try:
        stun.binding((ip, port), timeout=timeout)
        return True
    except (stun.StunError, OSError):
        return False


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.stderr.write("usage: probe.py serve IP\n")
        sys.exit(2)
