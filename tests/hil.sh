#!/usr/bin/env bash
# Hardware in the loop (`make hil`): on a Pi or any Linux box with a USB webcam. Self-tests the
# camera, then starts a private Mosquitto on 127.0.0.1 and spyglass on the camera, watches with
# `spyglass view`, and prints one report: formats, frames, time to first frame, CPU use, and on a
# Pi the SoC temperature and throttling. Without a camera it says "skipped" and exits 0 (set
# HIL_REQUIRE_CAMERA=1 to make that a failure). See docs/HARDWARE.md.
# Usage: tests/hil.sh BINARY   Environment: HIL_VIDEO (device, or `test` to try the script
# without a camera), HIL_SIZE (1280x720), HIL_FPS (30), HIL_FRAMES (300).
set -euo pipefail
bin=$(realpath "$1")
size=${HIL_SIZE:-1280x720} fps=${HIL_FPS:-30} frames=${HIL_FRAMES:-300}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
say() { echo "hil: $*"; }
failed_stages=0
# stage NAME COMMAND...: run it, keep its output in $work/NAME.txt, print PASS or FAIL.
stage() {
  local name=$1; shift
  if "$@" > "$work/$name.txt" 2>&1; then say "$name: PASS"
  else say "$name: FAIL"; tail -15 "$work/$name.txt"; failed_stages=$((failed_stages + 1)); fi
}

# 0. Raspberry Pi stages (issue 16): the hardware H.264 encoder (V4L2 memory-to-memory), and a
# CSI camera through rpicam-vid, raw into spyglass's encoder and through the Pi's encoder as
# passthrough. Each prints PASS, FAIL or SKIP.
if "$bin" devices 2>/dev/null | grep -q '^V4L2 H.264 encoders'; then
  stage m2m-encoder "$bin" selftest --video test --encoder v4l2 --size "$size" --fps "$fps" --seconds 3
else
  say "m2m-encoder: SKIP (no V4L2 H.264 encoder: not a Pi 3/4/Zero 2 W)"
fi
csi=0
if command -v rpicam-vid >/dev/null && rpicam-hello --list-cameras 2>/dev/null | grep -q '^[0-9] :'; then
  csi=1
  w=${size%x*} h=${size#*x}
  raw="exec:rpicam-vid -t 0 -n --codec yuv420 --width $w --height $h --framerate $fps -o -"
  enc="exec:rpicam-vid -t 0 -n --codec h264 --inline --intra $fps --profile main --flush --width $w --height $h --framerate $fps -o -"
  stage csi-raw "$bin" selftest --video "$raw" --size "$size" --fps "$fps" --seconds 3
  stage csi-passthrough "$bin" selftest --video "$enc" --exec-format h264 --size "$size" --fps "$fps" --seconds 3
else
  say "csi-raw: SKIP (no rpicam-vid or no camera module)"
  say "csi-passthrough: SKIP (no rpicam-vid or no camera module)"
fi

# 1. The camera: HIL_VIDEO, else the first /dev/video* that passes the self-test.
candidates=(${HIL_VIDEO:-$(ls /dev/video* 2>/dev/null || true)})
if [ -z "${HIL_VIDEO:-}" ] && [ $csi = 1 ]; then
  # The CSI camera, passed through, is what the stream stages below watch.
  candidates=("$enc")
fi
if [ ${#candidates[@]} -eq 0 ]; then
  say "skipped: no camera (no /dev/video* device; plug in a USB webcam, or set HIL_VIDEO)"
  [ $failed_stages -gt 0 ] && exit 1
  [ "${HIL_REQUIRE_CAMERA:-0}" = 1 ] && exit 1 || exit 0
fi
video=""
exec_format=i420
case "${candidates[0]}" in *"--codec h264"*) exec_format=h264 ;; esac
for dev in "${candidates[@]}"; do
  if "$bin" selftest --video "$dev" --exec-format "$exec_format" --size "$size" --fps "$fps" --seconds 3 > "$work/selftest.txt" 2>"$work/selftest.err"; then
    video=$dev; break
  fi
  say "$dev: $(tail -1 "$work/selftest.err") $(grep -h FAILED "$work/selftest.txt" || true)"
done
if [ -z "$video" ]; then
  say "FAIL: no camera passed the self-test (${candidates[*]})"
  exit 1
fi
say "camera $video"
cat "$work/selftest.txt"

# 2. A private broker on a free loopback port.
command -v mosquitto >/dev/null || { say "FAIL: mosquitto missing: run 'make deps'"; exit 1; }
port=""
for p in $(seq 18900 18999); do
  if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { say "FAIL: no free port in 18900-18999"; exit 1; }
printf 'persistence false\nallow_anonymous true\nlistener %s 127.0.0.1\nprotocol mqtt\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)
sleep 0.5

# 3. spyglass on the camera; media stays on loopback.
id=hil-$$
"$bin" --id "$id" --mqtt "mqtt://127.0.0.1:$port" --video "$video" --exec-format "$exec_format" \
  --size "$size" --fps "$fps" --rtc-bind 127.0.0.1 --rtc-allow-loopback on --mdns off \
  > "$work/spyglass.log" 2>&1 &
daemon=$!
pids+=($daemon)
sleep 1
kill -0 "$daemon" 2>/dev/null || { say "FAIL: spyglass exited:"; cat "$work/spyglass.log"; exit 1; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ticks0=$(cpu_ticks "$daemon") t0=$(date +%s%N)
# 4. Watch.
set +e
"$bin" view --mqtt "mqtt://127.0.0.1:$port" --id "$id" --frames "$frames" --timeout $(( frames / fps + 30 )) \
  --rtc-bind 127.0.0.1 --mdns off > "$work/view.txt" 2> "$work/view.err"
view_rc=$?
set -e
ticks1=$(cpu_ticks "$daemon") t1=$(date +%s%N)
hz=$(getconf CLK_TCK)
cpu=$(( (ticks1 - ticks0) * 100 * 1000000000 / hz / (t1 - t0) ))

echo "== spyglass view"
cat "$work/view.txt"
echo "== report"
echo "camera:         $video ($(grep -h '^video source' "$work/selftest.txt" | sed 's/.*: *//'))"
echo "daemon CPU:     ${cpu}% of one core while streaming"
if [ -r /sys/class/thermal/thermal_zone0/temp ]; then
  echo "SoC temp:       $(awk '{ printf "%.1f C", $1 / 1000 }' /sys/class/thermal/thermal_zone0/temp)"
fi
if command -v vcgencmd >/dev/null; then
  echo "throttled:      $(vcgencmd get_throttled 2>&1) (0x0 means never throttled or under-volted)"
fi
[ -r /proc/device-tree/model ] && echo "board:          $(tr -d '\0' < /proc/device-tree/model)"
if command -v chromium >/dev/null; then
  echo "chromium:       installed, not driven yet (the browser check comes with the viewer page)"
fi
if [ $view_rc -ne 0 ]; then
  say "stream: FAIL: spyglass view exited with $view_rc: $(cat "$work/view.err" | tail -3)"
  tail -20 "$work/spyglass.log"
  exit 1
fi
say "stream: PASS"
[ $failed_stages -gt 0 ] && { say "FAIL: $failed_stages stage(s) failed"; exit 1; }
say "pass"
