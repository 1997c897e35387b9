#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs every libFuzzer target for SECONDS each (default 30) on its corpus in fuzz/corpus/TARGET, so a
# run starts from what earlier runs found and keeps what it finds; --long runs each for 10 minutes.
# Needs clang (scripts/install-deps.sh --all). Any crash stops the script with the target's status.
#   scripts/fuzz.sh [--long | SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=30
case "${1:-}" in
  --long) secs=600 ;;
  "") ;;
  *[!0-9]*) echo "usage: scripts/fuzz.sh [--long | SECONDS]" >&2; exit 2 ;;
  *) secs=$1 ;;
esac
CC=clang cmake -S . -B build-fuzz -DMEMVISOR_FUZZ=ON -DBUILD_TESTING=OFF -DMEMVISOR_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for src in fuzz/fuzz_*.c; do
  t=$(basename "$src" .c)
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: $secs s from $(ls "fuzz/corpus/$t" | wc -l) corpus inputs"
  # The fuzzer's own status decides: a filter in a pipeline would hide a crash behind its own.
  status=0
  build-fuzz/bin/"$t" -max_total_time="$secs" -print_final_stats=1 "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY)' "$log" || true
  if [ "$status" -ne 0 ]; then
    grep -E '^(==[0-9]+==|    #[0-9]|artifact_prefix|Test unit written)' "$log" | head -40 >&2
    echo "fuzz: $t failed (status $status)" >&2
    exit "$status"
  fi
done
