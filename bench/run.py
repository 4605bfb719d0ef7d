#!/usr/bin/env python3
"""`make bench` (issue 7): run every benchmark once and print one Markdown table.

Micro-benchmarks come from criterion (`cargo bench --bench pipeline`), raw encoder CPU from
`cargo bench --bench encode_cpu`, the daemon figures from the release binary with the test pattern,
a private Mosquitto and `spyglass view` viewers on 127.0.0.1, and Chromium's figures from
`web/test/measure.mjs`. Figures that depend on the machine are also given as ratios measured in
this same run. Nothing here asserts a time: these are benchmarks, not tests.

Usage: bench/run.py --bin target/release/spyglass --out target/bench.md [--quick] [--skip-chromium]
Environment: CARGO (default cargo), CARGO_TARGET_DIR (criterion's estimates are read from there).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ["640x480", "1280x720", "1920x1080"]
FPS = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def q(values, p):
    v = sorted(values)
    return v[round((len(v) - 1) * p)] if v else None


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid, name):
    """CPU seconds of the process's threads called `name` (the daemon names its encoder thread
    "hub" and its capture thread "capture")."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        if stat[stat.index("(") + 1:stat.rindex(")")] == name:
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class Broker:
    def __init__(self, tmp):
        self.port = free_port()
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"persistence false\nallow_anonymous true\nlistener {self.port} 127.0.0.1\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class StatusWatch:
    """`mosquitto_sub` on `{id}/status`: each payload with the time it arrived."""

    def __init__(self, broker, uid):
        self.events = []
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(broker.port),
             "-t", f"{uid}/status"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)  # subscribed before the daemon starts

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.append((time.monotonic(), json.loads(line)))
            except ValueError:
                pass

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, status in list(self.events):
                if pred(status):
                    return t, status
            time.sleep(0.01)
        return None, None

    def latest(self):
        return self.events[-1][1] if self.events else None

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class Daemon:
    def __init__(self, args, broker, uid, size, tmp, video="test", extra=()):
        self.watch = StatusWatch(broker, uid)
        self.log = open(os.path.join(tmp, f"daemon-{uid}.log"), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [args.bin, "--id", uid, "--mqtt", broker.url, "--video", video, "--size", size,
             "--fps", str(FPS), "--bitrate", "2000", "--max-viewers", "20", "--rtc-bind",
             "127.0.0.1", "--rtc-allow-loopback", "on", "--mdns", "off", "--http", "off",
             "--audio", "none", "--log", "info", *extra],
            stdout=self.log, stderr=self.log)
        t, _ = self.watch.wait(lambda s: s.get("online") is True, 10)
        if t is None:
            raise RuntimeError(f"daemon {uid} did not come online; see {self.log.name}")
        self.online_ms = (t - self.started) * 1000

    def viewers(self):
        s = self.watch.latest()
        return s.get("viewers") if s else None

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        self.watch.close()
        self.log.close()


class Viewers:
    """`spyglass view` processes that watch until stopped (niced, so the daemon is not starved)."""

    def __init__(self, args, broker, uid):
        self.cmd = ["nice", "-n", "10", args.bin, "view", "--mqtt", broker.url, "--id", uid,
                    "--frames", "4000000000", "--timeout", "100000", "--rtc-bind", "127.0.0.1",
                    "--mdns", "off"]
        self.procs = []

    def add(self, n):
        for _ in range(n):
            self.procs.append(subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def measure_cpu(pid, window):
    """Daemon CPU over `window` seconds, as a fraction of one core, and the load meanwhile."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return (c1 - c0) / (t1 - t0)


def wait_viewers(daemon, n, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if daemon.viewers() == n:
            return True
        time.sleep(0.1)
    return False


# --- the parts -------------------------------------------------------------------------------

def cargo():
    return os.environ.get("CARGO", "cargo")


def target_dir():
    out = subprocess.run([cargo(), "metadata", "--format-version", "1", "--no-deps"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    return json.loads(out)["target_directory"]


def criterion_stages(args, res, run=True):
    if run:
        log("criterion micro-benchmarks (cargo bench --bench pipeline)")
        subprocess.run([cargo(), "bench", "--bench", "pipeline"], cwd=REPO, check=True,
                       stdout=sys.stderr)
    base = os.path.join(target_dir(), "criterion")
    stages = {}
    for stage in ["yuyv_to_i420", "nv12_to_i420", "mjpeg_to_i420", "mjpeg_zune_to_i420",
                  "h264_encode", "h264_packetize", "srtp_protect"]:
        for size in SIZES:
            path = os.path.join(base, f"{stage}_{size}", "new", "estimates.json")
            try:
                est = json.load(open(path))
                stages[(stage, size)] = est["median"]["point_estimate"] / 1e6  # ms
            except OSError:
                stages[(stage, size)] = None
    res["stages"] = stages


def raw_encode(args, res):
    log("raw openh264 encoding CPU (cargo bench --bench encode_cpu)")
    out = subprocess.run([cargo(), "bench", "--bench", "encode_cpu", "--", str(args.encode_seconds)]
                         + SIZES, cwd=REPO, check=True, capture_output=True, text=True).stdout
    res["raw_encode"] = {r["size"]: r for r in (json.loads(l) for l in out.splitlines()
                                                if l.startswith("{"))}


def start_to_online(args, broker, tmp, res):
    log("start to online")
    times = []
    for i in range(args.starts):
        d = Daemon(args, broker, f"bench-start-{i}", "1280x720", tmp)
        times.append(d.online_ms)
        if i == 0:
            time.sleep(3)
            res["rss_idle"] = rss_mb(d.proc.pid)
            res["cpu_idle"] = measure_cpu(d.proc.pid, 5)
        d.close()
    res["online_ms"] = times


def viewers_scaling(args, broker, tmp, res):
    log("daemon CPU and RSS with 1, 5, 10, 20 viewers at 1280x720")
    d = Daemon(args, broker, "bench-viewers", "1280x720", tmp)
    v = Viewers(args, broker, "bench-viewers")
    rows = []
    try:
        for n in [1, 5, 10, 20]:
            v.add(n - len(v.procs))
            ok = wait_viewers(d, n)
            time.sleep(args.settle)
            cpu = measure_cpu(d.proc.pid, args.window)
            rows.append({"viewers": n, "reached": ok, "seen": d.viewers(), "cpu": cpu,
                         "rss": rss_mb(d.proc.pid), "load": loadavg()[0]})
            log(rows[-1])
    finally:
        v.close()
        d.close()
    res["scaling"] = rows


def pipeline_ratio(args, broker, tmp, res):
    """Daemon CPU per frame with one viewer. The viewer reads the pattern's frame counters, so the
    frame rate the daemon really delivered (it skips slots when it falls behind) is known."""
    log("daemon CPU per frame with one viewer, each size")
    out = {}
    for size in SIZES:
        uid = f"bench-pipe-{size}"
        d = Daemon(args, broker, uid, size, tmp)
        frames = int((args.settle + args.window + 2) * FPS)
        t0 = time.monotonic()
        viewer = subprocess.Popen(
            ["nice", "-n", "10", args.bin, "view", "--mqtt", broker.url, "--id", uid, "--frames",
             str(frames), "--timeout", "120", "--rtc-bind", "127.0.0.1", "--mdns", "off", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            wait_viewers(d, 1)
            time.sleep(args.settle)
            # The whole process and its encoder thread over the same window: their ratio does not
            # depend on the machine's speed drifting between separate runs.
            h0 = thread_cpu_seconds(d.proc.pid, "hub")
            cpu = measure_cpu(d.proc.pid, args.window)
            hub = (thread_cpu_seconds(d.proc.pid, "hub") - h0) / args.window
            report = json.loads(viewer.communicate(timeout=120)[0] or "{}")
            t1 = time.monotonic()
        finally:
            if viewer.poll() is None:
                viewer.kill()
                viewer.wait()
            d.close()
        fps = None
        if report.get("first_counter") is not None and report.get("first_frame_ms"):
            watched = t1 - t0 - report["first_frame_ms"] / 1000
            fps = (report["last_counter"] - report["first_counter"]) / watched
        out[size] = {"cpu": cpu, "hub_cpu": hub, "fps": fps, "frames": report.get("frames")}
        log(size, out[size])
    res["pipeline_cpu"] = out


# --- issue 16: process source, passthrough, MJPEG -------------------------------------------

def ffmpeg_producer(kind, size, idr_frames=FPS):
    """Debian's ffmpeg as a stand-in for rpicam-vid: raw I420, or H.264 with headers before every
    IDR and an IDR every `idr_frames` frames (1 s at 30 fps), no B-frames, at the daemon's
    2 Mbit/s (so that both pipelines send the same bytes per frame)."""
    src = (f"ffmpeg -hide_banner -nostats -loglevel error -re -f lavfi "
           f"-i testsrc2=size={size}:rate={FPS}")
    if kind == "i420":
        return f"exec:{src} -f rawvideo -pix_fmt yuv420p -"
    return (f"exec:{src} -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 "
            f"-b:v 2M -maxrate 2M -bufsize 1M "
            f"-g {idr_frames} -pix_fmt yuv420p -x264-params repeat-headers=1 -f h264 -")


def view_json(args, broker, uid, frames, timeout=120):
    return subprocess.Popen(
        ["nice", "-n", "10", args.bin, "view", "--mqtt", broker.url, "--id", uid, "--frames",
         str(frames), "--timeout", str(timeout), "--rtc-bind", "127.0.0.1", "--mdns", "off",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def picam(args, broker, tmp, res):
    """Daemon CPU per frame at 1280x720 for the test pattern, the process source writing raw I420
    (both encoded by openh264) and the process source writing H.264 (passed through), with 1 and
    10 viewers; frames/s read from a `spyglass view` that counts what it decoded. The producer is
    a child of the daemon: utime+stime of the daemon's own process do not include it."""
    log("issue 16: process source and passthrough, daemon CPU per frame, 1280x720")
    size = "1280x720"
    runs = [("pattern", "test", ["--encoder", "openh264"], [1]),
            ("exec_i420", ffmpeg_producer("i420", size), ["--encoder", "openh264"], [1, 10]),
            ("passthrough", ffmpeg_producer("h264", size), ["--exec-format", "h264"], [1, 10])]
    out = {}
    for name, video, extra, counts in runs:
        uid = f"bench-picam-{name}"
        d = Daemon(args, broker, uid, size, tmp, video, extra)
        counter = None
        v = Viewers(args, broker, uid)
        try:
            for n in counts:
                frames = int((args.settle + args.window + 3) * FPS)
                t0 = time.monotonic()
                counter = view_json(args, broker, uid, frames)
                v.add(n - 1 - len(v.procs))
                ok = wait_viewers(d, n)
                time.sleep(args.settle)
                cpu = measure_cpu(d.proc.pid, args.window)
                report = json.loads(counter.communicate(timeout=120)[0] or "{}")
                t1 = time.monotonic()
                fps = None
                if report.get("frames") and report.get("first_frame_ms"):
                    fps = report["frames"] / (t1 - t0 - report["first_frame_ms"] / 1000)
                row = {"cpu": cpu, "fps": fps, "reached": ok, "load": loadavg()[0],
                       "ms_per_frame": cpu * 1000 / fps if fps else None}
                out[f"{name}/{n}"] = row
                log(name, n, row)
        finally:
            if counter and counter.poll() is None:
                counter.kill()
                counter.wait()
            v.close()
            d.close()
    res["picam"] = out

    log("issue 16: offer → first frame, passthrough with a 1 s IDR period")
    uid = "bench-picam-first"
    d = Daemon(args, broker, uid, size, tmp, ffmpeg_producer("h264", size), ["--exec-format", "h264"])
    firsts = {"cold": [], "warm": []}
    holder = Viewers(args, broker, uid)
    try:
        for phase in ["cold", "warm"]:
            if phase == "warm":
                holder.add(1)
                wait_viewers(d, 1)
                time.sleep(2)
            for _ in range(args.picam_sessions):
                if phase == "cold":
                    time.sleep(1.5)  # the pipeline stops and the producer ends between sessions
                r = json.loads(view_json(args, broker, uid, 1, 40).communicate(timeout=60)[0] or "{}")
                if r.get("first_frame_ms"):
                    firsts[phase].append(r["first_frame_ms"])
    finally:
        holder.close()
        d.close()
    res["picam_first_frame"] = firsts
    log(firsts)


def view_first_frame(args, res):
    log(f"offer to first frame with spyglass view, {args.sessions} sessions")
    env = dict(os.environ, SPYGLASS_BIN=args.bin)
    out = subprocess.run([os.path.join(REPO, "scripts", "measure-first-frame.sh"),
                          str(args.sessions), "1280x720"], env=env, capture_output=True,
                         text=True, cwd=REPO).stdout
    figures = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("answer_ms", "connected_ms", "first_frame_ms"):
            figures[parts[0]] = (float(parts[2]), float(parts[4]))
        elif parts and parts[0] == "latency_ms":
            figures["latency_ms"] = (float(parts[5]), float(parts[7]))
    res["view"] = figures
    log(figures)


def chromium(args, res):
    log(f"offer to first frame and glass-to-glass in Chromium, {args.sessions} sessions")
    env = dict(os.environ, SPYGLASS_BIN=args.bin)
    try:
        p = subprocess.run(["node", "test/measure.mjs", str(args.sessions), "1280x720", "--whep"], env=env,
                           capture_output=True, text=True, cwd=os.path.join(REPO, "web"),
                           timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        res["chromium_error"] = str(e)
        return
    figures = {}
    for line in p.stdout.splitlines():
        nums = [float(x) for x in line.replace(",", " ").split() if x.replace(".", "").isdigit()]
        if line.startswith("offer -> first frame") and len(nums) >= 2:
            figures["first_frame_ms"] = nums[:2]
        elif line.startswith("glass-to-glass") and len(nums) >= 2:
            figures["latency_ms"] = nums[:2]
        elif line.startswith("WHEP POST -> first frame") and len(nums) >= 2:
            figures["whep_first_frame_ms"] = nums[:2]
        elif line.startswith("offer -> ") and len(nums) >= 2:
            # Per-stage times: "offer -> answer   median 58 ms, p95 72 ms" etc.
            figures.setdefault("stages", {})[line.split()[2]] = nums[:2]
    if not figures:
        res["chromium_error"] = (p.stderr or p.stdout)[-500:]
    res["chromium"] = figures
    log(figures)


def sfu(args, res):
    """The device's CPU and upload: 1 local viewer + an SFU (Janus over WHIP) feeding 10
    subscribers, beside 10 local viewers (web/test/sfubench.mjs; needs root)."""
    log("device CPU and upload: SFU with 10 subscribers vs 10 local viewers")
    env = dict(os.environ, SPYGLASS_BIN=args.bin)
    try:
        p = subprocess.run(["node", "test/sfubench.mjs", "--bin", os.path.abspath(args.bin),
                            "--size", "1280x720",
                            "--window", str(int(args.window)), "--json"], env=env,
                           capture_output=True, text=True, cwd=os.path.join(REPO, "web"),
                           timeout=900)
        res["sfu"] = json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        res["sfu_error"] = str(e)
    log(res.get("sfu") or res.get("sfu_error"))


# --- the table -------------------------------------------------------------------------------

def fmt(x, digits=2, unit=""):
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}{unit}"


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def stripped_size(path, strip):
    """Size in bytes of a stripped copy of `path` (the binary itself is left alone), or None."""
    with tempfile.TemporaryDirectory(prefix="spyglass-strip-") as tmp:
        out = os.path.join(tmp, "spyglass")
        try:
            subprocess.run([strip, "-o", out, path], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            log(f"{strip} {path}: {e}")
            return None
        return os.path.getsize(out)


def binary_sizes(args):
    """Unstripped and stripped sizes of the x86-64 binary and, when `make cross` built one, of the
    aarch64 binary beside it ($(TARGET_DIR)/aarch64-unknown-linux-gnu/release/spyglass)."""
    sizes = {}
    candidates = [("x86-64", args.bin, "strip")]
    release = os.path.dirname(args.bin)
    if os.path.basename(release) == "release":
        a64 = os.path.join(os.path.dirname(release), "aarch64-unknown-linux-gnu", "release",
                           "spyglass")
        candidates.append(("aarch64", a64, "aarch64-linux-gnu-strip"))
    for name, path, strip in candidates:
        if os.path.exists(path):
            sizes[name] = {"path": path, "unstripped": os.path.getsize(path),
                           "stripped": stripped_size(path, strip)}
    return sizes


def mb(entry, key):
    return entry[key] / 1e6 if entry and entry.get(key) is not None else None


def picam_table(args, res):
    """Issue 16's figures."""
    L = ["| issue 16 figure (1280x720) | value | target | |", "|---|---|---|---|"]
    st = res.get("stages", {})
    turbo, zune = st.get(("mjpeg_to_i420", "1280x720")), st.get(("mjpeg_zune_to_i420", "1280x720"))
    ratio = turbo / zune if turbo and zune else None
    L.append(f"| MJPEG → I420: libjpeg-turbo ÷ before (zune-jpeg), same frames, one run | "
             f"{fmt(turbo, 3)} ÷ {fmt(zune, 3)} ms = {fmt(ratio, 2)} | ≤ 0.5 | "
             f"{verdict(None if ratio is None else ratio <= 0.5)} |")
    pc = res.get("picam", {})
    per = {k: v.get("ms_per_frame") for k, v in pc.items()}
    for n in [1, 10]:
        p, e = per.get(f"passthrough/{n}"), per.get(f"exec_i420/{n}")
        r = p / e if p and e else None
        L.append(f"| passthrough daemon CPU per frame ÷ openh264 pipeline's (same source), {n} viewer(s) | "
                 f"{fmt(p, 3)} ÷ {fmt(e, 3)} ms = {fmt(r, 3)} | ≤ 0.1 | "
                 f"{verdict(None if r is None else r <= 0.1)} |")
    e, t = per.get("exec_i420/1"), per.get("pattern/1")
    r = e / t if e and t else None
    L.append(f"| process source (raw I420 from ffmpeg) ÷ test pattern, spyglass's CPU per frame, "
             f"1 viewer, both openh264 | {fmt(e, 2)} ÷ {fmt(t, 2)} ms = {fmt(r, 2)} | | |")
    for k, v in sorted(pc.items()):
        L.append(f"| daemon: {k} viewer(s): CPU % of one core at frames/s | "
                 f"{v['cpu'] * 100:.1f} % at {fmt(v.get('fps'), 1)} fps (load {v['load']}) | | |")
    ff = res.get("picam_first_frame", {})
    for phase, label in [("warm", "pipeline running (waits for the next IDR)"),
                         ("cold", "pipeline idle (starts the producer)")]:
        v = ff.get(phase) or []
        L.append(f"| passthrough, 1 s IDR period: offer → first frame, {label}, median / max "
                 f"({len(v)} sessions) | "
                 + (f"{statistics.median(v):.0f} / {max(v):.0f} ms" if v else "n/a") + " | | |")
    L.append("")
    return "\n".join(L)


def table(args, res):
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name")), "?")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=REPO).stdout.strip()
    L = []
    L.append(f"## spyglass benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"commit {rev})")
    L.append("")
    L.append(f"Machine: {cpu_model}, {os.cpu_count()} cores; load average at start "
             f"{' '.join(res['load_start'])}, at end {' '.join(loadavg())}. "
             f"Test pattern, {FPS} fps, 2 Mbit/s, loopback. Binary: `{os.path.relpath(args.bin, REPO)}`.")
    L.append("")

    st = res.get("stages", {})
    raw = res.get("raw_encode", {})
    L.append("| figure | " + " | ".join(SIZES) + " | target (1280x720) | |")
    L.append("|---|" + "---|" * len(SIZES) + "---|---|")
    names = [("yuyv_to_i420", "YUYV → I420, ms/frame (criterion median)"),
             ("nv12_to_i420", "NV12 → I420, ms/frame"),
             ("mjpeg_to_i420", "MJPEG decode → I420 (libjpeg-turbo), ms/frame"),
             ("mjpeg_zune_to_i420", "MJPEG decode → I420, before (zune-jpeg, 4:4:4), ms/frame"),
             ("h264_encode", "openh264 encode, ms/frame"),
             ("h264_packetize", "H.264 packetize (RTP, MTU 1200), ms/frame"),
             ("srtp_protect", "SRTP protect (AES-128-GCM), per viewer, ms/frame")]
    for key, label in names:
        L.append(f"| {label} | " + " | ".join(fmt(st.get((key, s)), 3) for s in SIZES) + " | | |")
    L.append("| raw encode CPU, ms/frame (thread CPU clock) | "
             + " | ".join(fmt(raw.get(s, {}).get("cpu_ms_per_frame"), 2) for s in SIZES) + " | | |")
    pipe = res.get("pipeline_cpu", {})
    per_frame = {s: (pipe[s]["cpu"] * 1000 / (pipe[s]["fps"] or FPS) if pipe.get(s) else None)
                 for s in SIZES}
    L.append("| frames/s the daemon delivered (read from the pattern's counters) | "
             + " | ".join(fmt((pipe.get(s) or {}).get("fps"), 1) for s in SIZES) + " | | |")
    L.append("| daemon CPU, ms/frame, 1 viewer (whole process ÷ frames delivered) | "
             + " | ".join(fmt(per_frame.get(s), 2) for s in SIZES) + " | | |")
    ratios = {s: (per_frame[s] / raw[s]["cpu_ms_per_frame"]
                  if per_frame.get(s) and raw.get(s) else None) for s in SIZES}
    L.append("| pipeline ÷ raw encode, the two measured minutes apart | "
             + " | ".join(fmt(ratios.get(s), 2) for s in SIZES) + " | | |")
    same = {s: (pipe[s]["cpu"] / pipe[s]["hub_cpu"] if pipe.get(s) and pipe[s].get("hub_cpu")
                else None) for s in SIZES}
    r720 = same.get("1280x720")
    L.append("| **pipeline ÷ encoding, same window** (whole daemon ÷ its encoder thread) | "
             + " | ".join(fmt(same.get(s), 2) for s in SIZES)
             + f" | ≤ 1.15 | {verdict(None if r720 is None else r720 <= 1.15)} |")
    L.append("")
    L.append(picam_table(args, res))

    L.append("| figure (1280x720) | value | target | |")
    L.append("|---|---|---|---|")
    ch = res.get("chromium", {})
    ff = ch.get("first_frame_ms")
    L.append(f"| offer → first frame, Chromium, median / p95 ({args.sessions} sessions) | "
             + (f"{ff[0]:.0f} / {ff[1]:.0f} ms" if ff else "n/a " + res.get("chromium_error", "")[:80])
             + f" | median ≤ 50 ms | {verdict(None if not ff else ff[0] <= 50)} |")
    stage_names = {"answer": "answer arrives", "ice": "ICE connected", "dtls": "DTLS connected",
                   "frame": "first frame shown"}
    for stage, label in stage_names.items():
        v = ch.get("stages", {}).get(stage)
        if v:
            L.append(f"| Chromium stage: offer → {label}, median / p95 | {v[0]:.0f} / {v[1]:.0f} ms | | |")
    wf = ch.get("whep_first_frame_ms")
    L.append(f"| WHEP POST → first frame, Chromium (`whip-whep` client), median / p95 | "
             + (f"{wf[0]:.0f} / {wf[1]:.0f} ms" if wf else "n/a") + " | | |")
    lat = ch.get("latency_ms")
    L.append("| glass-to-glass, Chromium, median / p95 (per-session medians) | "
             + (f"{lat[0]:.0f} / {lat[1]:.0f} ms" if lat else "n/a")
             + f" | ≤ 80 / ≤ 120 ms | {verdict(None if not lat else lat[0] <= 80 and lat[1] <= 120)} |")
    vw = res.get("view", {})
    for key, label in [("answer_ms", "offer → answer, `spyglass view`"),
                       ("connected_ms", "offer → connected (ICE+DTLS), `spyglass view`"),
                       ("first_frame_ms", "offer → first decoded frame, `spyglass view`"),
                       ("latency_ms", "glass-to-glass, `spyglass view`")]:
        v = vw.get(key)
        L.append(f"| {label}, median / p95 | "
                 + (f"{v[0]:.0f} / {v[1]:.0f} ms" if v else "n/a") + " | | |")
    sc = res.get("scaling", [])
    one = sc[0]["cpu"] if sc else None
    for row in sc:
        ratio = row["cpu"] / one if one else None
        target, ok = ("", None)
        if row["viewers"] == 10:
            target, ok = "≤ 1.3", (ratio is not None and ratio <= 1.3)
        note = "" if row["reached"] else f" (only {row['seen']} viewers connected)"
        L.append(f"| daemon CPU, {row['viewers']} viewer(s): % of one core, ÷ 1 viewer{note} | "
                 f"{row['cpu'] * 100:.1f} %, ×{fmt(ratio, 2)} (load {row['load']}) | {target} | "
                 f"{verdict(ok) if target else ''} |")
    sfu_res = res.get("sfu")
    if sfu_res:
        for key, label in [("local_1", "1 local viewer"), ("local_10", "10 local viewers"),
                           ("sfu_1_plus_10", "1 local viewer + SFU (Janus, WHIP) feeding 10")]:
            row = sfu_res.get(key) or {}
            L.append(f"| daemon CPU and upload, {label} | "
                     f"{fmt(row.get('cpu', 0) * 100, 1, ' %')}, {fmt(row.get('upload_kbps'), 0, ' kbit/s')} | | |")
    else:
        L.append(f"| daemon CPU and upload, SFU vs local viewers | n/a {res.get('sfu_error', '')[:60]} | | |")
    rss = {r["viewers"]: r["rss"] for r in sc}
    idle = res.get("rss_idle")
    L.append(f"| daemon RSS idle | {fmt(idle, 1, ' MB')} | ≤ 15 MB | "
             f"{verdict(None if idle is None else idle <= 15)} |")
    L.append(f"| daemon RSS, 1 viewer | {fmt(rss.get(1), 1, ' MB')} | ≤ 40 MB | "
             f"{verdict(None if rss.get(1) is None else rss[1] <= 40)} |")
    extra = ((rss[10] - rss[1]) / 9) if rss.get(10) and rss.get(1) else None
    L.append(f"| daemon RSS, 10 viewers (each extra viewer) | {fmt(rss.get(10), 1, ' MB')} "
             f"({fmt(extra, 2, ' MB')}) | ≤ 2 MB each | {verdict(None if extra is None else extra <= 2)} |")
    on = res.get("online_ms", [])
    L.append(f"| process start → retained online status, median of {len(on)} (max) | "
             + (f"{statistics.median(on):.0f} ms ({max(on):.0f})" if on else "n/a")
             + f" | ≤ 300 ms | {verdict(None if not on else statistics.median(on) <= 300)} |")
    sizes = binary_sizes(args)
    res["binary_sizes"] = sizes
    x86, a64 = sizes.get("x86-64"), sizes.get("aarch64")
    L.append(f"| x86-64 release binary, stripped (unstripped) | {fmt(mb(x86, 'stripped'), 2, ' MB')} "
             f"({fmt(mb(x86, 'unstripped'), 1, ' MB')}) | | |")
    if a64:
        L.append(f"| aarch64 release binary, stripped (`make cross`) | "
                 f"{fmt(mb(a64, 'stripped'), 2, ' MB')} | ≤ 8 MB | "
                 f"{verdict(None if a64.get('stripped') is None else a64['stripped'] <= 8e6)} |")
    else:
        L.append("| aarch64 release binary, stripped | n/a (run `make cross` first) | ≤ 8 MB | n/a |")
    L.append("")
    L.append(f"Daemon CPU is utime+stime from `/proc/PID/stat` over {args.window} s after "
             f"{args.settle} s of settling; per frame divides by the frame rate read back from the pattern's counters. Viewers are "
             "`spyglass view` processes (nice 10, each decoding every frame) on the same cores. "
             "Idle means no viewer (no capture, no encoding).")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "spyglass"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--window", type=float, default=10)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--encode-seconds", type=int, default=5)
    ap.add_argument("--picam-sessions", type=int, default=5)
    ap.add_argument("--skip", default="",
                    help="comma list: criterion,encode,view,chromium,daemon,sfu,picam")
    ap.add_argument("--merge", default=None,
                    help="bench.json of an earlier run: its figures fill in the skipped parts")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    skip = set(filter(None, args.skip.split(",")))
    res = {"load_start": loadavg()}
    if args.merge:
        old = json.load(open(args.merge))
        old["stages"] = {tuple(k.split("/")): v for k, v in old.get("stages", {}).items()}
        res = old | res
    tmp = tempfile.mkdtemp(prefix="spyglass-bench-")
    # Criterion's estimates of an earlier run are read even when the benchmark is skipped.
    criterion_stages(args, res, run="criterion" not in skip)
    if "encode" not in skip:
        raw_encode(args, res)
    if "daemon" not in skip:
        broker = Broker(tmp)
        try:
            start_to_online(args, broker, tmp, res)
            viewers_scaling(args, broker, tmp, res)
            pipeline_ratio(args, broker, tmp, res)
        finally:
            broker.close()
    if "picam" not in skip:
        broker = Broker(tmp)
        try:
            picam(args, broker, tmp, res)
        finally:
            broker.close()
    if "view" not in skip:
        view_first_frame(args, res)
    if "chromium" not in skip:
        chromium(args, res)
    if "sfu" not in skip:
        sfu(args, res)
    md = table(args, res)
    print(md)
    out = args.out or os.path.join(target_dir(), "bench.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(md)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({k if isinstance(k, str) else str(k): v for k, v in res.items()
                   if k != "stages"} | {"stages": {f"{a}/{b}": v for (a, b), v in
                                                   res.get("stages", {}).items()}}, f, indent=1)
    log(f"written to {out}")


if __name__ == "__main__":
    main()
