#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, from the installed rabbitmq-server, for trying
# resetmail against a cluster and for the failover test (docs/SCALING.md).
#
#   scripts/cluster.sh start        start the three nodes (those not running) and join them
#   scripts/cluster.sh stop         stop every node
#   scripts/cluster.sh status       each node: running or not, its AMQP port; the cluster's members
#   scripts/cluster.sh start-node N start node N (1-3) alone; it rejoins the cluster by itself
#   scripts/cluster.sh kill N       SIGKILL node N, as a crash would
#   scripts/cluster.sh urls         AMQP_URL for the three nodes
#   scripts/cluster.sh ctl N ARGS   rabbitmqctl ARGS on node N, e.g. `ctl 1 list_queues name leader`
#
# Each node has its own name (resetmail-<port>@localhost), AMQP port, distribution port, Erlang
# cookie, data and logs (under RESETMAIL_CLUSTER_DIR), and no plugins, so the machine's own
# RabbitMQ on 5672 keeps running untouched beside it.
#   RESETMAIL_CLUSTER_DIR   where the nodes keep everything (default: target/rabbitmq-cluster)
#   RESETMAIL_CLUSTER_PORT  AMQP port of node 1; nodes 2 and 3 take the next two (default: 5681)
# Needs RabbitMQ 3.10 or later (quorum queues with message TTL and at-least-once dead-lettering).
set -euo pipefail
cd "$(dirname "$0")/.."

RABBIT_BIN=${RABBIT_BIN:-/usr/lib/rabbitmq/bin}
DIR=${RESETMAIL_CLUSTER_DIR:-$PWD/target/rabbitmq-cluster}
BASE_PORT=${RESETMAIL_CLUSTER_PORT:-5681}
NODES=(1 2 3)

log() { printf '[cluster] %s\n' "$*" >&2; }

port() { echo $((BASE_PORT + $1 - 1)); }
node_name() { echo "resetmail-$(port "$1")@localhost"; }
node_dir() { echo "$DIR/node$1"; }
pid_file() { echo "$(node_dir "$1")/rabbit.pid"; }

# The environment of one node, for the server and for the command-line tools alike.
node_env() {
  local n=$1 dir
  dir=$(node_dir "$n")
  export HOME=$DIR # the cluster's own Erlang cookie: $DIR/.erlang.cookie
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(node_name "$n")
  export RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf
  export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
  export RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/enabled_plugins
  export RABBITMQ_MNESIA_BASE=$dir/mnesia
  export RABBITMQ_LOG_BASE=$dir/log
  export RABBITMQ_PID_FILE
  RABBITMQ_PID_FILE=$(pid_file "$n")
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(port "$n")
  export RABBITMQ_DIST_PORT=$((RABBITMQ_NODE_PORT + 20000))
  export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { # node, rabbitmqctl arguments...
  local n=$1; shift
  (node_env "$n"; "$RABBIT_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@")
}

running() { # node
  local pid
  pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

prepare() {
  mkdir -p "$DIR"
  if [ ! -f "$DIR/.erlang.cookie" ]; then
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
  : >"$DIR/rabbitmq-env.conf"
  echo '[].' >"$DIR/enabled_plugins"
  local n dir
  for n in "${NODES[@]}"; do
    dir=$(node_dir "$n")
    mkdir -p "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(port "$n")
loopback_users.guest = true
# A node alone on a small machine: no disk alarm from a full-looking shared disk.
disk_free_limit.absolute = 50MB
EOF
    echo '[].' >"$dir/advanced.config"
  done
}

start_node() { # node
  local n=$1
  if running "$n"; then log "node $n ($(node_name "$n")) is already running"; return 0; fi
  log "starting node $n: $(node_name "$n") on 127.0.0.1:$(port "$n")"
  (node_env "$n"; "$RABBIT_BIN/rabbitmq-server" -detached >>"$(node_dir "$n")/log/startup.log" 2>&1)
  wait_node "$n"
}

wait_node() { # node
  local n=$1
  for _ in $(seq 120); do
    if ctl "$n" await_startup --timeout 5 >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "node $n did not start; see $(node_dir "$n")/log"
  return 1
}

members() { # node: the nodes of its cluster, one per line
  ctl "$1" cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["disk_nodes"]))'
}

join() { # node: joins node 1's cluster unless it is in it already
  local n=$1 first
  first=$(node_name 1)
  if members "$n" | grep -qx "$first"; then return 0; fi
  log "joining node $n to $first"
  ctl "$n" stop_app >/dev/null
  ctl "$n" join_cluster "$first" >/dev/null
  ctl "$n" start_app >/dev/null
}

cmd_start() {
  prepare
  local n
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in 2 3; do join "$n"; done
  log "cluster up: $(members 1 | tr '\n' ' ')"
  cmd_urls
}

cmd_stop() {
  local n pid
  for n in "${NODES[@]}"; do
    if running "$n"; then
      log "stopping node $n"
      pid=$(cat "$(pid_file "$n")")
      ctl "$n" stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$(pid_file "$n")"
  done
}

cmd_status() {
  local n any=
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "node $n: $(node_name "$n") running, AMQP 127.0.0.1:$(port "$n"), pid $(cat "$(pid_file "$n")")"
      any=$n
    else
      echo "node $n: $(node_name "$n") not running"
    fi
  done
  if [ -n "$any" ]; then
    echo "members: $(members "$any" | tr '\n' ' ')"
  fi
}

cmd_kill() { # node
  local n=$1
  running "$n" || { log "node $n is not running"; return 1; }
  local pid
  pid=$(cat "$(pid_file "$n")")
  log "killing node $n ($(node_name "$n")) with SIGKILL"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

cmd_urls() {
  local n urls=()
  for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"); done
  (IFS=,; echo "${urls[*]}")
}

node_arg() {
  case ${1:-} in 1|2|3) echo "$1" ;; *) log "name a node: 1, 2 or 3"; exit 2 ;; esac
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  start-node) n=$(node_arg "${2:-}"); prepare; start_node "$n" ;;
  kill) cmd_kill "$(node_arg "${2:-}")" ;;
  urls) cmd_urls ;;
  ctl) n=$(node_arg "${2:-}"); shift 2; ctl "$n" "$@" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
