#!/usr/bin/env bash
# Run the cross-built ARM binaries' self-test under qemu-user (against the multiarch libraries
# in /, as the recipe in cross/ installs them).
# Usage: tests/qemu-user.sh BINARY...   (aarch64 and/or armv7 builds of spyglass)
set -euo pipefail
failed=0
for binary in "$@"; do
  # ELF e_machine, at offset 18: 0xb7 is aarch64, 0x28 is 32-bit ARM.
  case "$(od -An -tx1 -j18 -N2 "$binary" | tr -d ' ')" in
    b700) qemu=qemu-aarch64-static ;;
    2800) qemu=qemu-arm-static ;;
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
done
exit $failed
