#!/usr/bin/env bash
# The emulated board (board.py): boot Debian's x86-64 kernel in QEMU (software emulation, no
# network device) with the vivid camera and snd-aloop sound card, run `spyglass selftest` from
# /dev/video0 in every raw format vivid offers that spyglass supports, at two sizes, and from
# snd-aloop's hw:Loopback,1,0 while ALSA's speaker-test plays a 1 kHz sine into hw:Loopback,0,0,
# and check the reports read from the serial console.
# Usage: tests/vm/run.sh PATH/TO/x86_64/spyglass
set -euo pipefail
binary=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
sizes=(320x180 640x480)
formats=(YUYV NV12 YU12 MJPG)   # what spyglass converts; the guest runs those vivid offers
fps=15 seconds=2

command -v speaker-test >/dev/null || { echo "tests/vm: speaker-test missing: run 'make deps-emulated'" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The guest's script; board.py (the emulated board, tests/vm/README.md) boots it with the binary
# and ALSA's speaker-test (30 KB; libasound and libc, which spyglass needs anyway).
{
  echo 'echo "=== devices"; spyglass devices; echo "=== end devices"'
  echo 'offered=$(spyglass devices 2>&1)'
  for f in "${formats[@]}"; do
    echo "if echo \"\$offered\" | grep -q '$f'; then"
    for s in "${sizes[@]}"; do
      echo "  echo '=== selftest $f $s'"
      echo "  spyglass selftest --video /dev/video0 --pixel-format $f --size $s --fps $fps --seconds $seconds 2>&1"
      echo "  echo \"=== rc \$?\""
    done
    echo "else echo '=== not offered $f'; fi"
  done
  # Audio: the real snd-aloop driver through the real libasound; what plays into
  # hw:Loopback,0,0 is captured from hw:Loopback,1,0.
  echo "speaker-test -D hw:Loopback,0,0 -c 1 -r 48000 -F S16_LE -t sine -f 1000 -l 0 >/dev/null 2>&1 &"
  echo 'player=$!; sleep 1'
  echo "echo '=== selftest AUDIO hw:Loopback,1,0'"
  echo "spyglass selftest --video test --size 320x240 --fps $fps --seconds $seconds --audio hw:Loopback,1,0 --expect-tone 1000 2>&1"
  echo "echo \"=== rc \$?\""
  echo 'kill $player'
} > "$work/run"

echo "tests/vm: booting the emulated board (qemu-system-x86_64, TCG)"
start=$(date +%s)
python3 "$here/board.py" run --binary "$binary" --file "$(command -v speaker-test)" \
  --run "@$work/run" --timeout 1200 --out "$work/out" > "$work/result.json" || {
    echo "tests/vm: the board could not run" >&2; exit 1; }
log=$work/out/console.log
tr -d '\r' < "$log" > "$log.txt"
[ -n "${SPYGLASS_VM_LOG:-}" ] && cp "$log" "$SPYGLASS_VM_LOG"
cat "$log.txt"
echo "tests/vm: the guest ran for $(( $(date +%s) - start )) s"

# Every format that ran must pass at both sizes, vivid's YUYV, NV12 and YU12 must be among them,
# and the audio run (fmt AUDIO) must have run and passed.
awk -v want="YUYV NV12 YU12 AUDIO" '
  /^=== selftest / { fmt = $3; size = $4; result = "none"; next }
  /^result: +PASS/ { result = "PASS" }
  /^result: +FAIL/ { result = "FAIL" }
  /^=== rc / {
    runs++; ran[fmt]++
    if ($3 == 0 && result == "PASS") { passed++; ok[fmt]++; printf "  %-5s %-8s pass\n", fmt, size }
    else { printf "  %-5s %-8s FAIL (exit %s)\n", fmt, size, $3 }
  }
  /^=== vm done/ { done = 1 }
  END {
    if (!done) { print "tests/vm: the guest did not finish"; exit 1 }
    n = split(want, w, " ")
    for (i = 1; i <= n; i++) if (!ran[w[i]]) { print "tests/vm: no selftest run for " w[i] " (vivid did not offer it, or the audio run is missing; see above)"; exit 1 }
    if (runs == 0 || passed != runs) { printf "tests/vm: %d of %d selftest runs passed\n", passed, runs; exit 1 }
    printf "tests/vm: all %d selftest runs passed\n", runs
  }' "$log.txt"
