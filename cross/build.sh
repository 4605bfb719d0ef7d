#!/usr/bin/env bash
# Cross-compile release binaries with Debian's cross compilers and multiarch libraries (no
# Docker). Usage: cross/build.sh [--profile PROFILE] [TRIPLE...]   (default: release; aarch64 and armv7)
# Binaries land in $CARGO_TARGET_DIR/TRIPLE/PROFILE/spyglass (CARGO_TARGET_DIR defaults to target).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = --profile ]; then profile=$2; shift 2; fi
triples=("$@")
[ ${#triples[@]} -gt 0 ] || triples=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

for triple in "${triples[@]}"; do
  case "$triple" in
    aarch64-unknown-linux-gnu) gnu=aarch64-linux-gnu; flags="" ;;
    # Debian's armhf gcc defaults to vfpv3-d16; every Pi that runs armv7 code has NEON, and
    # openh264's ARM assembly and the bundled libopus want it.
    armv7-unknown-linux-gnueabihf) gnu=arm-linux-gnueabihf; flags="-mfpu=neon" ;;
    x86_64-unknown-linux-gnu) gnu=""; flags="" ;;
    *) echo "cross/build.sh: unknown target $triple (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu)" >&2; exit 2 ;;
  esac
  if [ -n "$gnu" ]; then
    command -v "$gnu-g++" >/dev/null || { echo "cross/build.sh: $gnu-g++ missing: run 'make deps-cross'" >&2; exit 1; }
    t=${triple//-/_}
    T=${t^^}
    export "CARGO_TARGET_${T}_LINKER=$gnu-gcc" "CC_$t=$gnu-gcc" "CXX_$t=$gnu-g++" "AR_$t=$gnu-ar" \
           "CFLAGS_$t=$flags" "CXXFLAGS_$t=$flags" \
           PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_SYSROOT_DIR=/ \
           "PKG_CONFIG_LIBDIR=/usr/lib/$gnu/pkgconfig:/usr/share/pkgconfig"
  fi
  echo "== cargo build --profile $profile --target $triple"
  cargo build --profile "$profile" --locked --target "$triple"
done
