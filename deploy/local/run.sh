#!/usr/bin/env bash
# The production topology on one machine, from the distribution's packages, on free loopback ports:
# a 3-node NATS cluster (JetStream, streams and buckets R3, several partitions), two gateways
# behind HAProxy (WebSocket and SSE), two persisters, two presence services, and Prometheus
# scraping every role, the load balancer and every NATS node (through `chatfabric nats-exporter`,
# one per node); with CHATFABRIC_WEBHOOK_URL, the webhook role too.
#
#   deploy/local/run.sh start          # prints the URLs and the stack's directory
#   deploy/local/run.sh stop DIR       # stops everything it started and waits (DIR stays)
#   deploy/local/run.sh kill NAME DIR  # SIGKILL one process (a crash): n1..n3, gateway-1,
#                                      # nats-exporter-n1, ...
#   deploy/local/run.sh term NAME DIR  # SIGTERM one process (a clean stop, e.g. gateway drain)
#   deploy/local/run.sh restart NAME DIR  # start a stopped or killed process again (waiting
#                                         # up to 30 s for one still stopping)
#
# Needs nats-server, haproxy, prometheus and curl (apt-get install nats-server haproxy prometheus
# curl) and a built chatfabric (cargo build --release).
#
# Settings (environment):
#   CHATFABRIC_BIN         the binary (default: target/release/chatfabric, else target/debug/)
#   CHATFABRIC_STACK_DIR   where configs, data, logs, pids and `env` go (default: a new temp dir)
#   CHATFABRIC_STACK_TTL   stop everything after this many seconds, whatever happens (default: none)
#   CHATFABRIC_PARTITIONS  message streams (default 4); replicas are always 3
#   CHATFABRIC_JWT_SECRET  HS256 secret of the gateways (default: the dev secret)
#   SCRAPE_INTERVAL        Prometheus scrape interval (default 2s)
#   CHATFABRIC_WEBHOOK_URL the receiver(s) of webhook events: runs webhooks-1 (with
#                          CHATFABRIC_WEBHOOK_SECRET, default "chatfabric-dev-webhook-secret")
#   NATS_AUTH_CONF         a nats-server `authorization { ... }` file included by every node;
#                          then set each role's credentials:
#   NATS_GATEWAY_USER/NATS_GATEWAY_PASSWORD, NATS_PERSISTER_USER/..., NATS_PRESENCE_USER/...,
#   NATS_WEBHOOKS_USER/...
#                          Default: every role its own user with least privilege and a fresh
#                          random password (`chatfabric nats-users`, kept in DIR/auth.conf);
#                          NATS_AUTH_CONF=none runs NATS without authentication.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# nats-server and haproxy live in /usr/sbin (hand installs in /usr/local/bin), which a normal
# user's PATH may lack: the same places nats/src/server.rs::binary() looks in.
PATH="$PATH:/usr/local/bin:/usr/sbin:/sbin"
cmd=${1:-}

die() { echo "run.sh: $*" >&2; exit 1; }

# Ports come from a block of 50 below the kernel's ephemeral range (20000-31999), claimed with an
# atomic mkdir so that stacks started at the same time never pick the same ports; `stop` frees it.
# A block whose owner's directory is gone (a stack never stopped) is reclaimed.
port_locks=${TMPDIR:-/tmp}
claim_ports() {
  local slot lock owner
  for _ in $(seq 1 1000); do
    slot=$((RANDOM % 240))
    lock="$port_locks/chatfabric-ports.$slot"
    if mkdir "$lock" 2>/dev/null; then
      echo "$dir" >"$lock/owner"
      echo "$lock" >"$dir/ports.lock"
      next_port=$((20000 + slot * 50))
      return
    fi
    owner=$(cat "$lock/owner" 2>/dev/null || true)
    [ -n "$owner" ] && [ ! -d "$owner" ] && rm -rf "$lock"
  done
  die "no free block of ports"
}

# Sets variable $1 to the block's next port nothing listens on (/dev/tcp: refused means free).
alloc() {
  local p
  while :; do
    p=$next_port
    next_port=$((next_port + 1))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      printf -v "$1" %s "$p"
      return
    fi
  done
}

# Polls `curl URL` until it succeeds (and its body matches $3 if given), for at most $2 seconds.
wait_http() {
  local url=$1 secs=$2 pattern=${3:-} i
  for ((i = 0; i < secs * 10; i++)); do
    if body=$(curl -fsS --max-time 1 "$url" 2>/dev/null) && [[ -z "$pattern" || "$body" =~ $pattern ]]; then
      return 0
    fi
    sleep 0.1
  done
  die "$url not ready within ${secs}s (logs: $dir/logs)"
}

# Waits (60 s) for role NAME to answer URL with a body matching PATTERN. A role whose start-up
# failed (provisioning can time out while a loaded cluster elects leaders) is started again, at
# most twice, as compose's `restart: unless-stopped` would.
wait_role() {
  local name=$1 url=$2 pattern=$3 attempt i
  for attempt in 1 2 3; do
    for ((i = 0; i < 600; i++)); do
      if body=$(curl -fsS --max-time 1 "$url" 2>/dev/null) && [[ "$body" =~ $pattern ]]; then
        return 0
      fi
      running "$(cat "$dir/pids/$name")" || break
      sleep 0.1
    done
    running "$(cat "$dir/pids/$name")" && break
    echo "run.sh: $name exited during start-up (attempt $attempt; logs/$name.log); starting it again" >&2
    relaunch "$name"
  done
  die "$name not ready at $url (logs: $dir/logs/$name.log)"
}

# Starts NAME as a background process logging to logs/NAME.log; its pid goes to pids/NAME. The
# command and its settings are kept in cmd/NAME.sh, for `restart`.
launch() {
  local name=$1 var
  shift
  mkdir -p "$dir/cmd"
  {
    for var in $(compgen -e); do
      case "$var" in CHATFABRIC_* | LB_* | GATEWAY_*) printf 'export %s=%q\n' "$var" "${!var}" ;; esac
    done
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
  } >"$dir/cmd/$name.sh"
  relaunch "$name"
}

# Runs cmd/NAME.sh in the background, appending to its log.
relaunch() {
  bash "$dir/cmd/$1.sh" >>"$dir/logs/$1.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$1"
}

# The URL list of the cluster with USER/PASSWORD from the named variables (none: no credentials).
nats_urls() {
  local user=${!1:-} pass=${!2:-} cred="" urls="" p
  [ -n "$user" ] && cred="$user:$pass@"
  for p in "$nats1" "$nats2" "$nats3"; do urls="$urls${urls:+,}nats://${cred}127.0.0.1:$p"; done
  echo "$urls"
}

start() {
  for tool in nats-server haproxy prometheus curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install nats-server haproxy prometheus curl)"
  done
  bin=${CHATFABRIC_BIN:-}
  if [ -z "$bin" ]; then
    for b in "$root/target/release/chatfabric" "$root/target/debug/chatfabric"; do
      [ -x "$b" ] && bin=$b && break
    done
  fi
  [ -x "${bin:-}" ] || die "no chatfabric binary: cargo build --release, or set CHATFABRIC_BIN"
  dir=${CHATFABRIC_STACK_DIR:-$(mktemp -d -t chatfabric-stack.XXXXXX)}
  mkdir -p "$dir"/{logs,pids,prometheus}
  dir=$(cd "$dir" && pwd)
  partitions=${CHATFABRIC_PARTITIONS:-4}
  secret=${CHATFABRIC_JWT_SECRET:-chatfabric-dev-secret}

  claim_ports
  local i names=(n1 n2 n3) clients routes monitors exporters r1 r2 r3 m1 m2 m3 x1 x2 x3 g1 g2 pm1 pm2 qm1 qm2 wm
  for v in nats1 nats2 nats3 r1 r2 r3 m1 m2 m3 x1 x2 x3 g1 g2 pm1 pm2 qm1 qm2 wm lb lb_stats prom; do alloc "$v"; done
  clients=("$nats1" "$nats2" "$nats3")
  routes=("$r1" "$r2" "$r3")
  monitors=("$m1" "$m2" "$m3")
  exporters=("$x1" "$x2" "$x3")
  gw=("$g1" "$g2")
  persister_metrics=("$pm1" "$pm2")
  presence_metrics=("$qm1" "$qm2")

  # NATS: the cluster configs of nats/config/cluster-*.conf, on loopback ports.
  local auth=""
  if [ -z "${NATS_AUTH_CONF:-}" ]; then
    # Least privilege per role, as in production: one user each, passwords made here.
    (umask 077 && "$bin" nats-users --partitions "$partitions" >"$dir/auth.conf")
    local role pw
    for role in gateway persister presence webhooks; do
      pw=$(sed -n "s|^# chatfabric $role --nats-url nats://$role:\([^@]*\)@.*|\1|p" "$dir/auth.conf")
      [ -n "$pw" ] || die "no password for $role in $dir/auth.conf"
      printf -v "NATS_${role^^}_USER" %s "$role"
      printf -v "NATS_${role^^}_PASSWORD" %s "$pw"
    done
    auth="include ./auth.conf"
  elif [ "$NATS_AUTH_CONF" != none ]; then
    cp "$NATS_AUTH_CONF" "$dir/auth.conf"
    auth="include ./auth.conf"
  fi
  for i in 0 1 2; do
    local n=${names[$i]}
    mkdir -p "$dir/$n"
    cat >"$dir/$n.conf" <<EOF
server_name: $n
listen: 127.0.0.1:${clients[$i]}
http: 127.0.0.1:${monitors[$i]}
max_payload: 1MB
jetstream { store_dir: "$dir/$n" }
cluster {
  name: chatfabric
  listen: 127.0.0.1:${routes[$i]}
  routes: [nats://127.0.0.1:${routes[0]}, nats://127.0.0.1:${routes[1]}, nats://127.0.0.1:${routes[2]}]
}
$auth
EOF
    launch "$n" nats-server -c "$dir/$n.conf"
  done
  for i in 0 1 2; do
    # Ready once JetStream has a meta leader (the cluster formed).
    wait_http "http://127.0.0.1:${monitors[$i]}/jsz" 30 '"leader"'
  done
  # nats-server serves JSON monitoring only; prometheus-nats-exporter, which compose runs, has no
  # distribution package, so `chatfabric nats-exporter` renders each node's /varz the same way.
  for i in 0 1 2; do
    launch "nats-exporter-${names[$i]}" "$bin" nats-exporter "http://127.0.0.1:${monitors[$i]}" \
      --listen "127.0.0.1:${exporters[$i]}"
    wait_role "nats-exporter-${names[$i]}" "http://127.0.0.1:${exporters[$i]}/metrics" gnatsd_varz_mem
  done

  # Every role agrees on the stream layout.
  export CHATFABRIC_PARTITIONS=$partitions CHATFABRIC_REPLICAS=3
  export CHATFABRIC_SQLITE_PATH="$dir/history.db"
  local gw_urls persister_urls presence_urls webhooks_job=""
  gw_urls=$(nats_urls NATS_GATEWAY_USER NATS_GATEWAY_PASSWORD)
  persister_urls=$(nats_urls NATS_PERSISTER_USER NATS_PERSISTER_PASSWORD)
  presence_urls=$(nats_urls NATS_PRESENCE_USER NATS_PRESENCE_PASSWORD)
  # The first gateway provisions streams and buckets alone; the others find them in place.
  for i in 0 1; do
    CHATFABRIC_NATS_URL=$gw_urls CHATFABRIC_JWT_SECRET=$secret \
      launch "gateway-$((i + 1))" "$bin" gateway --listen "127.0.0.1:${gw[$i]}"
    wait_role "gateway-$((i + 1))" "http://127.0.0.1:${gw[$i]}/readyz" ready
  done
  # One persister at a time: two creating the dead-letter stream at once on a cluster can time
  # out, and a persister whose start-up fails exits. Draining once its per-stream lag shows.
  for i in 0 1; do
    CHATFABRIC_NATS_URL=$persister_urls \
      launch "persister-$((i + 1))" "$bin" persister --metrics-listen "127.0.0.1:${persister_metrics[$i]}"
    wait_role "persister-$((i + 1))" "http://127.0.0.1:${persister_metrics[$i]}/metrics" unstored_messages
    CHATFABRIC_NATS_URL=$presence_urls \
      launch "presence-$((i + 1))" "$bin" presence --metrics-listen "127.0.0.1:${presence_metrics[$i]}"
  done

  # The webhook role, when there is a receiver: one process (coalescing windows are per process).
  if [ -n "${CHATFABRIC_WEBHOOK_URL:-}" ]; then
    CHATFABRIC_NATS_URL=$(nats_urls NATS_WEBHOOKS_USER NATS_WEBHOOKS_PASSWORD) \
      CHATFABRIC_WEBHOOK_SECRET=${CHATFABRIC_WEBHOOK_SECRET:-chatfabric-dev-webhook-secret} \
      launch webhooks-1 "$bin" webhooks --webhooks-listen "127.0.0.1:$wm"
    wait_role webhooks-1 "http://127.0.0.1:$wm/readyz" ready
    webhooks_job="  - job_name: webhooks
    static_configs: [{targets: [\"127.0.0.1:$wm\"]}]"
  fi

  # HAProxy: the same haproxy.cfg as docker-compose, addresses from the environment.
  # Two fds per client connection (client side, gateway side), within this shell's limit.
  local fds
  fds=$(ulimit -n)
  [ "$fds" = unlimited ] && fds=1048576
  LB_MAXCONN=$((fds / 2 - 100)) LB_BIND="127.0.0.1:$lb" LB_STATS_BIND="127.0.0.1:$lb_stats" \
    GATEWAY_1="127.0.0.1:${gw[0]}" GATEWAY_2="127.0.0.1:${gw[1]}" \
    launch haproxy haproxy -db -f "$root/deploy/haproxy/haproxy.cfg"

  # Prometheus: the jobs of deploy/prometheus/prometheus.yml, on these ports.
  cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: ${SCRAPE_INTERVAL:-2s}
  scrape_timeout: 1s
scrape_configs:
  - job_name: gateway
    static_configs: [{targets: ["127.0.0.1:${gw[0]}", "127.0.0.1:${gw[1]}"]}]
  - job_name: persister
    static_configs: [{targets: ["127.0.0.1:${persister_metrics[0]}", "127.0.0.1:${persister_metrics[1]}"]}]
  - job_name: presence
    static_configs: [{targets: ["127.0.0.1:${presence_metrics[0]}", "127.0.0.1:${presence_metrics[1]}"]}]
  - job_name: haproxy
    static_configs: [{targets: ["127.0.0.1:$lb_stats"]}]
  - job_name: nats
    static_configs: [{targets: ["127.0.0.1:${exporters[0]}", "127.0.0.1:${exporters[1]}", "127.0.0.1:${exporters[2]}"]}]
$webhooks_job
EOF
  launch prometheus prometheus --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/prometheus" --web.listen-address="127.0.0.1:$prom"

  wait_http "http://127.0.0.1:$lb/readyz" 30
  wait_http "http://127.0.0.1:$prom/-/ready" 30
  for i in 0 1; do
    wait_role "presence-$((i + 1))" "http://127.0.0.1:${presence_metrics[$i]}/metrics" chatfabric_presence
  done

  if [ -n "${CHATFABRIC_STACK_TTL:-}" ]; then
    # A bound on the stack's life, should whoever started it never stop it.
    (sleep "$CHATFABRIC_STACK_TTL"; "$0" stop "$dir") >/dev/null 2>&1 </dev/null &
    echo $! >"$dir/watchdog.pid"
  fi

  cat >"$dir/env" <<EOF
STACK_DIR=$dir
LB=127.0.0.1:$lb
LB_STATS=127.0.0.1:$lb_stats
PROMETHEUS=127.0.0.1:$prom
NATS_URLS=$(nats_urls NATS_GATEWAY_USER NATS_GATEWAY_PASSWORD)
NATS_MONITOR_n1=127.0.0.1:${monitors[0]}
NATS_MONITOR_n2=127.0.0.1:${monitors[1]}
NATS_MONITOR_n3=127.0.0.1:${monitors[2]}
NATS_EXPORTER_n1=127.0.0.1:${exporters[0]}
NATS_EXPORTER_n2=127.0.0.1:${exporters[1]}
NATS_EXPORTER_n3=127.0.0.1:${exporters[2]}
GATEWAY_1=127.0.0.1:${gw[0]}
GATEWAY_2=127.0.0.1:${gw[1]}
PERSISTER_1=127.0.0.1:${persister_metrics[0]}
PERSISTER_2=127.0.0.1:${persister_metrics[1]}
PRESENCE_1=127.0.0.1:${presence_metrics[0]}
PRESENCE_2=127.0.0.1:${presence_metrics[1]}
WEBHOOKS_1=127.0.0.1:$wm
PARTITIONS=$partitions
EOF
  cat <<EOF
chatfabric stack is running (stop: $0 stop $dir)
  WebSocket    ws://127.0.0.1:$lb/ws          (HAProxy -> gateway-1, gateway-2)
  SSE          http://127.0.0.1:$lb/v1/events
  HAProxy      http://127.0.0.1:$lb_stats/stats   (metrics: /metrics)
  Prometheus   http://127.0.0.1:$prom
  NATS         $(nats_urls NO_USER NO_PASSWORD)
  NATS metrics http://127.0.0.1:${exporters[0]}/metrics  http://127.0.0.1:${exporters[1]}/metrics  http://127.0.0.1:${exporters[2]}/metrics
  gateways     http://127.0.0.1:${gw[0]}/metrics  http://127.0.0.1:${gw[1]}/metrics
  persisters   http://127.0.0.1:${persister_metrics[0]}/metrics  http://127.0.0.1:${persister_metrics[1]}/metrics
  presence     http://127.0.0.1:${presence_metrics[0]}/metrics  http://127.0.0.1:${presence_metrics[1]}/metrics
  a token      $bin token alice --jwt-secret '$secret'
  logs, data   $dir
EOF
}

# Whether pid $1 runs (a zombie, dead but not yet reaped by init, does not).
running() {
  kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

# Sends SIGNAL to the process NAME of the stack in DIR.
signal_one() {
  local sig=$1 name=$2 pid
  [ -f "$dir/pids/$name" ] || die "no process $name in $dir"
  pid=$(cat "$dir/pids/$name")
  kill "-$sig" "$pid" 2>/dev/null || true
}

stop() {
  local f pid alive
  if [ -f "$dir/watchdog.pid" ]; then
    kill "$(cat "$dir/watchdog.pid")" 2>/dev/null || true
    rm -f "$dir/watchdog.pid"
  fi
  # Clients first (the balancer), then the roles, NATS last: each drains into a live next hop.
  for group in "haproxy prometheus nats-exporter-n1 nats-exporter-n2 nats-exporter-n3" "gateway-1 gateway-2 presence-1 presence-2 persister-1 persister-2 webhooks-1" "n1 n2 n3"; do
    for name in $group; do
      [ -f "$dir/pids/$name" ] && kill -TERM "$(cat "$dir/pids/$name")" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
      alive=0
      for name in $group; do
        [ -f "$dir/pids/$name" ] && running "$(cat "$dir/pids/$name")" && alive=1
      done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    for name in $group; do
      f="$dir/pids/$name"
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$f"
    done
  done
  if [ -f "$dir/ports.lock" ]; then
    rm -rf "$(cat "$dir/ports.lock")"
    rm -f "$dir/ports.lock"
  fi
  echo "chatfabric stack in $dir stopped"
}

case "$cmd" in
  start) start ;;
  stop)
    dir=${2:?usage: run.sh stop DIR}
    stop
    ;;
  kill | term)
    name=${2:?usage: run.sh $cmd NAME DIR}
    dir=${3:?usage: run.sh $cmd NAME DIR}
    signal_one "$([ "$cmd" = kill ] && echo KILL || echo TERM)" "$name"
    ;;
  restart)
    name=${2:?usage: run.sh restart NAME DIR}
    dir=${3:?usage: run.sh restart NAME DIR}
    [ -f "$dir/cmd/$name.sh" ] || die "no process $name in $dir"
    # A process sent SIGTERM may still be draining: give it 30 s to exit.
    if [ -f "$dir/pids/$name" ]; then
      pid=$(cat "$dir/pids/$name")
      for _ in $(seq 1 300); do
        running "$pid" || break
        sleep 0.1
      done
      running "$pid" && die "$name is running"
    fi
    relaunch "$name"
    ;;
  *) die "usage: run.sh start | stop DIR | kill NAME DIR | term NAME DIR | restart NAME DIR" ;;
esac
