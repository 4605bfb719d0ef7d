#!/usr/bin/env bash
# The first run as a new user meets it: a fresh clone of this repository's HEAD with nothing
# built (an empty target directory, no web/node_modules, an empty emulated-board cache), then
# `make demo` until the page answers, then `make test`. Download caches stay (~/.cargo/registry,
# ~/.npm, rustup's targets, installed apt packages): downloads are not what this measures.
# Prints each time with the load average beside it, the stage table and the disk used after.
# Usage: scripts/measure-first-run.sh [WORKDIR]   (default: a new directory under /tmp, kept)
# Run it on a quiet machine: the load average printed beside each figure says how quiet it was.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/spyglass-first-run.XXXXXX)}
mkdir -p "$work"
clone=$work/spyglass
report=$work/first-run.txt
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { echo "$*" | tee -a "$report"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

commit=$(git -C "$repo" rev-parse HEAD)
git clone --quiet --no-hardlinks "$repo" "$clone"
git -C "$clone" checkout --quiet --detach "$commit"
unset CARGO_TARGET_DIR
export SPYGLASS_VM_CACHE=$work/vm-cache CARGO_TERM_COLOR=never
: > "$report"
say "first run of $commit on $(nproc) CPUs, $(date -u '+%F %H:%M UTC'); clone in $clone"

# make demo, in its own process group so that it can be stopped as a whole.
http=127.0.0.1:$(free_port)
start=$(date +%s)
say "make demo: started, load average $(load)"
(cd "$clone" && SPYGLASS_DEMO_HTTP=$http SPYGLASS_DEMO_MQTT_PORT=$(free_port) \
   SPYGLASS_DEMO_WS_PORT=$(free_port) exec setsid make demo) > "$work/demo.log" 2>&1 &
demo=$!
stop_demo() { kill -- "-$demo" 2>/dev/null || true; }
trap stop_demo EXIT
until grep -q '^open http://' "$work/demo.log"; do
  kill -0 "$demo" 2>/dev/null || { tail -30 "$work/demo.log"; echo "make demo ended early" >&2; exit 1; }
  sleep 1
done
say "make demo: printed its URL after $(( $(date +%s) - start )) s, load average $(load)"
until curl -sf -o /dev/null "http://$http/"; do
  kill -0 "$demo" 2>/dev/null || { tail -30 "$work/demo.log"; echo "make demo ended early" >&2; exit 1; }
  sleep 0.5
done
say "make demo: the page answered after $(( $(date +%s) - start )) s, load average $(load)"
stop_demo
wait "$demo" 2>/dev/null || true

start=$(date +%s)
say "make test: started, load average $(load)"
rc=0
(cd "$clone" && make test) 2>&1 | tee "$work/test.log" || rc=$?
say "make test: exit $rc after $(( $(date +%s) - start )) s, load average $(load)"
cat "$clone/build/test-logs/stages.tsv" >> "$report"

say "disk after the first run:"
for d in "$clone/target" "$clone/web/node_modules" "$SPYGLASS_VM_CACHE"; do
  say "  $(du -sh "$d" | cut -f1)  $d"
done
for d in "$clone/target"/*/ "$clone/target"/*-linux-*/*/; do
  [ -d "$d" ] && say "    $(du -sh "$d" | cut -f1)  ${d#"$clone/"}"
done
echo "report: $report"
exit $rc
