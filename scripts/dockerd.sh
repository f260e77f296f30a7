#!/usr/bin/env bash
# Runs a private Docker engine for deploybot's tests on its own socket: start | stop | env.
#
#   eval "$(scripts/dockerd.sh start)"   # starts it (or finds it running) and exports DOCKER_HOST
#   scripts/dockerd.sh env               # prints the export line again
#   scripts/dockerd.sh stop              # removes its containers, stops it by the PID in its pidfile
#
# Only the `export DOCKER_HOST=...` line goes to stdout; progress goes to stderr.
#
# Settings (environment):
#   DEPLOYBOT_DOCKER_DIR          state folder: socket, data, exec root, pidfile, log
#                                 (default /tmp/deploybot-docker). Keep it short: the engine puts
#                                 unix sockets under the exec root and those paths must stay under
#                                 ~108 bytes.
#   DEPLOYBOT_DOCKER_BRIDGE       name of a bridge of this engine's own (<= 15 chars), created here
#   DEPLOYBOT_DOCKER_BRIDGE_CIDR  gateway address/prefix of that bridge, e.g. 172.28.0.1/24
#   DEPLOYBOT_DOCKER_IPTABLES     true (default) | false
#   DEPLOYBOT_DOCKER_START_TIMEOUT  seconds to wait for the engine to answer (default 60)
#
# Why a second engine needs its own bridge: without --bridge every engine adopts `docker0` and
# hands out addresses from its subnet, so two engines would give two containers the same IP.
# With DEPLOYBOT_DOCKER_BRIDGE set, this script creates that bridge with the given address and
# passes --bridge (dockerd refuses --bridge together with --bip; it takes the address from the
# bridge). A second engine should also run with DEPLOYBOT_DOCKER_IPTABLES=false: all engines on a
# machine share the DOCKER* iptables chains, and an engine starting or stopping rewrites them.
# Never give an engine --default-address-pool: dockerd 20.10, when it starts again on a data root
# that already has its default network, then deletes the interface named docker0 whatever
# --bridge says (removeDefaultBridgeInterface), cutting off every container of the engine that
# owns docker0 (seen here). Without it, engines choose subnets for user-defined networks that no
# host route uses yet, so two engines do not collide.
# Publishing on 127.0.0.1 does not need iptables at all: local connections to 127.0.0.1:PORT go
# to docker-proxy (the userland proxy, on by default), which forwards to the container.
set -euo pipefail

DIR=${DEPLOYBOT_DOCKER_DIR:-/tmp/deploybot-docker}
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/docker.pid"
LOG="$DIR/dockerd.log"
EXEC_ROOT="$DIR/exec"
HOST="unix://$SOCK"
BRIDGE=${DEPLOYBOT_DOCKER_BRIDGE:-}
BRIDGE_CIDR=${DEPLOYBOT_DOCKER_BRIDGE_CIDR:-}
IPTABLES=${DEPLOYBOT_DOCKER_IPTABLES:-true}
START_TIMEOUT=${DEPLOYBOT_DOCKER_START_TIMEOUT:-60}
BRIDGE_MARK="$DIR/bridge-created-here"

say() { echo "dockerd.sh: $*" >&2; }

engine_pid() {
  # The PID from the pidfile, if that process is alive and is a dockerd.
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
  echo "$pid"
}

answers() { docker -H "$HOST" version >/dev/null 2>&1; }

print_env() { echo "export DOCKER_HOST=$HOST"; }

wait_until_gone() {
  # wait_until_gone PID SECONDS -> 0 once the process has exited
  local pid=$1 deadline=$((SECONDS + $2))
  while [ -e "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  [ ! -e "/proc/$pid" ]
}

make_bridge() {
  [ -n "$BRIDGE" ] || return 0
  if [ -z "$BRIDGE_CIDR" ]; then
    say "DEPLOYBOT_DOCKER_BRIDGE=$BRIDGE needs DEPLOYBOT_DOCKER_BRIDGE_CIDR (e.g. 172.28.0.1/24)"
    exit 2
  fi
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add name "$BRIDGE" type bridge
    touch "$BRIDGE_MARK"
  fi
  # A fixed MAC (as dockerd gives docker0): else the bridge takes its lowest port's, which changes
  # when that container goes, and the others' ARP entry for the gateway goes stale for seconds:
  # requests through a published port hang right after another container is removed.
  local mac
  mac=$(printf '%s' "$BRIDGE" | sha256sum | sed -E 's/^(..)(..)(..)(..)(..).*/02:\1:\2:\3:\4:\5/')
  ip link set dev "$BRIDGE" address "$mac"
  ip addr replace "$BRIDGE_CIDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

remove_bridge() {
  if [ -e "$BRIDGE_MARK" ] && [ -n "$BRIDGE" ]; then
    ip link del "$BRIDGE" 2>/dev/null || true
  fi
  rm -f "$BRIDGE_MARK"
}

start() {
  if engine_pid >/dev/null && answers; then
    say "already running (pid $(engine_pid)) on $SOCK"
    print_env
    return 0
  fi
  if pid=$(engine_pid); then
    say "dockerd pid $pid exists but does not answer; waiting for it"
  else
    if [ ${#EXEC_ROOT} -gt 60 ]; then
      say "DEPLOYBOT_DOCKER_DIR=$DIR is too long (unix socket paths under it would pass 108 bytes)"
      exit 2
    fi
    mkdir -p "$DIR" "$DIR/data" "$EXEC_ROOT"
    rm -f "$PIDFILE" "$SOCK"
    make_bridge
    local args=(
      --host "$HOST"
      --data-root "$DIR/data"
      --exec-root "$EXEC_ROOT"
      --pidfile "$PIDFILE"
      --iptables="$IPTABLES"
    )
    [ -n "$BRIDGE" ] && args+=(--bridge "$BRIDGE")
    say "starting dockerd (log: $LOG)"
    # setsid: the engine must outlive the shell (and its process group) that started it.
    setsid dockerd "${args[@]}" </dev/null >>"$LOG" 2>&1 &
    pid=$!
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    if [ ! -e "/proc/$pid" ]; then
      say "dockerd exited during start-up; last lines of $LOG:"
      tail -n 20 "$LOG" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "dockerd (pid $pid) did not answer within ${START_TIMEOUT}s; last lines of $LOG:"
      tail -n 20 "$LOG" >&2
      exit 1
    fi
    sleep 0.3
  done
  say "running (pid $pid) on $SOCK"
  print_env
}

stop() {
  local pid
  if ! pid=$(engine_pid); then
    say "not running (no live dockerd in $PIDFILE)"
    remove_bridge
    return 0
  fi
  if answers; then
    local ids
    ids=$(docker -H "$HOST" ps -aq)
    if [ -n "$ids" ]; then
      say "removing $(echo "$ids" | wc -l) leftover container(s)"
      # shellcheck disable=SC2086  # one id per word
      docker -H "$HOST" rm -f $ids >/dev/null || true
    fi
  fi
  # dockerd's managed containerd: remembered before the engine goes, in case it must be killed.
  local ctr_pid=""
  [ -s "$EXEC_ROOT/containerd/containerd.pid" ] && ctr_pid=$(cat "$EXEC_ROOT/containerd/containerd.pid")
  say "stopping dockerd pid $pid"
  kill -TERM "$pid"
  if ! wait_until_gone "$pid" 30; then
    say "dockerd pid $pid ignored SIGTERM for 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until_gone "$pid" 10 || { say "dockerd pid $pid will not exit"; exit 1; }
  fi
  if [[ "$ctr_pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$ctr_pid/comm" 2>/dev/null)" = containerd ]; then
    kill -TERM "$ctr_pid" 2>/dev/null || true
    wait_until_gone "$ctr_pid" 10 || kill -KILL "$ctr_pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE" "$SOCK"
  remove_bridge
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env)
    engine_pid >/dev/null || say "warning: no engine is running in $DIR (run: $0 start)"
    print_env
    ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
