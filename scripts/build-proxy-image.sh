#!/usr/bin/env bash
# Builds deploybot/haproxy:2.6, the image of the proxy container (`proxy: {run: container}`),
# from the host's Debian haproxy (apt-get install haproxy).
#
# No image can be pulled on these machines (elsewhere `docker pull haproxy:2.6` does as well), so
# the image is a `docker import` of a folder holding /usr/sbin/haproxy, the shared libraries
# `ldd` names for it, and a minimal /etc/passwd and /etc/group. Idempotent: when the image exists
# and carries the label of the same haproxy binary (its sha256), nothing is done. FORCE=1
# rebuilds anyway. Uses DOCKER_HOST like any docker command (see scripts/dockerd.sh).
set -euo pipefail

IMAGE=${DEPLOYBOT_PROXY_IMAGE:-deploybot/haproxy:2.6}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}

if ! [ -x "$HAPROXY" ] || ! "$HAPROXY" -v >/dev/null 2>&1; then
  echo "build-proxy-image.sh: no working haproxy at $HAPROXY (apt-get install haproxy)" >&2
  exit 1
fi
sum=$(sha256sum "$HAPROXY" | cut -d' ' -f1)

if [ "${FORCE:-0}" != 1 ] \
  && [ "$(docker image inspect -f '{{ index .Config.Labels "haproxy.sha256" }}' "$IMAGE" 2>/dev/null)" = "$sum" ]; then
  echo "build-proxy-image.sh: $IMAGE is up to date" >&2
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/sbin" "$root/tmp" "$root/etc" "$root/run"
chmod 1777 "$root/tmp"
cp "$HAPROXY" "$root/usr/sbin/haproxy"
# Every library at the path the loader looks for it (ldd: "name => /path (addr)" or the loader
# itself as "/lib64/ld-linux... (addr)"); cp -L copies the file behind a symlink.
libs=$(ldd "$HAPROXY" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
if [ -z "$libs" ]; then
  echo "build-proxy-image.sh: ldd names no library for $HAPROXY" >&2
  exit 1
fi
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/bin/false\nhaproxy:x:99:99:haproxy:/var/lib/haproxy:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nhaproxy:x:99:\nnogroup:x:65534:\n' >"$root/etc/group"

tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["haproxy", "-v"]' \
  -c "LABEL haproxy.sha256=$sum" \
  -m "haproxy from Debian ($("$HAPROXY" -v | head -n 1 | cut -d' ' -f3))" \
  - "$IMAGE" >/dev/null
echo "build-proxy-image.sh: built $IMAGE" >&2
