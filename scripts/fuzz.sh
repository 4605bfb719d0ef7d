#!/usr/bin/env bash
# `make fuzz`: run every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60) each, starting
# from the seed corpus in fuzz/corpus/TARGET (real browser offers and signaling messages; what
# libFuzzer adds there stays untracked), and print executions and crashes per target. A crash
# leaves its input in fuzz/artifacts/TARGET/ and makes this fail; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…
# cargo-fuzz needs nightly features; on stable Rust RUSTC_BOOTSTRAP=1 unlocks them.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
export RUSTC_BOOTSTRAP=1
# A target directory of its own: the sanitizer flags would otherwise rebuild the daemon's.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
cargo fuzz build -O || exit 1
total_crashes=0
summary=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(ls "artifacts/$t" | wc -l)
  echo "== $t: ${seconds} s"
  log=$(mktemp)
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 \
    -max_len=262144 -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(( $(ls "artifacts/$t" | wc -l) - before ))
  if [ $rc -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  if [ "$crashes" -gt 0 ]; then
    grep -E 'panicked|ERROR: |SUMMARY|Test unit written' "$log" | head -20
  fi
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  line="$t: ${execs:-?} executions in ${seconds} s, ${cov:-cov: ?}, corpus $(ls "corpus/$t" | wc -l) inputs, crashes: $crashes"
  echo "$line"
  summary+=("$line")
  total_crashes=$((total_crashes + crashes))
  rm -f "$log"
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
[ "$total_crashes" -eq 0 ]
