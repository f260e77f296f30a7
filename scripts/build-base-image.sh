#!/usr/bin/env bash
# Builds deploybot/busybox:latest, the base of every test image, from Debian's busybox-static.
#
# No image can be pulled on these machines, so the base is a `docker import` of a folder holding
# /bin/busybox and its applet symlinks. Idempotent: when the image exists and carries the label of
# the same busybox binary (its sha256), nothing is done. Set FORCE=1 to rebuild anyway.
# Uses DOCKER_HOST like any docker command (see scripts/dockerd.sh).
set -euo pipefail

IMAGE=${DEPLOYBOT_BASE_IMAGE:-deploybot/busybox:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
APPLETS=(sh ash httpd wget sleep cat echo printf date ls mkdir rm cp mv ln env grep sed awk
  head tail wc tr cut sort uniq test "[" true false kill ps id hostname nc nslookup
  touch chmod find xargs basename dirname seq expr uname whoami tee du df)

if ! "$BUSYBOX" --list 2>/dev/null | grep -x httpd >/dev/null; then
  echo "build-base-image.sh: $BUSYBOX is not a static busybox with httpd (apt-get install busybox-static)" >&2
  exit 1
fi
sum=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)

if [ "${FORCE:-0}" != 1 ] \
  && [ "$(docker image inspect -f '{{ index .Config.Labels "busybox.sha256" }}' "$IMAGE" 2>/dev/null)" = "$sum" ]; then
  echo "build-base-image.sh: $IMAGE is up to date" >&2
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www"
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in "${APPLETS[@]}"; do
  ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/bin' \
  -c 'CMD ["/bin/sh"]' \
  -c "LABEL busybox.sha256=$sum" \
  -m "busybox-static from Debian" \
  - "$IMAGE" >/dev/null
echo "build-base-image.sh: built $IMAGE" >&2
