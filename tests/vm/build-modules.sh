#!/usr/bin/env bash
# Build the emulated board's extra kernel drivers for its kernel, out of tree, against Debian's
# headers for that kernel (linux-headers-KV):
#   v4l2loopback.ko   from Debian's v4l2loopback-dkms source (/usr/src/v4l2loopback-*)
#   v4l2-mem2mem.ko, vim2m.ko, vicodec.ko   from Debian's kernel source (linux-source-X.Y):
#                     Debian's x86-64 kernel enables none of them (CONFIG_V4L2_MEM2MEM_DEV,
#                     CONFIG_VIDEO_VIM2M and CONFIG_VIDEO_VICODEC are unset), so the kernel's
#                     own code for them is built here, unchanged.
# Usage: tests/vm/build-modules.sh KERNEL_VERSION OUT_DIR   (OUT_DIR gets the four .ko files)
set -euo pipefail
kv=$1 out=$2
series=$(echo "$kv" | cut -d. -f1,2)
build=/lib/modules/$kv/build
source_tar=/usr/src/linux-source-$series.tar.xz
loopback=$(ls -d /usr/src/v4l2loopback-* 2>/dev/null | sort -V | tail -1 || true)
[ -d "$build" ] || { echo "tests/vm: no headers for $kv ($build): install linux-headers-$kv (make deps-emulated)" >&2; exit 1; }
[ -r "$source_tar" ] || { echo "tests/vm: no $source_tar: install linux-source-$series (make deps-emulated)" >&2; exit 1; }
[ -n "$loopback" ] || { echo "tests/vm: no /usr/src/v4l2loopback-*: install v4l2loopback-dkms (make deps-emulated)" >&2; exit 1; }
image_version=$(dpkg-query -W -f='${Version}' "linux-image-$kv" 2>/dev/null || true)
source_version=$(dpkg-query -W -f='${Version}' "linux-source-$series" 2>/dev/null || true)
if [ "$image_version" != "$source_version" ]; then
  echo "tests/vm: warning: linux-image-$kv is $image_version but linux-source-$series is $source_version" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
top=linux-source-$series/drivers/media
tar -xJf "$source_tar" -C "$work" "$top/v4l2-core/v4l2-mem2mem.c" "$top/test-drivers/vim2m.c" \
  --wildcards "$top/test-drivers/vicodec/*.[ch]"
src=$work/src
mkdir -p "$src"
cp "$work/$top/v4l2-core/v4l2-mem2mem.c" "$work/$top/test-drivers/vim2m.c" "$work/$top"/test-drivers/vicodec/*.[ch] "$src/"
cp "$loopback"/*.[ch] "$src/"
cat > "$src/Kbuild" <<'KBUILD'
obj-m := v4l2-mem2mem.o vim2m.o vicodec.o v4l2loopback.o
vicodec-y := vicodec-core.o codec-fwht.o codec-v4l2-fwht.o
KBUILD
make -s -C "$build" M="$src" modules -j"$(nproc)" 2>&1 | grep -v "Skipping BTF generation" >&2 || true
mkdir -p "$out"
for ko in v4l2-mem2mem vim2m vicodec v4l2loopback; do
  [ -s "$src/$ko.ko" ] || { echo "tests/vm: building $ko.ko for $kv failed" >&2; exit 1; }
  strip --strip-debug -o "$out/$ko.ko" "$src/$ko.ko"
done
