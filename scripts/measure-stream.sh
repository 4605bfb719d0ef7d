#!/usr/bin/env bash
# Does a build keep up with a stream? A private Mosquitto and spyglass (test pattern) on
# 127.0.0.1, one `spyglass view` (niced, so that it does not starve the daemon on a small machine)
# for FRAMES frames; prints frames decoded against the frame counters read from the pixels (a
# frame the daemon dropped is a gap in the counters; with no packet lost, a gap is the daemon's),
# the rate delivered, and the CPU of the daemon's encoder thread ("hub") and capture thread as a
# share of one core over the same window.
# Usage: scripts/measure-stream.sh BINARY [WxH] [FPS] [FRAMES]   (default 1280x720 30 300)
# VIEWER=BINARY runs the viewer from another build (to compare daemons with one viewer).
set -euo pipefail
BIN=$1 SIZE=${2:-1280x720} FPS=${3:-30} FRAMES=${4:-300}
VIEWER=${VIEWER:-$BIN}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
printf 'persistence false\nallow_anonymous true\nlistener %s 127.0.0.1\n' "$PORT" > "$dir/m.conf"
mosquitto -c "$dir/m.conf" >/dev/null 2>&1 & broker=$!
daemon=
trap 'kill $daemon $broker 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.3
"$BIN" --id stream --mqtt "mqtt://127.0.0.1:$PORT" --video test --size "$SIZE" --fps "$FPS" \
  --rtc-bind 127.0.0.1 --mdns off --http off 2>"$dir/daemon.log" & daemon=$!
sleep 1
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$daemon" "$FPS" "$FRAMES" nice -n 10 "$VIEWER" view --mqtt "mqtt://127.0.0.1:$PORT" --id stream \
  --frames "$FRAMES" --timeout $((FRAMES / FPS + 60)) --rtc-bind 127.0.0.1 --mdns off --json <<'PY'
import json, os, subprocess, sys, time
daemon, fps, frames, view = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
tck = os.sysconf("SC_CLK_TCK")
def threads():
    cpu = {}
    for tid in os.listdir(f"/proc/{daemon}/task"):
        try:
            s = open(f"/proc/{daemon}/task/{tid}/stat").read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        cpu[name] = cpu.get(name, 0) + (int(f[11]) + int(f[12])) / tck
    return cpu
t0, c0 = time.monotonic(), threads()
viewer = subprocess.run(view, capture_output=True, text=True)
t1, c1 = time.monotonic(), threads()
if viewer.returncode != 0 or not viewer.stdout.strip():
    sys.exit(f"the viewer failed (exit {viewer.returncode}): {viewer.stderr[-2000:]}")
r = json.loads(viewer.stdout)
watched = t1 - t0 - (r.get("first_frame_ms") or 0) / 1000
first, last = r.get("first_counter"), r.get("last_counter")
print(f"frames decoded:     {r['frames']} of {frames} asked ({r['width']}x{r['height']})")
if first is not None:
    span = last - first + 1
    print(f"frame counters:     {first} -> {last}: {span - r['stamped_frames']} of {span} missing, "
          f"{r['counter_gaps']} of them after the first second")
    print(f"rate delivered:     {(last - first) / watched:.1f} fps (asked {fps})")
print(f"packets lost:       {r['lost_packets']}, keyframe requests {r['keyframe_requests']}")
for name in ("hub", "capture"):
    print(f"thread {name:8s}    {(c1.get(name, 0) - c0.get(name, 0)) / (t1 - t0) * 100:.0f}% of one core")
print(f"daemon, all:        {(sum(c1.values()) - sum(c0.values())) / (t1 - t0) * 100:.0f}% of one core")
PY
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
