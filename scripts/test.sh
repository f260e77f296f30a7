#!/usr/bin/env bash
# The one command that installs what the tests need and runs them (CI runs it through .ci/run):
# Debian packages (.ci/apt-packages), a virtualenv of the clone's own with deploybot[test], a
# private Docker engine (scripts/dockerd.sh), the busybox base image, the HAProxy image, the
# bot's own image and the Kubernetes build (cached), pytest, then the unit tests again with the
# clock ten years ahead. It stops what it started and prints how long each phase took.
#
#   scripts/test.sh                  everything, as CI runs it
#   scripts/test.sh tests/unit -x    the same set-up; these arguments go to the first pytest run
#   scripts/test.sh --dry-run        checks what it needs and says what it would do; changes nothing
#
# Needs: root on Debian 12 or later (apt-get; dockerd runs as root) and kubectl >= 1.21 on PATH;
# python3-venv comes with the packages.
# Settings (environment), defaults for a developer's machine:
#   DEPLOYBOT_DOCKER_DIR / _BRIDGE / _BRIDGE_CIDR / _IPTABLES   the engine (scripts/dockerd.sh);
#       default /tmp/deploybot-test-docker on bridge dbot-test0 172.27.0.1/24, no iptables: apart
#       from the engine a developer runs for themselves (/tmp/deploybot-docker) and from CI's
#   DEPLOYBOT_TEST_STOP_ENGINE   started (default: stop the engine only if this run started it)
#                                | always (CI: also one a crashed earlier run left behind)
#   DEPLOYBOT_TEST_VENV          the virtualenv (default .ci/venv)
set -euo pipefail

cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
export DEBIAN_FRONTEND=noninteractive
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# Its own engine, apart from any engine a developer left running: own state folder, own bridge
# (two engines on docker0 would hand out the same container IPs), and no iptables (all engines
# share the DOCKER* chains; tests publish only on 127.0.0.1, which docker-proxy serves without
# iptables). See scripts/dockerd.sh.
export DEPLOYBOT_DOCKER_DIR=${DEPLOYBOT_DOCKER_DIR:-/tmp/deploybot-test-docker}
export DEPLOYBOT_DOCKER_BRIDGE=${DEPLOYBOT_DOCKER_BRIDGE:-dbot-test0}
export DEPLOYBOT_DOCKER_BRIDGE_CIDR=${DEPLOYBOT_DOCKER_BRIDGE_CIDR:-172.27.0.1/24}
export DEPLOYBOT_DOCKER_IPTABLES=${DEPLOYBOT_DOCKER_IPTABLES:-false}
stop_engine=${DEPLOYBOT_TEST_STOP_ENGINE:-started}
venv=${DEPLOYBOT_TEST_VENV:-.ci/venv}

say() { echo "=== test.sh: $*"; }

# What it needs, said before anything is changed.
needs=()
[ "$(id -u)" = 0 ] || needs+=("root (it installs Debian packages and runs dockerd): sudo $0${*:+ $*}")
command -v apt-get >/dev/null || needs+=("apt-get (Debian or Ubuntu); elsewhere install the packages of .ci/apt-packages and follow README.md, Testing, by hand")
if command -v ip >/dev/null; then  # another bridge on the same network: routes would clash
  net=${DEPLOYBOT_DOCKER_BRIDGE_CIDR%.*}.
  other=$(ip -o -4 addr show | awk -v b="$DEPLOYBOT_DOCKER_BRIDGE" -v n="$net" \
    '$2 != b && index($4, n) == 1 {print $2}' | head -n 1)
  [ -z "$other" ] || needs+=("a network of its own: $other already uses ${net}0/24; set DEPLOYBOT_DOCKER_BRIDGE_CIDR (e.g. 172.26.0.1/24)")
fi
# The test of the bot's own Kubernetes manifests renders them with kubectl's kustomize (`patches`
# needs 1.21 or later); Debian has no kubectl package, so it cannot be installed from here.
kubectl_minor=$(kubectl version --client -o json 2>/dev/null \
  | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n 1 || true)
kubectl_found=${kubectl_minor:+1.$kubectl_minor}
[ "${kubectl_minor:-0}" -ge 21 ] 2>/dev/null || needs+=("kubectl 1.21 or later on PATH (found: ${kubectl_found:-none}): https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/")
case "$stop_engine" in started|always) ;; *) needs+=("DEPLOYBOT_TEST_STOP_ENGINE=started or always, not '$stop_engine'") ;; esac
if [ "${#needs[@]}" -gt 0 ]; then
  echo "test.sh: cannot run here; it needs:" >&2
  printf '  - %s\n' "${needs[@]}" >&2
  exit 2
fi
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' .ci/apt-packages | grep -v '^$')

if [ "$dry" = 1 ]; then
  say "dry run: nothing is changed. It would:"
  echo "  apt          apt-get update; apt-get install -y --no-install-recommends ${packages[*]}"
  echo "  pip          python3 -m venv $venv; pip install -e '.[test]'"
  echo "  docker-start scripts/dockerd.sh start (state $DEPLOYBOT_DOCKER_DIR, bridge $DEPLOYBOT_DOCKER_BRIDGE $DEPLOYBOT_DOCKER_BRIDGE_CIDR, iptables $DEPLOYBOT_DOCKER_IPTABLES)"
  echo "  base-image   scripts/build-base-image.sh"
  echo "  proxy-image  scripts/build-proxy-image.sh"
  echo "  bot-image    scripts/build-image.sh --base debian (cached in /var/cache/deploybot)"
  echo "  k8s-build    scripts/k8s-build.sh (cached in /var/cache/deploybot)"
  echo "  pytest       DEPLOYBOT_REQUIRE_DOCKER=1 python -m pytest $*"
  echo "  future-date  faketime -f +3650d python -m pytest -q -p no:cacheprovider -m 'not realtime' tests/unit"
  echo "  docker-stop  scripts/dockerd.sh stop (stop: $stop_engine)"
  exit 0
fi

timings=()
phase_start=0
phase_name=""
phase_open=0
begin() {
  phase_name=$1
  phase_start=$SECONDS
  phase_open=1
  say "$phase_name"
}
end() {
  local took=$((SECONDS - phase_start))
  phase_open=0
  timings+=("$(printf '%-12s %4ds' "$phase_name" "$took")")
  say "$phase_name took ${took}s"
}

engine_started=0
finish() {
  local rc=$?
  if [ "$phase_open" = 1 ]; then
    say "$phase_name FAILED after $((SECONDS - phase_start))s" >&2
    timings+=("$(printf '%-12s %4ds FAILED' "$phase_name" "$((SECONDS - phase_start))")")
  fi
  if [ "$engine_started" = 1 ]; then
    begin "docker-stop"
    scripts/dockerd.sh stop || rc=1
    end
  fi
  say "timings"
  printf '  %s\n' "${timings[@]}"
  say "exit $rc (total ${SECONDS}s)"
  exit "$rc"
}
trap finish EXIT

begin "apt"
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
end

# A virtualenv of the clone's own: the machine's Python stays as it was, and an editable install
# elsewhere (a developer's tree) cannot shadow the code under test. The README's test command
# `python -m pytest` then runs with this venv's python first on PATH.
begin "pip"
python3 -m venv "$venv"
export PATH="$PWD/$venv/bin:$PATH"
python=python
"$python" -m pip install -q --progress-bar off --upgrade pip
"$python" -m pip install -q --progress-bar off -e '.[test]'
end

begin "docker-start"
engine_pid=$(cat "$DEPLOYBOT_DOCKER_DIR/docker.pid" 2>/dev/null || true)
if [ "$stop_engine" = always ] || ! [[ "$engine_pid" =~ ^[0-9]+$ ]] \
  || [ "$(cat "/proc/$engine_pid/comm" 2>/dev/null)" != dockerd ]; then
  engine_started=1  # from here on, the exit stops it (also when the start fails half-way)
else
  say "the engine in $DEPLOYBOT_DOCKER_DIR runs already (pid $engine_pid): used, and left running"
fi
docker_env=$(scripts/dockerd.sh start)
eval "$docker_env"
echo "DOCKER_HOST=$DOCKER_HOST"
end

begin "base-image"
scripts/build-base-image.sh
end

# deploybot/haproxy:2.6 from the host's haproxy: the proxy container of the run: container tests.
begin "proxy-image"
scripts/build-proxy-image.sh
end

# deploybot:dev from this clone, on a base made from Debian packages (no registry); the base's
# root tarball and the dependencies' wheels are cached in /var/cache/deploybot.
begin "bot-image"
scripts/build-image.sh --base debian
end

# The Kubernetes control plane + kubelet are built from Debian's kubernetes source once and
# cached outside the clone (/var/cache/deploybot); later runs find the cache and take seconds.
begin "k8s-build"
scripts/k8s-build.sh
end

begin "pytest"
export DEPLOYBOT_REQUIRE_DOCKER=1
set +e
"$python" -m pytest "$@"
tests_rc=$?
set -e
end
if [ "$tests_rc" = 5 ]; then
  say "pytest collected no tests: failing the run" >&2
  exit 1
fi
if [ "$tests_rc" != 0 ]; then
  exit "$tests_rc"
fi

# Dates that will come: the unit tests again with the system clock ten years ahead. A test that
# passes today only because of today's date fails here (tests that wait on the real clock on
# purpose are marked `realtime`: libfaketime does not shift timed waits consistently).
begin "future-date"
set +e
faketime -f "+3650d" "$python" -m pytest -q -p no:cacheprovider -m "not realtime" tests/unit
future_rc=$?
set -e
end
exit "$future_rc"
