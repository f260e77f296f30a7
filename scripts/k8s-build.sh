#!/usr/bin/env bash
# Builds a Kubernetes control plane and node (etcd comes from Debian) for the integration tests.
#
#   scripts/k8s-build.sh          # builds once, then only prints the folder of the cached binaries
#   scripts/k8s-build.sh --check  # prints the folder and exits 0 if cached, exits 1 if not; never builds
#
# The binaries come from Debian bookworm's `kubernetes` *source* package (v1.20.2 with vendored
# dependencies), compiled with Debian's golang-1.19 (unpacked with `dpkg -x`, not installed):
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, plus a static `pause` for the
# pod sandbox image. The result is cached outside the repository, in
# $DEPLOYBOT_K8S_CACHE/k8s-<version>-<patchlevel> (default /var/cache/deploybot/...), so only the
# first run pays the build (~5 minutes on 2 cores); later runs print the folder and exit.
#
# Only the folder goes to stdout (last line); progress goes to stderr.
#
# One source change (see /work/shared/LOCAL-SERVICES.md): the Docker shim hard-codes
# `defaultSandboxOOMAdj = -998`; machines that drop CAP_SYS_RESOURCE even for root cannot set a
# negative oom_score_adj, so every pod sandbox would fail. It is set to 0 here.
#
# Needs (see .ci/apt-packages): dpkg-dev (dpkg-source), rsync, make, gcc + libc6-dev (static
# pause), and network access to the Debian archive for the first build (apt-get source/download).
set -euo pipefail

VERSION=1.20.2
# Bump when the build recipe or the patch changes, so a stale cache is not reused.
PATCHLEVEL=p1
CACHE_ROOT=${DEPLOYBOT_K8S_CACHE:-/var/cache/deploybot}
OUT="$CACHE_ROOT/k8s-$VERSION-$PATCHLEVEL"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet pause)
GO_PACKAGES=(golang-1.19-go golang-1.19-src)

say() { echo "k8s-build.sh: $*" >&2; }

complete() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
  [ -f "$OUT/BUILD-INFO" ]
}

if complete; then
  echo "$OUT"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  say "not built yet: $OUT"
  exit 1
fi

mkdir -p "$CACHE_ROOT"
# Two test runs starting at once: the second waits for the first build instead of racing it.
exec 9>"$CACHE_ROOT/.k8s-build.lock"
say "waiting for the build lock $CACHE_ROOT/.k8s-build.lock"
flock 9
if complete; then
  echo "$OUT"
  exit 0
fi

started=$SECONDS
WORK="$CACHE_ROOT/k8s-build-work"
rm -rf "$WORK" "$OUT.tmp"
mkdir -p "$WORK/src" "$WORK/go" "$OUT.tmp"
# apt-get source/download drop privileges to _apt when it can write there; quiet its warning.
chmod 0755 "$CACHE_ROOT"; chmod 0777 "$WORK/src" "$WORK/go"

for tool in dpkg-source rsync make gcc apt-get; do
  command -v "$tool" >/dev/null || { say "missing $tool (see .ci/apt-packages)"; exit 1; }
done

# --- sources: a deb-src line for bookworm, unless one exists already -----------------------------
if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  say "adding a deb-src entry for bookworm (/etc/apt/sources.list.d/deploybot-deb-src.sources)"
  cat >/etc/apt/sources.list.d/deploybot-deb-src.sources <<'EOF'
# Added by deploybot's scripts/k8s-build.sh: Debian's kubernetes source package for the CI build.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
say "apt-get update"
apt-get update -q >&2

say "downloading the kubernetes source package and golang-1.19"
(
  cd "$WORK/src"
  apt-get source -q --download-only kubernetes >&2
  dsc=$(ls ./*.dsc)
  dpkg-source --no-check -x "$dsc" tree >&2
)
TREE="$WORK/src/tree"
[ -d "$TREE/cmd/kube-apiserver" ] || { say "unexpected source layout in $TREE"; exit 1; }
grep -q "really$VERSION\|^Version: $VERSION" "$WORK"/src/*.dsc \
  || say "warning: the source package is not v$VERSION; building what Debian ships"

(
  cd "$WORK/go"
  apt-get download -q "${GO_PACKAGES[@]}" >&2
  for deb in ./*.deb; do dpkg -x "$deb" root; done
)
GOROOT="$WORK/go/root/usr/lib/go-1.19"
[ -x "$GOROOT/bin/go" ] || { say "go not found at $GOROOT/bin/go"; exit 1; }

# --- the one source change -----------------------------------------------------------------------
SANDBOX="$TREE/pkg/kubelet/dockershim/docker_sandbox.go"
sed -i -E 's/(defaultSandboxOOMAdj( +int)? += )-998/\10/' "$SANDBOX"
grep -qE 'defaultSandboxOOMAdj +(int )?= 0' "$SANDBOX" \
  || { say "could not patch defaultSandboxOOMAdj in $SANDBOX"; exit 1; }

# --- build ---------------------------------------------------------------------------------------
# GOPATH mode over the vendored tree: no module proxy, no network, no cgo.
mkdir -p "$WORK/gopath/src/k8s.io"
ln -sfn "$TREE" "$WORK/gopath/src/k8s.io/kubernetes"
cat >"$WORK/version.env" <<EOF
KUBE_GIT_COMMIT=''
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='${VERSION#1.}'
EOF
sed -i "s/^KUBE_GIT_MINOR=.*/KUBE_GIT_MINOR='$(echo "$VERSION" | cut -d. -f2)'/" "$WORK/version.env"

say "building ${BINARIES[*]} (about 5 minutes on 2 cores)"
(
  cd "$WORK/gopath/src/k8s.io/kubernetes"
  export GOROOT GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GO111MODULE=off GOPROXY=off \
    GOFLAGS= CGO_ENABLED=0 KUBE_GIT_VERSION_FILE="$WORK/version.env" \
    PATH="$GOROOT/bin:$PATH"
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet" >&2
)
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  cp "$TREE/_output/local/bin/linux/amd64/$b" "$OUT.tmp/$b"
done
gcc -Os -static -DVERSION="v$VERSION-deploybot" -o "$OUT.tmp/pause" "$TREE/build/pause/linux/pause.c"

took=$((SECONDS - started))
{
  echo "kubernetes v$VERSION from Debian's source package ($(basename "$WORK"/src/*.dsc))"
  echo "go: $("$GOROOT/bin/go" version)"
  echo "patch: defaultSandboxOOMAdj = 0 (pkg/kubelet/dockershim/docker_sandbox.go)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${took}s"
} >"$OUT.tmp/BUILD-INFO"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
rm -rf "$WORK"
say "built in ${took}s: $OUT"
echo "$OUT"
