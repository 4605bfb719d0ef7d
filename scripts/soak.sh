#!/usr/bin/env bash
# `make soak`: the long reliability runs, with the release build. Not part of `make test`.
#  1. Leaks: SOAK_SESSIONS sessions one after another (default 1000), then SOAK_PARALLEL at once
#     (default 20), against one daemon: viewers back to 0, descriptors back to baseline, RSS
#     growth at most 5 MB (tests/reliability.rs many_sessions_leak_nothing, scaled up).
#  2. Latency creep: one viewer streams the test pattern for SOAK_MINUTES (default 10); the
#     glass-to-glass latency median of the last minute may exceed the first minute's by at most
#     SOAK_MAX_DRIFT_MS (default 20).
# Everything runs on 127.0.0.1 with a private Mosquitto; processes are ended by PID.
# Usage: scripts/soak.sh TARGET_DIR   (after `cargo build --release`; SOAK_PROFILE=debug uses the
# debug build instead, for a quick check of the script itself)
set -euo pipefail
target=${1:?usage: scripts/soak.sh TARGET_DIR}
cd "$(dirname "$0")/.."
sessions=${SOAK_SESSIONS:-1000} parallel=${SOAK_PARALLEL:-20} minutes=${SOAK_MINUTES:-10}
max_drift=${SOAK_MAX_DRIFT_MS:-20} size=${SOAK_SIZE:-640x480} fps=${SOAK_FPS:-30}
profile=${SOAK_PROFILE:-release}
bin=$target/$profile/spyglass
release_flag=$([ "$profile" = release ] && echo --release || true)
fail() { echo "soak: FAIL: $*" >&2; exit 1; }

echo "== leaks: $sessions sessions one after another, $parallel at once ($profile build)"
leak_log=$(mktemp)
SPYGLASS_SOAK_SESSIONS=$sessions SPYGLASS_SOAK_PARALLEL=$parallel \
  ${CARGO:-cargo} test $release_flag --test reliability many_sessions_leak_nothing -- --nocapture 2>&1 \
  | tee "$leak_log" | grep -E '^sessions:|^test |panicked|RSS grew|descriptors back' || true
grep -q '^test many_sessions_leak_nothing ... ok' "$leak_log" || { tail -40 "$leak_log"; fail "leak test"; }
rm -f "$leak_log"

echo "== latency drift: one viewer for $minutes min ($size at $fps fps)"
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'persistence false\nallow_anonymous true\nlistener %s 127.0.0.1\n' "$port" > "$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
id=soak/cam-$$
"$bin" --id "$id" --mqtt "mqtt://127.0.0.1:$port" --video test --size "$size" --fps "$fps" \
  --rtc-bind 127.0.0.1 --mdns off --http off --audio none 2> "$dir/daemon.log" & pids+=($!)
frames=$((minutes * 60 * fps))
if ! "$bin" view --mqtt "mqtt://127.0.0.1:$port" --id "$id" --frames "$frames" \
     --timeout $((minutes * 60 + 120)) --rtc-bind 127.0.0.1 --mdns off --json > "$dir/view.json" 2> "$dir/view.log"; then
  tail -20 "$dir/view.log" "$dir/daemon.log"; cat "$dir/view.json"; fail "the viewer did not get $frames frames"
fi
python3 - "$dir/view.json" "$max_drift" "$minutes" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); max_drift = float(sys.argv[2])
d, l = r.get("latency_drift"), r.get("latency_ms")
print(f"frames {r['frames']}, counter gaps {r['counter_gaps']}, lost packets {r['lost_packets']}, "
      f"keyframe requests {r['keyframe_requests']}")
if l: print(f"latency over {sys.argv[3]} min: median {l['median']:.0f} ms, p95 {l['p95']:.0f} ms, "
            f"min {l['min']:.0f} ms, max {l['max']:.0f} ms")
if not d: sys.exit("soak: FAIL: no latency drift in the report (no test pattern read?)")
print(f"latency drift: {d['drift_ms']:+.1f} ms (median {d['first_median_ms']:.1f} ms in the first "
      f"{d['window_s']:.0f} s, {d['last_median_ms']:.1f} ms in the last {d['window_s']:.0f} s; allowed {max_drift:.0f} ms)")
if abs(d["drift_ms"]) > max_drift: sys.exit("soak: FAIL: latency drifted")
PY
echo "soak: pass"
