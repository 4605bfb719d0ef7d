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

# 1. The camera: HIL_VIDEO, else the first /dev/video* that passes the self-test.
candidates=(${HIL_VIDEO:-$(ls /dev/video* 2>/dev/null || true)})
if [ ${#candidates[@]} -eq 0 ]; then
  say "skipped: no camera (no /dev/video* device; plug in a USB webcam, or set HIL_VIDEO)"
  [ "${HIL_REQUIRE_CAMERA:-0}" = 1 ] && exit 1 || exit 0
fi
video=""
for dev in "${candidates[@]}"; do
  if "$bin" selftest --video "$dev" --size "$size" --fps "$fps" --seconds 3 > "$work/selftest.txt" 2>"$work/selftest.err"; then
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
"$bin" --id "$id" --mqtt "mqtt://127.0.0.1:$port" --video "$video" --size "$size" --fps "$fps" \
  --rtc-bind 127.0.0.1 --rtc-allow-loopback on --mdns off > "$work/spyglass.log" 2>&1 &
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
  say "FAIL: spyglass view exited with $view_rc: $(cat "$work/view.err" | tail -3)"
  tail -20 "$work/spyglass.log"
  exit 1
fi
say "pass"
