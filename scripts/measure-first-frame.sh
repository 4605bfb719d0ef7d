#!/usr/bin/env bash
# Time from offer to first decoded frame and glass-to-glass latency, as `spyglass view` sees them:
# a private Mosquitto and spyglass (test pattern) on 127.0.0.1, N viewers one after another.
# Usage: scripts/measure-first-frame.sh [N] [WxH]   (uses target/debug/spyglass unless SPYGLASS_BIN)
set -euo pipefail
N=${1:-20}; SIZE=${2:-1280x720}
BIN=${SPYGLASS_BIN:-target/debug/spyglass}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
printf 'persistence false\nallow_anonymous true\nlistener %s 127.0.0.1\n' "$PORT" > "$dir/m.conf"
mosquitto -c "$dir/m.conf" >/dev/null 2>&1 & broker=$!
sleep 0.3
"$BIN" --id measure --mqtt "mqtt://127.0.0.1:$PORT" --video test --size "$SIZE" --rtc-bind 127.0.0.1 --rtc-allow-loopback on --mdns off 2>"$dir/d.log" & daemon=$!
trap 'kill $daemon $broker 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
for i in $(seq "$N"); do
  "$BIN" view --mqtt "mqtt://127.0.0.1:$PORT" --id measure --frames 30 --rtc-bind 127.0.0.1 --mdns off --json 2>/dev/null
done | python3 -c '
import json, sys, statistics as st
rs = [json.loads(l) for l in sys.stdin if l.strip()]
def q(v, p): v = sorted(v); return v[round((len(v) - 1) * p)]
for key in ("answer_ms", "connected_ms", "first_frame_ms"):
    v = [r[key] for r in rs if r.get(key) is not None]
    print(f"{key:15s} median {st.median(v):6.0f}  p95 {q(v, .95):6.0f}  (n={len(v)})")
lat = [r["latency_ms"]["median"] for r in rs if r.get("latency_ms")]
print(f"latency_ms      median of per-session medians {st.median(lat):6.1f}  p95 {q(lat, .95):6.1f}")
'
