#!/usr/bin/env bash
# Builds deploybot's own image from the working tree (Dockerfile at the repo root) on $DOCKER_HOST.
#
#   scripts/build-image.sh [--base debian|python] [--bootstrap mmdebstrap|debootstrap] [--tag deploybot:dev]
#   scripts/build-image.sh [--base ...] --print-hash   # only print the source hash the image would carry
#
# --base python (default): FROM python:3.11-slim-bookworm, which the engine pulls from its registry.
# --base debian (CI, no registry at all): FROM deploybot/debian-python:bookworm, made here from Debian
#   packages (python3 python3-venv ca-certificates) by mmdebstrap (default) or debootstrap and
#   `docker import`ed. The root tarball is cached outside the clone, in $DEPLOYBOT_IMAGE_CACHE
#   (default /var/cache/deploybot), so only the first run pays for it (~1 minute); delete it to take
#   newer Debian packages.
# The project and all its dependencies are built as wheels on the host (`pip wheel`; the
# dependencies are cached per pyproject.toml) and installed in the image with --no-index.
#
# Idempotent: the image carries the label io.deploybot.source-hash (sources, Dockerfile, this
# script, base); when the tagged image already has the hash of the tree, nothing is built. FORCE=1
# rebuilds anyway. Progress goes to stderr, the image size and the build time at the end; the tag
# is the last line on stdout.
# Needs: docker, a Python 3.11 with pip ($DEPLOYBOT_PYTHON, default python3), and for --base debian
# mmdebstrap or debootstrap (see .ci/apt-packages), run as root.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=python
BOOTSTRAP=mmdebstrap
TAG=deploybot:dev
PRINT_HASH=0
PYTHON=${DEPLOYBOT_PYTHON:-python3}
CACHE_ROOT=${DEPLOYBOT_IMAGE_CACHE:-/var/cache/deploybot}
MIRROR=${DEPLOYBOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEPLOYBOT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
DEBIAN_BASE=deploybot/debian-python:$SUITE
PYTHON_BASE=python:3.11-slim-bookworm
# passwd: the Dockerfile's groupadd/useradd (the essential variant has no Priority: required).
DEBIAN_PACKAGES=python3,python3-venv,ca-certificates,passwd
# Bump when the base recipe changes, so a stale cached tarball is not reused.
BASE_RECIPE=r2
# Docs, man pages and translations are of no use in a container (copyright files are kept), nor
# glibc's iconv modules (Python brings its own codecs).
DPKG_EXCLUDES=('/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'
               '/usr/lib/x86_64-linux-gnu/gconv/*')

say() { echo "build-image.sh: $*" >&2; }
die() { say "$*"; exit 1; }
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    --base) BASE=${2:-}; shift 2 || usage ;;
    --bootstrap) BOOTSTRAP=${2:-}; shift 2 || usage ;;
    --tag) TAG=${2:-}; shift 2 || usage ;;
    --print-hash) PRINT_HASH=1; shift ;;
    -h|--help) usage ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done
case $BASE in debian|python) ;; *) die "--base must be debian or python, not '$BASE'" ;; esac
case $BOOTSTRAP in mmdebstrap|debootstrap) ;; *) die "--bootstrap must be mmdebstrap or debootstrap" ;; esac
[ -n "$TAG" ] || die "--tag needs a name"

# The recipe of the Debian base: what changes it changes the cached tarball's name and label.
base_key() {
  printf '%s\n' "$SUITE" "$DEBIAN_PACKAGES" "$BOOTSTRAP" "$BASE_RECIPE" "$MIRROR" "${DPKG_EXCLUDES[@]}" \
    | sha256sum | cut -c1-16
}
base_image() { if [ "$BASE" = debian ]; then echo "$DEBIAN_BASE"; else echo "$PYTHON_BASE"; fi; }

# Copies what the wheel is built from into $1: pyproject, README (the wheel's description), LICENSE
# and the packages' .py files (setuptools takes nothing else) -- never a stale build/ folder.
stage_sources() {
  local dest=$1
  local items=(pyproject.toml README.md bot handlers backends) f
  for f in "$REPO"/LICENSE*; do [ -e "$f" ] && items+=("$(basename "$f")"); done
  mkdir -p "$dest"
  (
    cd "$REPO"
    find "${items[@]}" -name __pycache__ -prune -o \
      -type f \( -name '*.py' -o -path pyproject.toml -o -path README.md -o -path 'LICENSE*' \) -print0 \
      | tar --null -T - -cf -
  ) | tar -C "$dest" -xf -
  [ -f "$dest/pyproject.toml" ] || die "could not stage the sources of $REPO"
}

source_hash() {
  local staged=$1
  {
    (cd "$staged" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    sha256sum "$REPO/Dockerfile" "$REPO/.dockerignore" "$0" | cut -d' ' -f1
    echo "base=$(base_image)"
    if [ "$BASE" = debian ]; then echo "base-key=$(base_key)"; fi
  } | sha256sum | cut -c1-32
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage_sources "$work/src"
hash=$(source_hash "$work/src")
if [ "$PRINT_HASH" = 1 ]; then
  echo "$hash"
  exit 0
fi

command -v docker >/dev/null || die "docker is not installed"
timeout 30 docker version >/dev/null 2>&1 \
  || die "no Docker engine answers at ${DOCKER_HOST:-the default socket} (eval \"\$(scripts/dockerd.sh start)\")"
current=$(docker image inspect -f '{{ index .Config.Labels "io.deploybot.source-hash" }}' "$TAG" 2>/dev/null || true)
if [ "${FORCE:-0}" != 1 ] && [ "$current" = "$hash" ]; then
  say "$TAG is up to date (source hash $hash)"
  echo "$TAG"
  exit 0
fi

started=$SECONDS

# -- the Debian base ------------------------------------------------------------------------------
debian_base() {
  local key tarball root
  key=$(base_key)
  if [ "$(docker image inspect -f '{{ index .Config.Labels "io.deploybot.base-key" }}' "$DEBIAN_BASE" 2>/dev/null || true)" = "$key" ]; then
    say "$DEBIAN_BASE is up to date"
    return
  fi
  [ "$(id -u)" = 0 ] || die "--base debian builds its root filesystem as root (sudo)"
  mkdir -p "$CACHE_ROOT"
  tarball="$CACHE_ROOT/debian-python-$SUITE-$BOOTSTRAP-$key.tar"
  # Two builds at once: the second waits for the first instead of bootstrapping twice.
  exec 8>"$CACHE_ROOT/.debian-python.lock"
  flock 8
  if [ ! -s "$tarball" ]; then
    command -v "$BOOTSTRAP" >/dev/null || die "$BOOTSTRAP is not installed (apt-get install $BOOTSTRAP)"
    say "bootstrapping Debian $SUITE with $BOOTSTRAP ($DEBIAN_PACKAGES), once: cached in $tarball"
    rm -f "$tarball.tmp"
    if [ "$BOOTSTRAP" = mmdebstrap ]; then
      # essential + the packages: no apt, e2fsprogs, mount... in an image that never installs
      local opts=(--variant=essential "--include=$DEBIAN_PACKAGES" --format=tar
                  # merged /usr the way debootstrap does it, without the usrmerge package (and perl)
                  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
                  '--aptopt=APT::Install-Recommends "false"')
      local p
      for p in "${DPKG_EXCLUDES[@]}"; do opts+=("--dpkgopt=path-exclude=$p"); done
      opts+=('--dpkgopt=path-include=/usr/share/doc/*/copyright')
      timeout 1200 mmdebstrap "${opts[@]}" "$SUITE" "$tarball.tmp" \
        "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY_MIRROR $SUITE-security main" </dev/null >&2 \
        || { rm -f "$tarball.tmp"; die "mmdebstrap failed (see above)"; }
    else
      root="$work/rootfs"
      timeout 1200 debootstrap --variant=minbase --merged-usr "--include=$DEBIAN_PACKAGES" \
        "$SUITE" "$root" "$MIRROR" </dev/null >&2 || die "debootstrap failed (see above)"
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
      local p
      # debootstrap has no path-exclude: the same patterns, expanded inside the root.
      for p in "${DPKG_EXCLUDES[@]}"; do rm -rf -- "$root"$p; done
      tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    fi
    mv "$tarball.tmp" "$tarball"
    # Older recipes' tarballs of this bootstrap are of no use any more.
    find "$CACHE_ROOT" -maxdepth 1 -name "debian-python-$SUITE-$BOOTSTRAP-*.tar" ! -path "$tarball" -delete
  fi
  say "importing $tarball as $DEBIAN_BASE"
  timeout 600 docker import \
    -c "LABEL io.deploybot.base-key=$key" \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["/bin/bash"]' \
    -m "Debian $SUITE minbase + $DEBIAN_PACKAGES ($BOOTSTRAP)" \
    "$tarball" "$DEBIAN_BASE" >/dev/null
  flock -u 8
}

# -- wheels: the dependencies (cached per pyproject.toml and Python) and the project --------------
wheels() {
  local out=$1 key deps
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not Python 3.11: the wheels must match the image's Python (set DEPLOYBOT_PYTHON)"
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"
  key=$(cat "$work/src/pyproject.toml" <("$PYTHON" -c 'import sys, sysconfig; print(sys.version_info[:2], sysconfig.get_platform())') \
    | sha256sum | cut -c1-16)
  deps="$CACHE_ROOT/image-wheels-$key"
  mkdir -p "$CACHE_ROOT"
  if [ ! -d "$deps" ]; then
    say "building the dependencies' wheels once: cached in $deps"
    rm -rf "$deps.tmp"
    timeout 1200 "$PYTHON" -m pip wheel -q --disable-pip-version-check --timeout 60 \
      -w "$deps.tmp" "$work/src" >&2 || die "pip wheel of the dependencies failed"
    rm -f "$deps.tmp"/deploybot-*.whl
    mv "$deps.tmp" "$deps"
  fi
  rm -rf "$out"
  mkdir -p "$out/deps" "$out/app"
  # -p: the same files with the same times, so the engine's layer cache takes them as unchanged.
  cp -p "$deps"/*.whl "$out/deps/"
  say "building the deploybot wheel"
  timeout 600 "$PYTHON" -m pip wheel -q --disable-pip-version-check --timeout 60 --no-deps \
    -w "$out/app" "$work/src" >&2 || die "pip wheel of deploybot failed"
}

if [ "$BASE" = debian ]; then debian_base; fi

mkdir -p "$REPO/build/image"
# One build per tree at a time: the wheels folder is the build context.
exec 9>"$REPO/build/image/.lock"
flock 9
wheels "$REPO/build/image/wheels"

old_id=$(docker image inspect -f '{{ .Id }}' "$TAG" 2>/dev/null || true)
say "docker build $TAG FROM $(base_image)"
# The classic builder: engines here have no buildx, and it needs nothing from a registry.
DOCKER_BUILDKIT=0 timeout 1200 docker build \
  --build-arg "BASE_IMAGE=$(base_image)" --build-arg "SOURCE_HASH=$hash" \
  --label "io.deploybot.source-hash=$hash" \
  --label "org.opencontainers.image.title=deploybot" \
  --label "org.opencontainers.image.source-base=$(base_image)" \
  -f "$REPO/Dockerfile" -t "$TAG" "$REPO" >&2 || die "docker build failed (see above)"
new_id=$(docker image inspect -f '{{ .Id }}' "$TAG")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  # The previous build, now untagged; kept if a container still uses it.
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi
# Older build stages (labelled in the Dockerfile); this one stays as the next build's cache.
timeout 120 docker image prune -f --filter label=io.deploybot.stage=build \
  --filter "label!=io.deploybot.build-of=$hash" >/dev/null || true

size=$(docker image inspect -f '{{ .Size }}' "$TAG")
say "built $TAG (source hash $hash): $((size / 1000000)) MB (goal < 200 MB) in $((SECONDS - started)) s"
echo "$TAG"
