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
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "== $t"
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- "${limit[@]}" -max_len=8192 -print_final_stats=1 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|.*panicked)|Done [0-9]+ runs" || true
  # A crash leaves an artifact and a non-zero exit above; fail loudly.
  if compgen -G "artifacts/$t/crash-*" >/dev/null; then echo "CRASH in $t: see fuzz/artifacts/$t"; exit 1; fi
done
