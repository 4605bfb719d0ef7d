#!/usr/bin/env bash
# Build the emulated board's base initramfs: busybox, the vivid (camera) and snd-aloop /
# snd-dummy (sound card) kernel modules of Debian's kernel, ALSA's config, and /init.
# Usage: tests/vm/build-base.sh KERNEL_VERSION OUT.cpio.gz
# The binaries under test come in a second archive (see run.sh), so this one is cached.
set -euo pipefail
kv=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules/"$kv",usr/share}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Each module with its dependency closure, as the host's modprobe resolves it for that kernel.
for module in vivid snd-aloop snd-dummy; do
  modprobe -S "$kv" --show-depends "$module" | awk '$1 == "insmod" { print $2 }'
done | sort -u | while read -r ko; do
  mkdir -p "$root$(dirname "$ko")"
  cp "$ko" "$root$ko"
done
cp /lib/modules/"$kv"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kv/" 2>/dev/null || true
depmod -b "$root" "$kv"

[ -d /usr/share/alsa ] && cp -r /usr/share/alsa "$root/usr/share/"
install -m 755 "$here/init" "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
