#!/usr/bin/env bash
# Runs every fuzz target: `fuzz/run.sh [SECONDS]` (default 60 each) or `fuzz/run.sh --runs N`.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New inputs that add
# coverage are kept in fuzz/corpus/<target>; a crash stops the run with its input in
# fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <file>).
set -euo pipefail
cd "$(dirname "$0")"
limit=(-max_total_time="${1:-60}")
if [ "${1:-}" = "--runs" ]; then limit=(-runs="$2"); fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=$(cargo +nightly fuzz list)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "== $t"
  status=0
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- "${limit[@]}" -max_len=8192 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|.*panicked)|Done [0-9]+ runs" "$log" || true
  # A failed build, a crash, a leak, an out-of-memory or a timeout: each fails the run loudly.
  if [ "$status" -ne 0 ] || compgen -G "artifacts/$t/*-*" >/dev/null; then
    tail -n 30 "$log"
    echo "FAILED: $t (exit $status; inputs, if any, in fuzz/artifacts/$t)"
    exit 1
  fi
done
