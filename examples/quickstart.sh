#!/usr/bin/env bash
# Prepares the quick start in the current directory: demo images, a deploybot.yaml and three
# tickets on the embedded tracker. Then: `deploybot deploy DEMO-1`.
#
#   DEMO-1  web@v1, ready, approved      -> a first deployment
#   DEMO-2  web@v2, ready, approved      -> an upgrade with Previous Version v1
#   DEMO-3  web@v3, whose /health fails  -> an automatic rollback to v2
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

if ! command -v docker >/dev/null; then
  echo "quickstart: the docker command is missing (Debian/Ubuntu: apt-get install docker.io)" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "quickstart: no Docker engine answers at ${DOCKER_HOST:-/var/run/docker.sock}." >&2
  echo "  Start one (systemctl start docker), or run a private one as root:" >&2
  echo "    eval \"\$($root/scripts/dockerd.sh start)\"" >&2
  exit 1
fi
if ! command -v deploybot >/dev/null; then
  echo "quickstart: deploybot is not installed: pip install -e $root" >&2
  exit 1
fi

# The demo images build on a busybox base: from Debian's busybox-static when present,
# otherwise from the busybox image of a registry the engine can pull from.
if ! docker image inspect deploybot/busybox:latest >/dev/null 2>&1; then
  if [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd; then
    "$root/scripts/build-base-image.sh"
  elif docker pull busybox:stable-musl >/dev/null; then
    docker tag busybox:stable-musl deploybot/busybox:latest
  else
    echo "quickstart: no busybox base: apt-get install busybox-static, then run me again" >&2
    exit 1
  fi
fi
build() {  # quiet unless it fails (the engine warns about its legacy builder on every build)
  local out
  out=$("$here/demo/build.sh" "$@" 2>&1) || { echo "$out" >&2; exit 1; }
}
build v1
build v2
build v3 unhealthy
echo "built demo-web:v1, demo-web:v2 and demo-web:v3 (unhealthy)"

if [ ! -e deploybot.yaml ]; then
  cp "$here/deploybot.yaml" deploybot.yaml
  echo "wrote ./deploybot.yaml (from examples/deploybot.yaml)"
fi

ticket() {  # title version
  local id
  id=$(deploybot ticket create "$1" --status "Ready for Production")
  deploybot ticket comment "$id" --by bob "CQ approved" >/dev/null
  deploybot ticket comment "$id" --by carol "QA PASS on staging" >/dev/null
  deploybot ticket comment "$id" --by alice "deploy: web@$2" >/dev/null
  echo "$id: $1 (web@$2)"
}
ticket "Launch the demo web service" v1
ticket "Greeting endpoint" v2
ticket "New cache layer" v3
echo
echo "Next: deploybot deploy DEMO-1 --as alice"
