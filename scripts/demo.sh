#!/usr/bin/env bash
# A private Mosquitto on 127.0.0.1 (MQTT and WebSocket listeners) and spyglass with the test
# pattern, serving the viewer page on 127.0.0.1:8080. Ctrl-C stops both.
# Usage: scripts/demo.sh [BINARY]   (`make demo` passes its local-profile build)
set -euo pipefail
BIN=$(realpath "${1:-$(dirname "$0")/../target/local/spyglass}")
cd "$(dirname "$0")/.."
PORT=${SPYGLASS_DEMO_MQTT_PORT:-18830}
# 9001 is the port the page tries on its own host name when spyglass has no --web-broker-url.
WS_PORT=${SPYGLASS_DEMO_WS_PORT:-9001}
HTTP=${SPYGLASS_DEMO_HTTP:-127.0.0.1:8080}
ID=${SPYGLASS_DEMO_ID:-demo}
dir=$(mktemp -d)
# socket_domain ipv4: without it Mosquitto 2.0.11's websockets listener ignores its bind address.
cat > "$dir/mosquitto.conf" <<CONF
persistence false
allow_anonymous true
listener $PORT 127.0.0.1
protocol mqtt
listener $WS_PORT 127.0.0.1
socket_domain ipv4
protocol websockets
CONF
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.3
web_broker=()
[ "$WS_PORT" = 9001 ] || web_broker=(--web-broker-url "ws://127.0.0.1:$WS_PORT")
echo "broker: mqtt://127.0.0.1:$PORT and ws://127.0.0.1:$WS_PORT (log: $dir/mosquitto.log)"
echo "open http://$HTTP/"
echo "or watch headless: $BIN view --mqtt mqtt://127.0.0.1:$PORT --id $ID --frames 300"
"$BIN" --id "$ID" --mqtt "mqtt://127.0.0.1:$PORT" --video test --size 1280x720 --fps 30 \
  --http "$HTTP" "${web_broker[@]}"
