#!/usr/bin/env bash
# A private Mosquitto on 127.0.0.1 and spyglass with the test pattern. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${SPYGLASS_DEMO_MQTT_PORT:-18830}
ID=${SPYGLASS_DEMO_ID:-demo}
dir=$(mktemp -d)
cat > "$dir/mosquitto.conf" <<CONF
persistence false
allow_anonymous true
listener $PORT 127.0.0.1
protocol mqtt
CONF
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.3
echo "broker: mqtt://127.0.0.1:$PORT (log: $dir/mosquitto.log)"
echo "watch:  target/release/spyglass view --mqtt mqtt://127.0.0.1:$PORT --id $ID --frames 300"
target/release/spyglass --id "$ID" --mqtt "mqtt://127.0.0.1:$PORT" --video test --size 1280x720 --fps 30
