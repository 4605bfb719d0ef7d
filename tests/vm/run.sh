#!/usr/bin/env bash
# The emulated board: boot Debian's x86-64 kernel in QEMU (software emulation, no network
# device) with the vivid camera and snd-aloop sound card, run `spyglass selftest` from
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

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
[ -n "$kernel" ] || { echo "tests/vm: no /boot/vmlinuz-*: install linux-image-amd64 (make deps-emulated)" >&2; exit 1; }
[ -r "$kernel" ] || { echo "tests/vm: cannot read $kernel (Debian keeps it root-only): run as root" >&2; exit 1; }
kv=${kernel#/boot/vmlinuz-}
for tool in qemu-system-x86_64 cpio depmod busybox speaker-test; do
  command -v "$tool" >/dev/null || [ -x "/bin/$tool" ] || { echo "tests/vm: $tool missing: run 'make deps-emulated'" >&2; exit 1; }
done

# The base image depends only on the kernel and on build-base.sh and init: cache it on that.
cache=${SPYGLASS_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spyglass-vm}
mkdir -p "$cache"
key=$(cat "$here/build-base.sh" "$here/init" | sha256sum | cut -c1-12)
base=$cache/base-$kv-$key.cpio.gz
if [ ! -s "$base" ]; then
  echo "tests/vm: building $base"
  "$here/build-base.sh" "$kv" "$base"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Second archive: the binary under test, its shared libraries, and the script /init runs.
overlay=$work/root
mkdir -p "$overlay/test"
cp "$binary" "$overlay/test/spyglass"
# The tone player: ALSA's speaker-test (30 KB; libasound and libc, which spyglass needs anyway).
player=$(command -v speaker-test)
cp "$player" "$overlay/test/speaker-test"
{ ldd "$binary"; ldd "$player"; } | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  mkdir -p "$overlay$(dirname "$lib")"
  cp -L "$lib" "$overlay$lib"
done
{
  echo '#!/bin/sh'
  echo 'echo "=== devices"; /test/spyglass devices; echo "=== end devices"'
  echo 'offered=$(/test/spyglass devices 2>&1)'
  for f in "${formats[@]}"; do
    echo "if echo \"\$offered\" | grep -q '$f'; then"
    for s in "${sizes[@]}"; do
      echo "  echo '=== selftest $f $s'"
      echo "  /test/spyglass selftest --video /dev/video0 --pixel-format $f --size $s --fps $fps --seconds $seconds 2>&1"
      echo "  echo \"=== rc \$?\""
    done
    echo "else echo '=== not offered $f'; fi"
  done
  # Audio: the real snd-aloop driver through the real libasound; what plays into
  # hw:Loopback,0,0 is captured from hw:Loopback,1,0.
  echo "/test/speaker-test -D hw:Loopback,0,0 -c 1 -r 48000 -F S16_LE -t sine -f 1000 -l 0 >/dev/null 2>&1 &"
  echo 'player=$!; sleep 1'
  echo "echo '=== selftest AUDIO hw:Loopback,1,0'"
  echo "/test/spyglass selftest --video test --size 320x240 --fps $fps --seconds $seconds --audio hw:Loopback,1,0 --expect-tone 1000 2>&1"
  echo "echo \"=== rc \$?\""
  echo 'kill $player'
} > "$overlay/test/run"
chmod +x "$overlay/test/run"
(cd "$overlay" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/overlay.cpio.gz"
cat "$base" "$work/overlay.cpio.gz" > "$work/initrd"

log=${SPYGLASS_VM_LOG:-$work/console.log}
echo "tests/vm: booting $kernel under qemu-system-x86_64 (TCG)"
start=$(date +%s)
timeout 1200 qemu-system-x86_64 -accel tcg -cpu max -m 768 -smp 1 -nographic -no-reboot \
  -nic none -monitor none -serial stdio \
  -kernel "$kernel" -initrd "$work/initrd" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init" < /dev/null > "$log" 2>&1 || {
    rc=$?; tail -40 "$log"; echo "tests/vm: qemu exited with $rc" >&2; exit 1; }
tr -d '\r' < "$log" > "$log.txt"
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
