#!/usr/bin/env bash
# `make soak`: the long reliability runs, with the release build. Not part of `make test`.
#  1. Leaks: SOAK_SESSIONS sessions one after another (default 1000), then SOAK_PARALLEL at once
#     (default 20), against one daemon: viewers back to 0, descriptors back to baseline, RSS
#     growth at most 5 MB (tests/reliability.rs many_sessions_leak_nothing, scaled up).
#  2. Uptime: SOAK_MINUTES (default 1440, 24 h) of sessions in a loop against one daemon while one
#     viewer stays connected throughout (scripts/soak-sessions.py): the daemon's RSS, descriptors
#     and threads at the start and the end, time to first frame and glass-to-glass latency of the
#     first and last sessions, and the connected viewer's latency drift (at most
#     SOAK_MAX_DRIFT_MS, default 20; RSS growth at most SOAK_MAX_RSS_GROWTH_MB, default 10).
# Everything runs on 127.0.0.1 with a private Mosquitto; processes are ended by PID.
# Usage: scripts/soak.sh TARGET_DIR   (after `cargo build --release`; SOAK_PROFILE=debug uses the
# debug build instead, for a quick check of the script itself; SOAK_SKIP_LEAKS=1 skips part 1)
set -euo pipefail
target=${1:?usage: scripts/soak.sh TARGET_DIR}
cd "$(dirname "$0")/.."
sessions=${SOAK_SESSIONS:-1000} parallel=${SOAK_PARALLEL:-20} minutes=${SOAK_MINUTES:-1440}
max_drift=${SOAK_MAX_DRIFT_MS:-20} size=${SOAK_SIZE:-640x480} fps=${SOAK_FPS:-30}
profile=${SOAK_PROFILE:-release}
bin=$target/$profile/spyglass
release_flag=$([ "$profile" = release ] && echo --release || true)
fail() { echo "soak: FAIL: $*" >&2; exit 1; }

if [ -z "${SOAK_SKIP_LEAKS:-}" ]; then
  echo "== leaks: $sessions sessions one after another, $parallel at once ($profile build)"
  leak_log=$(mktemp)
  SPYGLASS_SOAK_SESSIONS=$sessions SPYGLASS_SOAK_PARALLEL=$parallel \
    ${CARGO:-cargo} test $release_flag --test reliability many_sessions_leak_nothing -- --nocapture 2>&1 \
    | tee "$leak_log" | grep -E '^sessions:|^test |panicked|RSS grew|descriptors back' || true
  grep -q '^test many_sessions_leak_nothing ... ok' "$leak_log" || { tail -40 "$leak_log"; fail "leak test"; }
  rm -f "$leak_log"
fi

echo "== uptime: $minutes min of sessions in a loop beside one connected viewer ($size at $fps fps)"
python3 scripts/soak-sessions.py --bin "$bin" --minutes "$minutes" --size "$size" --fps "$fps" \
  --max-drift-ms "$max_drift" --max-rss-growth-mb "${SOAK_MAX_RSS_GROWTH_MB:-10}" || fail "uptime"
echo "soak: pass"
