#!/usr/bin/env bash
# The stages of `make test`: a line as each starts and ends, with its time; each stage's output
# in its own log file; a summary table at the end.
#
#   scripts/stage.sh begin                 start a run (forgets the last run's table and logs)
#   scripts/stage.sh 'NAME' -- COMMAND...  run one stage, its output into a log file
#   scripts/stage.sh end                   print the summary; exit 1 when a stage failed
#
# A stage that fails prints its log's tail and exits 0, so that make goes on to the next lines:
# those are listed as "not run" (STAGE_KEEP_GOING=1 runs them anyway), and `end` exits 1.
# Logs: $STAGE_LOGS (default build/test-logs in the repository), NN-name.log per stage and
# stages.tsv (stage, seconds, result, 1-minute load average at the end, log).
# STAGE_VERBOSE=1 also shows the output as it comes; STAGE_TAIL lines of a failed stage's log
# are shown (default 60); a running stage prints its log's last line every STAGE_HEARTBEAT
# seconds (default 60; 0 never).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
logs=${STAGE_LOGS:-$repo/build/test-logs}
table=$logs/stages.tsv

now() { date +%s; }
load() { cut -d' ' -f1 /proc/loadavg; }
duration() { # seconds -> "7 s" or "4m05s"
  if [ "$1" -lt 60 ]; then echo "$1 s"; else printf '%dm%02ds\n' $(($1 / 60)) $(($1 % 60)); fi
}

case "${1:-}" in
  begin)
    rm -rf "$logs" && mkdir -p "$logs" || exit 1
    : > "$table"
    now > "$logs/started"
    echo "make test: each stage's output goes to $logs/ (load average $(load), $(nproc) CPUs)"
    exit 0 ;;
  end)
    [ -s "$table" ] || { echo "stage.sh: no stage ran (no 'begin'?)" >&2; exit 1; }
    total=$(( $(now) - $(cat "$logs/started") ))
    echo
    echo "make test summary (logs in $logs/)"
    printf '  %-30s %7s  %-8s %s\n' stage time result load
    failed=0
    while IFS=$'\t' read -r name secs result ld log; do
      t=-; [ "$secs" = - ] || t=$(duration "$secs")
      printf '  %-30s %7s  %-8s %s\n' "$name" "$t" "$result" "$ld"
      [ "$result" = ok ] || failed=1
    done < "$table"
    printf '  %-30s %7s\n' total "$(duration "$total")"
    [ $failed = 0 ] && exit 0
    while IFS=$'\t' read -r name secs result ld log; do
      [ "$result" = FAILED ] && echo "FAILED: $name (log: $log)"
    done < "$table"
    exit 1 ;;
esac

[ $# -ge 3 ] && [ "$2" = -- ] || {
  echo "usage: scripts/stage.sh begin | 'NAME' -- COMMAND... | end" >&2; exit 2; }
name=$1; shift 2
mkdir -p "$logs"
n=$(( $(cat "$table" 2>/dev/null | wc -l) + 1 ))
slug=$(echo "$name" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9\n' '-' | sed 's/^-//; s/-$//')
log=$logs/$(printf '%02d' "$n")-$slug.log

if [ "${STAGE_KEEP_GOING:-0}" != 1 ] && grep -q $'\tFAILED\t' "$table" 2>/dev/null; then
  printf '%s\t-\tnot run\t-\t-\n' "$name" >> "$table"
  echo "-- $name: not run (an earlier stage failed)"
  exit 0
fi

echo "-> $name"
start=$(now)
if [ "${STAGE_VERBOSE:-0}" = 1 ]; then
  "$@" < /dev/null 2>&1 | tee "$log"
  rc=$?
else
  "$@" < /dev/null > "$log" 2>&1 &
  pid=$!
  beat=${STAGE_HEARTBEAT:-60}
  if [ "$beat" -gt 0 ]; then
    # The heartbeat: how long the stage has run, and what it is doing.
    (
      trap 'kill "$s" 2>/dev/null; exit 0' TERM
      while :; do
        sleep "$beat" & s=$!
        wait "$s"
        echo "   $name: $(duration $(( $(now) - start ))): $(tail -n 1 "$log" | tr -d '\r' | cut -c1-100)"
      done
    ) &
    heart=$!
  fi
  wait "$pid"
  rc=$?
  if [ -n "${heart:-}" ]; then kill "$heart" 2>/dev/null; wait "$heart" 2>/dev/null; fi
fi
secs=$(( $(now) - start ))

if [ $rc = 0 ]; then
  printf '%s\t%s\tok\t%s\t%s\n' "$name" "$secs" "$(load)" "$log" >> "$table"
  echo "<- $name: ok, $(duration "$secs")"
else
  printf '%s\t%s\tFAILED\t%s\t%s\n' "$name" "$secs" "$(load)" "$log" >> "$table"
  tail -n "${STAGE_TAIL:-60}" "$log" | sed 's/^/   | /'
  echo "<- $name: FAILED (exit $rc) after $(duration "$secs"); log: $log"
fi
exit 0
