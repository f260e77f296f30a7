#!/usr/bin/env bash
# Runs a private Docker registry (Debian's `docker-registry`, distribution v2) on loopback:
#
#   eval "$(scripts/registry.sh start)"   # starts it (or finds it running), exports DEPLOYBOT_REGISTRY
#   scripts/registry.sh env               # prints the export line again
#   scripts/registry.sh stop              # stops it by the PID in its pidfile
#
# Only the `export DEPLOYBOT_REGISTRY=127.0.0.1:PORT` line goes to stdout; progress to stderr.
# Images are pushed as 127.0.0.1:PORT/NAME:TAG; the engine talks plain HTTP to 127.0.0.0/8.
#
# Settings (environment):
#   DEPLOYBOT_REGISTRY_DIR    state folder: config, storage root, pidfile, log
#                             (default /tmp/deploybot-registry)
#   DEPLOYBOT_REGISTRY_PORT   port on 127.0.0.1 (default: one the OS says is free)
#   DEPLOYBOT_REGISTRY_START_TIMEOUT  seconds to wait for /v2/ to answer (default 20)
# Needs: apt-get install docker-registry (listed in .ci/apt-packages).
set -euo pipefail

DIR=${DEPLOYBOT_REGISTRY_DIR:-/tmp/deploybot-registry}
PIDFILE="$DIR/registry.pid"
PORTFILE="$DIR/port"
CONFIG="$DIR/config.yml"
LOG="$DIR/registry.log"
START_TIMEOUT=${DEPLOYBOT_REGISTRY_START_TIMEOUT:-20}

say() { echo "registry.sh: $*" >&2; }

registry_pid() {
  # The PID from the pidfile, if that process is alive and is a docker-registry.
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = docker-registry ] || return 1
  echo "$pid"
}

answers() {
  # GET /v2/ -> HTTP 200 (bash's /dev/tcp: no curl needed)
  local port=$1 reply
  reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && head -n1 <&3" 2>/dev/null) || return 1
  [[ "$reply" == *" 200"* ]]
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

print_env() { echo "export DEPLOYBOT_REGISTRY=127.0.0.1:$(cat "$PORTFILE")"; }

wait_until_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while [ -e "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  [ ! -e "/proc/$pid" ]
}

start() {
  if ! command -v docker-registry >/dev/null; then
    say "docker-registry is not installed (apt-get install docker-registry)"
    exit 1
  fi
  local pid port
  if pid=$(registry_pid) && answers "$(cat "$PORTFILE")"; then
    say "already running (pid $pid) on 127.0.0.1:$(cat "$PORTFILE")"
    print_env
    return 0
  fi
  [ -n "${pid:-}" ] && { say "pid $pid does not answer; stopping it"; stop; }
  port=${DEPLOYBOT_REGISTRY_PORT:-$(free_port)}
  mkdir -p "$DIR/storage"
  cat >"$CONFIG" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
  echo "$port" >"$PORTFILE"
  say "starting docker-registry on 127.0.0.1:$port (log: $LOG)"
  setsid docker-registry serve "$CONFIG" </dev/null >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers "$port"; do
    if [ ! -e "/proc/$pid" ]; then
      say "docker-registry exited during start-up; last lines of $LOG:"
      tail -n 20 "$LOG" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "docker-registry (pid $pid) did not answer within ${START_TIMEOUT}s; stopping it"
      tail -n 20 "$LOG" >&2
      stop
      exit 1
    fi
    sleep 0.1
  done
  say "running (pid $pid) on 127.0.0.1:$port"
  print_env
}

stop() {
  local pid
  if ! pid=$(registry_pid); then
    say "not running (no live docker-registry in $PIDFILE)"
    rm -f "$PIDFILE"
    return 0
  fi
  say "stopping docker-registry pid $pid"
  kill -TERM "$pid"
  if ! wait_until_gone "$pid" 10; then
    say "pid $pid ignored SIGTERM for 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until_gone "$pid" 5 || { say "pid $pid will not exit"; exit 1; }
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) [ -s "$PORTFILE" ] && registry_pid >/dev/null && print_env || { say "not running"; exit 1; } ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
