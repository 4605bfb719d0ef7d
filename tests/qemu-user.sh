#!/usr/bin/env bash
# Run the cross-built ARM binaries under qemu-user (against the multiarch libraries in /, as the
# recipe in cross/ installs them):
#  1. the self-test;
#  2. with SPYGLASS_HOST_BIN set (a spyglass built for this machine, the viewer): the daemon under
#     qemu streams to `spyglass view` on 127.0.0.1 through a private Mosquitto, then its realtime
#     clock is moved 3 days ahead (past the 48 h that rtc 0.21 gave its own certificates on 32-bit
#     ARM) and then 40 days (past spyglass's 30-day certificate, so it is renewed), and it must
#     still answer and stream after each step (issue 12). The clock moves through
#     tests/clockshift/clockshift.c, an LD_PRELOAD library built with the target's cross compiler.
# Usage: [SPYGLASS_HOST_BIN=target/debug/spyglass] tests/qemu-user.sh BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
failed=0
host_bin=${SPYGLASS_HOST_BIN:-}
running=()
stop_running() {
  local pid
  for pid in "${running[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  running=()
}
trap stop_running EXIT

# The clock check for one binary: $1 binary, $2 qemu, $3 cross C compiler.
clock_check() {
  local binary=$1 qemu=$2 cc=$3
  local dir port id daemon broker ok=1
  dir=$(mktemp -d)
  command -v "$cc" >/dev/null || { echo "qemu-user: $cc missing: run 'make deps-cross'" >&2; return 1; }
  "$cc" -shared -fPIC -O2 -o "$dir/clockshift.so" tests/clockshift/clockshift.c -ldl
  echo 0 > "$dir/offset"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'persistence false\nallow_anonymous true\nlistener %s 127.0.0.1\n' "$port" > "$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" > /dev/null 2>&1 & broker=$!
  id=qemu/cam-$$-$RANDOM
  "$qemu" -L / -E LD_PRELOAD="$dir/clockshift.so" -E CLOCKSHIFT_FILE="$dir/offset" \
    "$binary" --id "$id" --mqtt "mqtt://127.0.0.1:$port" --video test --size 160x120 --fps 10 \
    --bitrate 200 --rtc-bind 127.0.0.1 --rtc-allow-loopback on --mdns off --http off --audio none \
    --log spyglass=debug,info 2> "$dir/daemon.log" & daemon=$!
  running=("$broker" "$daemon")
  # Online (its retained status) within 60 s: qemu starts the binary slowly.
  local waited=0
  until mosquitto_sub -h 127.0.0.1 -p "$port" -t "$id/status" -C 1 -W 2 2>/dev/null | grep -q '"online":true'; do
    waited=$((waited + 2))
    if [ $waited -ge 60 ]; then echo "=== FAIL: the daemon under $qemu did not come online"; ok=0; break; fi
  done
  local step days
  for days in 0 3 40; do
    [ $ok = 1 ] || break
    echo $((days * 86400)) > "$dir/offset"
    sleep 2   # the library re-reads the offset once a second; the daemon's timer ticks meanwhile
    step=$(date +%s%N)
    if "$host_bin" view --mqtt "mqtt://127.0.0.1:$port" --id "$id" --frames 10 --timeout 90 \
         --rtc-bind 127.0.0.1 --mdns off > "$dir/view-$days.txt" 2>&1; then
      echo "    clock +$days days: 10 frames to a viewer on the host in $(( ($(date +%s%N) - step) / 1000000 )) ms"
    else
      echo "=== FAIL: clock +$days days: the viewer got no stream"; cat "$dir/view-$days.txt"; ok=0
    fi
  done
  echo "    certificate renewals logged: $(grep -c 'DTLS certificate renewed' "$dir/daemon.log" || true);" \
       "\`internal\` answers logged: $(grep -c 'answering `internal`' "$dir/daemon.log" || true)"
  stop_running
  if [ $ok = 1 ] && grep -q 'DTLS certificate renewed' "$dir/daemon.log" \
     && ! grep -q 'answering `internal`' "$dir/daemon.log"; then
    rm -rf "$dir"; return 0
  fi
  [ $ok = 1 ] && echo "=== FAIL: no certificate renewal, or an \`internal\` answer, in the log"
  tail -30 "$dir/daemon.log"; rm -rf "$dir"; return 1
}

for binary in "$@"; do
  # ELF e_machine, at offset 18: 0xb7 is aarch64, 0x28 is 32-bit ARM.
  case "$(od -An -tx1 -j18 -N2 "$binary" | tr -d ' ')" in
    b700) qemu=qemu-aarch64-static; cc=aarch64-linux-gnu-gcc ;;
    2800) qemu=qemu-arm-static; cc=arm-linux-gnueabihf-gcc ;;
    *) echo "qemu-user: $binary is not an ARM executable" >&2; exit 1 ;;
  esac
  command -v "$qemu" >/dev/null || { echo "qemu-user: $qemu missing: run 'make deps-cross'" >&2; exit 1; }
  echo "=== $qemu $binary selftest"
  start=$(date +%s%N)
  if "$qemu" -L / "$binary" selftest --video test --audio tone --size 320x240 --fps 15 --seconds 2; then
    echo "=== pass ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
  else
    echo "=== FAIL: $binary under $qemu"; failed=1
  fi
  if [ -n "$host_bin" ]; then
    echo "=== $qemu $binary: daemon with its clock moved ahead, viewer on the host"
    start=$(date +%s%N)
    if clock_check "$binary" "$qemu" "$cc"; then
      echo "=== pass ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
    else
      echo "=== FAIL: $binary under $qemu with its clock moved ahead"; failed=1
    fi
  fi
done
exit $failed
