#!/usr/bin/env bash
# Check the .deb packages made by `make deb`: install, upgrade (a rebuilt package with a higher
# version), remove and purge the amd64 one on this machine, and read the ARM packages' contents
# and control fields. Needs root; leaves the package uninstalled and never starts the service.
# Usage: tests/deb.sh DEB_DIR [UPGRADE_DEB]   (UPGRADE_DEB: an amd64 package of a higher version)
set -euo pipefail
dir=$1 upgrade_to=${2:-}
cd "$(dirname "$0")/.."
fail() { echo "deb test: FAIL: $*" >&2; exit 1; }
pick() { ls "$dir"/spyglass_*_"$1".deb 2>/dev/null | sort -V | tail -1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg -i)"
if dpkg-query -W -f='${Status}' spyglass 2>/dev/null | grep -q 'ok installed'; then
  fail "spyglass is already installed here; remove it first"
fi

for arch in arm64 armhf amd64; do
  deb=$(pick $arch); [ -n "$deb" ] || fail "no spyglass_*_$arch.deb in $dir"
  echo "== $deb"
  dpkg-deb -f "$deb" Package Version Architecture Depends Section
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is not $arch"
  contents=$(dpkg-deb -c "$deb")
  for path in usr/bin/spyglass etc/spyglass/spyglass.toml '(usr/)?lib/systemd/system/spyglass.service' \
              usr/share/doc/spyglass/README.md 'usr/share/spyglass/web/.+'; do
    grep -Eq " \./$path\$" <<<"$contents" || fail "$deb lacks /$path"
  done
  dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/spyglass/spyglass.toml \
    || fail "$deb: /etc/spyglass/spyglass.toml is not a conffile"
  tmp=$(mktemp -d); dpkg-deb -x "$deb" "$tmp"
  case $arch in arm64) machine=AArch64 ;; armhf) machine=ARM ;; amd64) machine=".*X86-64" ;; esac
  readelf -h "$tmp/usr/bin/spyglass" | grep -q "Machine: *$machine" \
    || fail "$deb: /usr/bin/spyglass is not an $arch binary"
  readelf -S "$tmp/usr/bin/spyglass" | grep -q '\.symtab' && fail "$deb: /usr/bin/spyglass is not stripped"
  echo "   /usr/bin/spyglass: $(stat -c %s "$tmp/usr/bin/spyglass") bytes, stripped; web: $(ls "$tmp/usr/share/spyglass/web" | tr '\n' ' ')"
  rm -rf "$tmp"
done

upgrade=$(pick amd64)
new=${upgrade_to:-$upgrade}
echo "== install $(basename "$upgrade")"
dpkg -i "$upgrade" >/dev/null
/usr/bin/spyglass --version
unit=$(ls /usr/lib/systemd/system/spyglass.service /lib/systemd/system/spyglass.service 2>/dev/null | head -1)
grep -qx 'DynamicUser=yes' "$unit" && grep -qx 'Type=notify' "$unit" || fail "$unit: not a Type=notify DynamicUser=yes service"
[ -f /etc/spyglass/spyglass.toml ] || fail "no /etc/spyglass/spyglass.toml after install"
# The installed binary works (its libraries are there), and the unit parses where systemd is.
/usr/bin/spyglass selftest --video test --size 320x240 --seconds 1 >/dev/null || fail "installed binary's selftest failed"
if command -v systemd-analyze >/dev/null; then systemd-analyze verify /usr/lib/systemd/system/spyglass.service || fail "systemd-analyze verify"; fi
echo "# local edit" >> /etc/spyglass/spyglass.toml

if [ "$new" != "$upgrade" ]; then
  echo "== upgrade to $(basename "$new")"
  dpkg -i "$new" >/dev/null
  dpkg-query -W -f='${Version}\n' spyglass
  grep -q '^# local edit' /etc/spyglass/spyglass.toml || fail "the upgrade lost a local edit of the conffile"
else
  echo "note: no package to upgrade to: upgrade not tested"
fi

echo "== remove"
dpkg -r spyglass >/dev/null
[ ! -e /usr/bin/spyglass ] || fail "/usr/bin/spyglass left after remove"
[ -f /etc/spyglass/spyglass.toml ] || fail "remove must keep the conffile"
echo "== purge"
dpkg -P spyglass >/dev/null
[ ! -e /etc/spyglass ] || fail "/etc/spyglass left after purge"
getent passwd spyglass >/dev/null && fail "spyglass user left after purge"
echo "deb test: pass"
