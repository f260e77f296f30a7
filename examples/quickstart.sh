#!/usr/bin/env bash
# The quick start in the current directory: `deploybot demo --dir .` (handlers/demo.py) finds or
# starts a Docker engine, builds the demo images, writes deploybot.yaml and the tickets DEMO-1..3,
# deploys DEMO-1 and says what to try next. Arguments are passed on (deploybot demo --help).
# `examples/quickstart.sh --proxy`: the same behind HAProxy, zero-downtime deploys
# (examples/deploybot-proxy.yaml; the proxy's files in ./proxy).
command -v deploybot >/dev/null || { echo "quickstart: pip install -e $(cd "$(dirname "$0")/.." && pwd) first" >&2; exit 1; }
exec deploybot demo --dir . "$@"
