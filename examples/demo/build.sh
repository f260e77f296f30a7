#!/usr/bin/env bash
# Builds the demo service image: examples/demo/build.sh VERSION [MODE] [TAG] -> demo-web:TAG
# MODE: healthy (default) | unhealthy | degraded | smoke-broken | slow | log-errors |
# integrity-broken; TAG defaults to VERSION.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
  echo "usage: $0 VERSION [MODE] [TAG]" >&2
  exit 2
fi
version=$1
mode=${2:-healthy}
tag=${3:-$version}
here=$(cd "$(dirname "$0")" && pwd)
docker image inspect deploybot/busybox:latest >/dev/null 2>&1 || "$here/../../scripts/build-base-image.sh"
docker build -q --build-arg "VERSION=$version" --build-arg "MODE=$mode" -t "demo-web:$tag" "$here" >/dev/null
echo "demo-web:$tag"
