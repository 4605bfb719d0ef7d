#!/usr/bin/env python3
"""A user-space link emulator (this kernel has no netem): it bridges two interfaces of its own
namespace with AF_PACKET raw sockets and forwards every Ethernet frame from one to the other,
holding each IP frame for delay +- jitter and dropping a share of them, in both directions.

- Delay: each IP frame leaves `delay_ms + uniform(-jitter_ms, +jitter_ms)` after it arrived, but
  never before the frame ahead of it in the same direction (no reordering, as a real link).
- Loss: each IP frame is dropped with probability `loss` (independently, per direction), from a
  seeded PRNG when a seed is given.
- Non-IP frames (ARP) pass at once and are never dropped, so neighbour discovery stays quiet.
- `cut: true` drops everything, ARP included.
- Parameters live in a JSON control file, re-read within 20 ms of a change:
  {"up": {"delay_ms": 40, "jitter_ms": 5, "loss": 0.03}, "down": {...}, "cut": false}
  "up" is from interface A (the site's side) to Z (the internet's side), "down" the reverse.
- Counters go to a JSON stats file twice a second and at exit: frames in and out per direction,
  drops by the emulated loss, frames the kernel dropped before we read them (the emulator's
  own loss: must stay 0), late sends (how far behind schedule frames left).

Usage: linkemu.py IFACE_A IFACE_Z CONTROL_JSON STATS_JSON [SEED]
"""

import collections
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import system  # noqa: E402

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
MAX_QUEUE = 200_000  # frames held per direction; beyond that the emulator counts an overflow


def open_port(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # older kernels: frames we send are filtered by pkttype below
    for opt in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE (root), then the ordinary limit
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 16 * 1024 * 1024)
            break
        except OSError:
            continue
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def kernel_drops(sock):
    """Frames the kernel dropped because our receive buffer was full (reset by each read)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    _packets, drops = struct.unpack("II", raw)
    return drops


class Direction:
    def __init__(self, name, src, dst, rng):
        self.name = name
        self.src = src
        self.dst = dst
        self.rng = rng
        self.queue = collections.deque()
        self.last_due = 0.0
        self.delay = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.stats = {
            "frames_in": 0,
            "frames_out": 0,
            "bytes_out": 0,
            "dropped_loss": 0,
            "dropped_cut": 0,
            "dropped_overflow": 0,
            "send_errors": 0,
            "kernel_drops": 0,
            "non_ip": 0,
            "queue_max": 0,
            "late_max_ms": 0.0,
            "late_over_2ms": 0,
        }

    def configure(self, p):
        self.delay = float(p.get("delay_ms", 0)) / 1000
        self.jitter = float(p.get("jitter_ms", 0)) / 1000
        self.loss = float(p.get("loss", 0))

    def arrive(self, frame, now, cut):
        st = self.stats
        st["frames_in"] += 1
        if cut:
            st["dropped_cut"] += 1
            return
        ethertype = frame[12:14]
        if ethertype not in (b"\x08\x00", b"\x86\xdd"):
            st["non_ip"] += 1
            self.send(frame)
            return
        if self.loss and self.rng.random() < self.loss:
            st["dropped_loss"] += 1
            return
        if len(self.queue) >= MAX_QUEUE:
            st["dropped_overflow"] += 1
            return
        due = now + self.delay
        if self.jitter:
            due += self.rng.uniform(-self.jitter, self.jitter)
        if due < self.last_due:
            due = self.last_due
        self.last_due = due
        self.queue.append((due, frame))
        if len(self.queue) > st["queue_max"]:
            st["queue_max"] = len(self.queue)

    def send(self, frame):
        try:
            self.dst.send(frame)
            self.stats["frames_out"] += 1
            self.stats["bytes_out"] += len(frame)
        except OSError:
            self.stats["send_errors"] += 1

    def flush(self, now):
        q = self.queue
        while q and q[0][0] <= now:
            due, frame = q.popleft()
            late = (now - due) * 1000
            if late > self.stats["late_max_ms"]:
                self.stats["late_max_ms"] = round(late, 3)
            if late > 2:
                self.stats["late_over_2ms"] += 1
            self.send(frame)

    def next_due(self):
        return self.queue[0][0] if self.queue else None


def main(argv):
    if len(argv) not in (5, 6):
        sys.stderr.write(__doc__)
        return 2
    a_name, z_name, control_path, stats_path = argv[1:5]
    seed = int(argv[5]) if len(argv) == 6 else None
    a, z = open_port(a_name), open_port(z_name)
    priority = system.realtime(30)
    up = Direction("up", a, z, random.Random(seed))
    down = Direction("down", z, a, random.Random(None if seed is None else seed + 1))
    by_sock = {a.fileno(): up, z.fileno(): down}
    state = {"cut": False, "control_stamp": None, "control_error": None}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    def load_control():
        try:
            st = os.stat(control_path)
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == state["control_stamp"]:
            return
        state["control_stamp"] = stamp
        try:
            with open(control_path) as f:
                ctl = json.load(f)
            up.configure(ctl.get("up", {}))
            down.configure(ctl.get("down", {}))
            state["cut"] = bool(ctl.get("cut", False))
            state["control_error"] = None
        except (OSError, ValueError, TypeError, AttributeError) as e:
            state["control_error"] = str(e)

    def write_stats():
        for d in (up, down):
            d.stats["kernel_drops"] += kernel_drops(d.src)
        out = {
            "pid": os.getpid(),
            "priority": priority,
            "time": time.time(),
            "cut": state["cut"],
            "control_error": state["control_error"],
            "params": {d.name: {"delay_ms": d.delay * 1000, "jitter_ms": d.jitter * 1000, "loss": d.loss} for d in (up, down)},
            "up": up.stats,
            "down": down.stats,
        }
        tmp = stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, stats_path)

    load_control()
    write_stats()
    next_control = next_stats = time.monotonic()
    socks = [a, z]
    while not stop:
        now = time.monotonic()
        if now >= next_control:
            load_control()
            next_control = now + 0.02
        if now >= next_stats:
            write_stats()
            next_stats = now + 0.5
        dues = [d for d in (up.next_due(), down.next_due()) if d is not None]
        timeout = min([next_control] + dues) - now
        try:
            readable, _, _ = select.select(socks, [], [], max(0.0, timeout))
        except InterruptedError:
            continue
        for s in readable:
            d = by_sock[s.fileno()]
            for _ in range(512):
                try:
                    frame, addr = s.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                d.arrive(frame, time.monotonic(), state["cut"])
        now = time.monotonic()
        up.flush(now)
        down.flush(now)
    write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
