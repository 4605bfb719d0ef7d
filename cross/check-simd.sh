#!/usr/bin/env bash
# Check that openh264's hand-written SIMD made it into a binary: NEON on ARM, nasm-built
# SSE2/AVX2 on x86-64. openh264's build silently falls back to plain C without them.
# Usage: cross/check-simd.sh TRIPLE BINARY   (an unstripped binary: it reads symbol names)
set -euo pipefail
triple=$1 binary=$2
case "$triple" in
  aarch64-*) nm=aarch64-linux-gnu-nm; pattern='_AArch64_neon$'; what=NEON ;;
  armv7-*)   nm=arm-linux-gnueabihf-nm; pattern='_neon$'; what=NEON ;;
  x86_64-*)  nm=nm; pattern='_(sse2|ssse3|sse41|avx2)$'; what="x86 assembly (nasm)" ;;
  *) echo "check-simd: unknown target $triple" >&2; exit 2 ;;
esac
count=$("$nm" "$binary" | grep -Ec "$pattern" || true)
if [ "$count" -lt 20 ]; then
  echo "check-simd: $binary has $count openh264 $what functions; expected many (is nasm installed? are CFLAGS right?)" >&2
  exit 1
fi
echo "check-simd: $binary: $count openh264 $what functions"
