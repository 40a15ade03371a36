#!/usr/bin/env bash
# The delivery benchmark (issue 12): `chatfabric dev` (persistence on, SQLite) pinned to one CPU,
# the load generator pinned to the other, a fresh fabric for every scenario, and the floor of
# delivery (one write(2) per delivery to loopback sockets) measured in the same run. Prints one
# table; the JSON reports, summaries and logs stay in target/bench/<time>/.
#
#   scripts/bench.sh              # the full run: S1 20 s per shape, 5 s ramp steps (~4 minutes)
#   scripts/bench.sh quick        # shorter runs and steps, to try it (~2 minutes)
#   BENCH_PERF=1 scripts/bench.sh # then one more S1 100 x 10 under `perf record -g`, summarised
#   scripts/bench.sh table DIR    # print the table of an earlier run again
#
# Scenarios (~100-byte bodies, zero loss, zero duplicates and zero reorders checked in every run):
#   S1     1,000 msg/s in for 20 s over 100 conversations x 10 members (10,000 deliveries/s), and
#          the 10 x 100 shape at the same 10,000 deliveries/s (100 msg/s in; BENCH_ROOMS_RATE=1000
#          for 1,000 msg/s in, which is 100,000 deliveries/s: more than one core carries, and
#          against a floor still measured at 100 x 10's 10,000 deliveries/s);
#   S2     the ramp 1k, 1.5k, 2k, 3k, 4k, 6k, 8k msg/s over 100 x 10: a step is held when the
#          generator kept the schedule, e2e p99 < 50 ms, nothing sent in it went undelivered and
#          nothing arrived out of order; send -> ack is read from its 2,000 msg/s step;
#   idle   10,000 subscribed connections in 1,000 ten-member conversations: RSS growth of the
#          fabric's processes (the dev process and its nats-server) per connection;
#   floor  as many sockets as S1 100 x 10 has connections, its measured frame size and delivery
#          rate, the writer pinned where the fabric runs and the reader where the generator runs.
# Sends are paced every BENCH_PACE_MS (1): what fell due in a step goes out together, so 10 gives
# the bursts of 10 (S1) to 80 (8k) sends of the generator's old 10 ms step, which batch the
# fabric's work and delay each send behind the fan-out of the others.
# CPU is read from /proc for every fabric process together (the dev process: gateway, persister,
# presence; and its nats-server), over the send window and drain, divided by the deliveries.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
case "$mode" in
  full) s1_secs=20 step_secs=5 idle_secs=5 floor_secs=10 drain=3 ;;
  quick) s1_secs=6 step_secs=2 idle_secs=2 floor_secs=4 drain=2 ;;
  table) ;;
  *)
    echo "usage: $0 [full|quick|table DIR]" >&2
    exit 2
    ;;
esac
fabric_cpu=${BENCH_FABRIC_CPU:-1}
load_cpu=${BENCH_LOAD_CPU:-0}
rooms_rate=${BENCH_ROOMS_RATE:-100}
ramp=1000,1500,2000,3000,4000,6000,8000

# The table, from the JSON reports of a run directory.
table() { # <dir> <mode>
  python3 - "$1" "$2" <<'PY' | tee "$1/table.md"
import json, os, sys

out, mode = sys.argv[1], sys.argv[2]
rep = lambda name: json.load(open(os.path.join(out, name + ".json")))
idle, s1, rooms, ramp, floor = (rep(n) for n in ("idle", "s1-100x10", "s1-10x100", "s2-ramp", "floor"))
load = [open(os.path.join(out, f)).read().split("load average:")[1].strip()
        for f in ("load-before.txt", "load-after.txt")]


def us(r):
    return r["cpu"]["fabric_us_per_delivery"] or 0.0


def name(label):
    """`chatfabric --log warn [pid]` is the dev process: gateway, persister and presence."""
    program = label.split()[0]
    return "dev" if program == "chatfabric" else program


def split(r):
    """CPU per delivery of each fabric process, labelled by its program name."""
    n = max(r["cpu"]["deliveries"], 1)
    return ", ".join(f'{name(label)} {secs * 1e6 / n:.1f}'
                     for label, secs in zip(r["fabric_processes"], r["cpu"]["process_secs"]))


def held(step):
    """As the load generator's verdict (`StepReport::passes`) judges a step."""
    return (step["sent_per_s"] >= 0.95 * step["rate"]
            and step["e2e"]["p99_ms"] < ramp["settings"]["p99_target_ms"]
            and step["lost"] == 0 and step["order_violations"] == 0)


floor_us = floor["writer_us_per_write"]
steps = ramp["steps"]
top = max((s for s in steps if held(s)), key=lambda s: s["rate"], default=None)
at2k = next(s for s in steps if s["rate"] == 2000)
runs = (idle, s1, rooms, ramp)
lost = sum(r["accounting"]["lost"] for r in runs)
dup = sum(r["accounting"]["duplicates"] for r in runs)
order = sum(r["accounting"]["order_violations"] for r in runs)
rss = idle["rss"]
print(f"\n## chatfabric delivery benchmark ({mode}): fabric on one pinned CPU, generator on the other\n")
print("| figure | measured | issue 12 target |")
print("|---|---|---|")
print(f'| fabric CPU per delivery, S1 100 x 10 ({s1["deliveries_per_s"]:,.0f} deliveries/s) '
      f'| **{us(s1):.1f} us** ({split(s1)}) | <= 15 us |')
print(f'| fabric CPU per delivery, S1 10 x 100 ({rooms["deliveries_per_s"]:,.0f} deliveries/s) '
      f'| **{us(rooms):.1f} us** ({split(rooms)}) | <= 15 us |')
print(f'| floor: CPU per write(2), {floor["sockets"]} sockets, {floor["frame_bytes"]} B frames, '
      f'{floor["writes_per_s"]:,.0f} writes/s | **{floor_us:.1f} us** (reader {floor["reader_us_per_write"]:.1f} us) | |')
print(f'| fabric / floor | **{us(s1) / floor_us:.2f}x** (100 x 10), **{us(rooms) / floor_us:.2f}x** (10 x 100) | <= 1.5x |')
if top:
    missed = [f'{x["rate"]:,.0f}' for x in steps if x["rate"] < top["rate"] and not held(x)]
    below = f'; below it not held: {", ".join(missed)} msg/s' if missed else ""
    print(f'| highest S2 step held | **{top["rate"]:,.0f} msg/s** = {top["delivered_per_s"]:,.0f} deliveries/s, '
          f'p99 {top["e2e"]["p99_ms"]:.1f} ms{below}; {us(ramp):.1f} us/delivery over the ramp | >= 8,000 msg/s |')
else:
    print(f'| highest S2 step held | **none** | >= 8,000 msg/s |')
for s in steps:
    print(f'| &nbsp; S2 {s["rate"]:,.0f} msg/s | sent {s["sent_per_s"]:,.0f}/s, delivered {s["delivered_per_s"]:,.0f}/s, '
          f'e2e p99 {s["e2e"]["p99_ms"]:.1f} ms, lost {s["lost"]}, reorders {s["order_violations"]}: '
          f'{"held" if held(s) else "not held"} | |')
print(f'| idle RSS per connection ({rss["connections"]:,} subscribed) | **{rss["bytes_per_connection"] / 1024:.1f} KiB** ('
      + ", ".join(f'{name(p[0])} +{(p[2] - p[1]) / rss["connections"] / 1024:.1f}' for p in rss["processes"])
      + ') | <= 4 KiB |')
print(f'| send -> ack at 2,000 msg/s (S2 step) | p50 **{at2k["ack"]["p50_ms"]:.2f} ms**, p99 **{at2k["ack"]["p99_ms"]:.2f} ms** '
      f'(sent {at2k["sent_per_s"]:,.0f}/s) | p99 <= 5 ms |')
print(f'| delivery, all runs | lost {lost}, duplicates {dup}, reorders {order} | 0 |')
print(f'\nload average before {load[0]}, after {load[1]}; bottleneck lines: S1 100 x 10: {s1["cpu"]["bottleneck"]}; '
      f'S2: {ramp["cpu"]["bottleneck"]}')
print(f"reports: {out}")
PY
}

if [ "$mode" = table ]; then
  table "${2:?usage: $0 table DIR}" "$(cat "$2/mode" 2>/dev/null || echo full)"
  exit 0
fi

# What a fresh machine lacks: nats-server (Debian puts it in /usr/sbin), taskset, python3.
export PATH="$PATH:/usr/sbin:/sbin"
missing=""
command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v pgrep >/dev/null 2>&1 || missing="$missing procps"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if [ "$(nproc --all)" -lt 2 ]; then
  echo "the benchmark pins the fabric and the load generator to two different CPUs" >&2
  exit 1
fi

cargo build --release --quiet -p chatfabric --bin chatfabric
bin=target/release/chatfabric
out=target/bench/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
echo "$mode" >"$out/mode"
say() { echo "$*" >&2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# /readyz answers 200 once the gateway serves (plain bash, no curl needed).
ready() { # <port>
  local status
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r _ status _ <&3 || true
  exec 3<&- 3>&-
  [ "$status" = 200 ]
}

dev_pid="" nats_pid="" gateway=""
start_fabric() { # <name>: a fresh `chatfabric dev` on $fabric_cpu; sets dev_pid, nats_pid, gateway
  local dir="$out/$1" nats_port http_port
  mkdir -p "$dir"
  nats_port=$(free_port)
  http_port=$(free_port)
  taskset -c "$fabric_cpu" "$bin" --log warn dev --data "$dir" --nats-port "$nats_port" \
    --listen "127.0.0.1:$http_port" --no-demo >"$out/$1-fabric.log" 2>&1 &
  dev_pid=$!
  gateway="ws://127.0.0.1:$http_port/ws"
  for _ in $(seq 1 300); do
    ready "$http_port" && break
    kill -0 "$dev_pid" 2>/dev/null || {
      cat "$out/$1-fabric.log" >&2
      exit 1
    }
    sleep 0.1
  done
  ready "$http_port" || {
    echo "chatfabric dev did not become ready (see $out/$1-fabric.log)" >&2
    exit 1
  }
  nats_pid=$(pgrep -P "$dev_pid" -x nats-server)
}

stop_fabric() {
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  dev_pid=""
}
trap 'if [ -n "$dev_pid" ]; then kill -TERM "$dev_pid" 2>/dev/null || true; fi' EXIT

load() { # <name> <loadtest flags...>: one load run on $load_cpu against the running fabric
  local name=$1
  shift
  taskset -c "$load_cpu" "$bin" --log warn loadtest --gateway "$gateway" \
    --fabric-pid "$dev_pid" --fabric-pid "$nats_pid" --payload 100 --drain "$drain" \
    --pace-ms "${BENCH_PACE_MS:-1}" \
    --run-id "$name" --json "$out/$name.json" "$@" >"$out/$name.txt" 2>"$out/$name.log" || {
    cat "$out/$name.txt" "$out/$name.log" >&2
    exit 1
  }
}

scenario() { # <name> <what> <loadtest flags...>: a fresh fabric, one load run, the fabric stopped
  local name=$1 what=$2
  shift 2
  say "== $name: $what"
  start_fabric "$name"
  load "$name" "$@"
  stop_fabric
}

say "bench ($mode) into $out; fabric on CPU $fabric_cpu, load generator on CPU $load_cpu; load average $(cut -d' ' -f1-3 /proc/loadavg)"
uptime >"$out/load-before.txt"
scenario idle "10,000 idle subscribed connections in 1,000 ten-member conversations" \
  --conversations 0 --idle 10000 --idle-room-size 10 --rate 0 --duration "$idle_secs" \
  --source-addr 127.0.0.2,127.0.0.3
scenario s1-100x10 "S1, 100 x 10 at 1,000 msg/s in for $s1_secs s" \
  --conversations 100 --members 10 --rate 1000 --duration "$s1_secs"

# The floor at S1 100 x 10's connections, delivery rate and frame size (a server frame is its
# text plus a 2-byte WebSocket header below 126 bytes, 4 bytes up to 64 KiB).
floor_args=$(
  python3 - "$out/s1-100x10.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["totals"]
text = t["delivered_bytes"] / max(t["delivered"], 1)
print(round(r["deliveries_per_s"]), round(text + (2 if text < 126 else 4)))
PY
)
read -r floor_rate floor_frame <<<"$floor_args"
say "== floor: 1000 sockets, $floor_frame-byte frames, $floor_rate writes/s for $floor_secs s"
taskset -c "$load_cpu" "$bin" --log warn loadtest floor --sockets 1000 --frame-bytes "$floor_frame" \
  --rate "$floor_rate" --secs "$floor_secs" --writer-cpu "$fabric_cpu" --json "$out/floor.json" \
  >"$out/floor.txt" 2>"$out/floor.log" || {
  cat "$out/floor.txt" "$out/floor.log" >&2
  exit 1
}

scenario s1-10x100 "S1, 10 x 100 at $rooms_rate msg/s in for $s1_secs s" \
  --conversations 10 --members 100 --rate "$rooms_rate" --duration "$s1_secs"
scenario s2-ramp "S2, 100 x 10, steps of $ramp msg/s, $step_secs s each" \
  --conversations 100 --members 10 --ramp "$ramp" --step-secs "$step_secs" --p99-target-ms 50
uptime >"$out/load-after.txt"

if [ "${BENCH_PERF:-0}" = 1 ]; then
  if command -v perf >/dev/null 2>&1; then
    say "== perf: S1 100 x 10 again, the pinned fabric under perf record -g (not in the table)"
    start_fabric perf
    (
      sleep 3
      perf record -q -g -e cpu-clock -p "$dev_pid,$nats_pid" -o "$out/perf.data" \
        -- sleep "$((s1_secs - 2))" 2>"$out/perf-record.log"
    ) &
    perf_job=$!
    load perf --conversations 100 --members 10 --rate 1000 --duration "$s1_secs"
    wait "$perf_job" || true
    stop_fabric
    # Where the samples are (process and library), what the syscalls cost with what they call,
    # and the costliest functions of the dev process itself.
    report() { perf report -i "$out/perf.data" -g none --stdio "$@" 2>/dev/null | grep -v '^#' | grep -v '^$' || true; }
    {
      echo "## samples by process and library"
      report --no-children --sort comm,dso | head -12
      echo "## inclusive (children), >= 5 %"
      report --children --sort sym --percent-limit 5 | head -40
      echo "## the dev process's own functions (self), >= 0.4 %"
      report --no-children --comm tokio-rt-worker --sort dso,sym --percent-limit 0.4 | head -40
    } >"$out/perf-summary.txt"
    say "perf summary: $out/perf-summary.txt"
  else
    say "perf is not installed: no profile"
  fi
fi

table "$out" "$mode"
