#!/usr/bin/env python3
"""`make soak`, part 2: sessions in a loop against one daemon for a long time (24 h by default).

One viewer stays connected the whole time (its glass-to-glass latency at the start and at the
end); beside it, short sessions (`spyglass view --frames N`) run one after another, every
`--parallel`-th round several at once. The daemon's RSS, descriptors and threads are sampled
with only the long viewer connected, after a warm-up and at the end, and every session's time to
first frame and latency are kept. Prints one report; exits non-zero when a session failed, the
long viewer broke off, descriptors or threads grew, RSS grew by more than --max-rss-growth-mb,
or the latency drifted by more than --max-drift-ms.

Everything runs on 127.0.0.1 with a private Mosquitto; processes are ended by PID.
Usage: scripts/soak-sessions.py --bin target/release/spyglass --minutes 1440
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid):
    status = open(f"/proc/{pid}/status").read().splitlines()
    field = lambda name: int(next(l for l in status if l.startswith(name)).split()[1])
    return {"rss_kb": field("VmRSS:"), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": field("Threads:")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--minutes", type=float, default=1440)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--session-frames", type=int, default=60)
    ap.add_argument("--parallel", type=int, default=4, help="viewers at once every 10th round")
    ap.add_argument("--max-rss-growth-mb", type=float, default=10)
    ap.add_argument("--max-drift-ms", type=float, default=20)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="spyglass-soak-")
    port = free_port()
    with open(f"{work}/mosquitto.conf", "w") as f:
        f.write(f"persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n")
    procs = []

    def spawn(args, **kw):
        p = subprocess.Popen(args, **kw)
        procs.append(p)
        return p

    def cleanup(*_):
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))

    try:
        spawn(["mosquitto", "-c", f"{work}/mosquitto.conf"], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        device = f"soak/cam-{os.getpid()}"
        mqtt = f"mqtt://127.0.0.1:{port}"
        daemon = spawn([a.bin, "--id", device, "--mqtt", mqtt, "--video", "test", "--size", a.size,
                        "--fps", str(a.fps), "--max-viewers", str(a.parallel + 2),
                        "--rtc-bind", "127.0.0.1", "--rtc-allow-loopback", "on", "--mdns", "off",
                        "--http", "off", "--audio", "none"],
                       stderr=open(f"{work}/daemon.log", "w"))
        view = [a.bin, "view", "--mqtt", mqtt, "--id", device, "--rtc-bind", "127.0.0.1",
                "--mdns", "off", "--json"]
        total_s = a.minutes * 60
        # The long viewer ends by itself ~30 s after the loop (the test pattern runs at exactly
        # --fps); the end sample is taken before that, with it still connected.
        long_frames = int((total_s + 45) * a.fps)
        time.sleep(1)
        long_viewer = spawn(view + ["--frames", str(long_frames), "--timeout", str(int(total_s + 900))],
                            stdout=open(f"{work}/long.json", "w"), stderr=open(f"{work}/long.log", "w"))

        def session(n):
            """n short sessions at once; their reports (None for a failure)."""
            ps = [subprocess.Popen(view + ["--frames", str(a.session_frames), "--timeout", "60"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                  for _ in range(n)]
            out = []
            for p in ps:
                stdout, _ = p.communicate()
                try:
                    r = json.loads(stdout)
                    out.append(r if p.returncode == 0 else None)
                except ValueError:
                    out.append(None)
            return out

        # Warm up (codec, threads, allocator arenas), then the start sample.
        for _ in range(3):
            session(1)
        time.sleep(3)
        start = proc_stats(daemon.pid)
        started = time.monotonic()
        reports, failures, rounds = [], 0, 0
        last_print = started
        while time.monotonic() - started < total_s:
            rounds += 1
            for r in session(a.parallel if rounds % 10 == 0 else 1):
                if r is None:
                    failures += 1
                else:
                    reports.append((time.monotonic() - started, r))
            if long_viewer.poll() is not None:
                break
            if time.monotonic() - last_print >= 600:
                last_print = time.monotonic()
                s = proc_stats(daemon.pid)
                print(f"  {(last_print - started) / 60:.0f} min: {len(reports)} sessions, "
                      f"{failures} failed; RSS {s['rss_kb']} kB, fds {s['fds']}, threads {s['threads']}",
                      flush=True)
        elapsed = time.monotonic() - started
        time.sleep(3)
        end = proc_stats(daemon.pid)
        long_alive = long_viewer.poll() is None
        try:
            long_viewer.wait(timeout=240)
        except subprocess.TimeoutExpired:
            long_alive = False
    finally:
        cleanup()

    try:
        long = json.load(open(f"{work}/long.json"))
    except ValueError:
        long = {}

    def figures(part):
        ff = [r["first_frame_ms"] for _, r in part if r.get("first_frame_ms") is not None]
        lat = [r["latency_ms"]["median"] for _, r in part if r.get("latency_ms")]
        med = lambda v: f"{statistics.median(v):.0f} ms" if v else "-"
        return f"offer -> first frame median {med(ff)}, glass-to-glass median {med(lat)}"

    first, last = reports[:20], reports[-20:]
    print(f"sessions: {len(reports)} in {rounds} rounds over {elapsed / 60:.1f} min, {failures} failed")
    print(f"  first 20: {figures(first)}")
    print(f"  last 20:  {figures(last)}")
    for k, name in [("rss_kb", "RSS (kB)"), ("fds", "descriptors"), ("threads", "threads")]:
        print(f"daemon {name}: start {start[k]}, end {end[k]} ({end[k] - start[k]:+d})")
    d = long.get("latency_drift")
    print(f"long viewer: {long.get('frames', 0)} frames, {long.get('counter_gaps', '?')} counter gaps, "
          f"{long.get('lost_packets', '?')} lost packets"
          + (f"; latency {d['first_median_ms']:.1f} ms in the first {d['window_s']:.0f} s, "
             f"{d['last_median_ms']:.1f} ms in the last (drift {d['drift_ms']:+.1f} ms)" if d else ""))

    problems = []
    if failures:
        problems.append(f"{failures} sessions failed")
    if not long_alive:
        problems.append("the long viewer ended early")
    if end["fds"] > start["fds"]:
        problems.append(f"descriptors grew {start['fds']} -> {end['fds']}")
    if end["threads"] > start["threads"]:
        problems.append(f"threads grew {start['threads']} -> {end['threads']}")
    if end["rss_kb"] - start["rss_kb"] > a.max_rss_growth_mb * 1024:
        problems.append(f"RSS grew {start['rss_kb']} -> {end['rss_kb']} kB")
    if not d:
        problems.append("no latency drift in the long viewer's report")
    elif abs(d["drift_ms"]) > a.max_drift_ms:
        problems.append(f"latency drifted {d['drift_ms']:+.1f} ms")
    if problems:
        print("soak: FAIL: " + "; ".join(problems), file=sys.stderr)
        print(f"(logs in {work})", file=sys.stderr)
        sys.exit(1)
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
