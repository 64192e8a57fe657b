#!/usr/bin/env bash
# Runs every fuzz target for $1 seconds (default 60) from its corpus in fuzz/corpus/<target>.
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/. cargo-fuzz is
# installed when missing; the stable compiler builds the targets with RUSTC_BOOTSTRAP=1
# (cargo-fuzz passes nightly-only sanitizer flags).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
CARGO="${CARGO:-cargo}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || "$CARGO" install --locked cargo-fuzz --version 0.13.2
cd fuzz
"$CARGO" fuzz build -O
for t in $("$CARGO" fuzz list); do
  mkdir -p "corpus/$t"
  echo "fuzzing $t for ${seconds}s"
  "$CARGO" fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY|Done)' || true
  # `set -o pipefail` would hide libFuzzer's exit behind grep; a crash leaves an artifact.
  if compgen -G "artifacts/$t/*" >/dev/null; then
    echo "fuzz target $t found a failing input:" artifacts/"$t"/*
    exit 1
  fi
done
