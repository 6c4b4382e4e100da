#!/usr/bin/env bash
# Build Kubernetes' own apiextensions-apiserver and fetch etcd, offline-friendly and cached.
#
# Why this exists: the `apiserver` test tier needs a *real* API server to prove that our CRD's
# OpenAPI schema, CEL rules, defaults and printer columns behave as Kubernetes enforces them.
# No container runtime or kind cluster is available, and no Go module proxy is reachable, but
# Debian unstable packages the Go sources of k8s.io/apiextensions-apiserver and every one of its
# dependencies as `golang-*-dev` debs (a ready GOPATH under /usr/share/gocode), plus a Go
# toolchain and etcd. So we:
#   1. point apt at Debian unstable through a *private* apt configuration (lists, cache and
#      sources live under the tools dir; the system's apt state is untouched),
#   2. resolve the transitive golang-* Depends and `apt-get download` them with the toolchain
#      and etcd-server,
#   3. `dpkg -x` every deb into a private root (no dpkg database, no root-owned changes),
#   4. build in GOPATH mode with the private GOROOT and GOPATH.
#
# Idempotent: when both binaries already exist, it does nothing. Set FTJ_FORCE=1 to rebuild.
#
# Output: $FTJ_TOOLS/bin/apiextensions-apiserver and $FTJ_TOOLS/bin/etcd
#         (FTJ_TOOLS defaults to $HOME/.cache/finetune-tools).
set -euo pipefail

TOOLS="${FTJ_TOOLS:-$HOME/.cache/finetune-tools}"
BIN="$TOOLS/bin"
ROOT="$TOOLS/root"
APT_DIR="$TOOLS/apt"
DEBS="$TOOLS/debs"
GO_VERSION="1.27"
MAIN_PACKAGE="golang-k8s-apiextensions-apiserver-dev"
MIRROR="${FTJ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"

log() { echo "[install-apiserver] $*"; }
die() { echo "[install-apiserver] ERROR: $*" >&2; exit 1; }
trap 'die "failed at line $LINENO (command: $BASH_COMMAND)"' ERR

if [[ -z "${FTJ_FORCE:-}" && -x "$BIN/apiextensions-apiserver" && -x "$BIN/etcd" ]]; then
    log "already installed: $BIN/apiextensions-apiserver and $BIN/etcd (FTJ_FORCE=1 rebuilds)"
    exit 0
fi

for tool in apt-get apt-cache dpkg; do
    command -v "$tool" >/dev/null || die "'$tool' not found: this script needs a Debian-like system"
done
[[ -r "$KEYRING" ]] || die "Debian archive keyring missing at $KEYRING (apt-get install debian-archive-keyring)"

mkdir -p "$BIN" "$ROOT" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$DEBS"

# --- 1. private apt configuration ----------------------------------------------------------
# Every path apt would read or write is redirected into $APT_DIR; the dpkg status is /dev/null
# so apt never consults (or changes) what the host has installed.
cat > "$APT_DIR/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR unstable main
EOF
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
    -o "Dir::Etc::sourceparts=/nonexistent"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "APT::Architecture=amd64"
    -o "Debug::NoLocking=1"
)

log "updating private apt lists for Debian unstable ($MIRROR) in $APT_DIR"
apt-get "${APT_OPTS[@]}" -q update >"$APT_DIR/update.log" 2>&1 \
    || { cat "$APT_DIR/update.log" >&2; die "apt-get update of Debian unstable failed (network? mirror?)"; }

# --- 2. resolve and download ----------------------------------------------------------------
# `apt-cache depends --recurse` walks the whole closure (libc and friends too); we keep only
# the golang-*-dev source packages, which are what GOPATH mode needs. Alternatives and virtual
# packages are listed with all their providers, so we may fetch a few extra sources: harmless.
log "resolving Go source dependencies of $MAIN_PACKAGE"
mapfile -t GO_DEVS < <(
    apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances "$MAIN_PACKAGE" \
        | grep -E '^golang-[^ ]*-dev$' | sort -u
)
(( ${#GO_DEVS[@]} > 0 )) || die "could not resolve dependencies of $MAIN_PACKAGE"
PACKAGES=("${GO_DEVS[@]}" "golang-$GO_VERSION-go" "golang-$GO_VERSION-src" etcd-server)
printf '%s\n' "${PACKAGES[@]}" > "$TOOLS/packages.txt"
log "downloading ${#PACKAGES[@]} packages into $DEBS (list: $TOOLS/packages.txt)"
rm -f "$DEBS"/*.deb
(cd "$DEBS" && apt-get "${APT_OPTS[@]}" -q download "${PACKAGES[@]}" >"$APT_DIR/download.log" 2>&1) \
    || { tail -n 20 "$APT_DIR/download.log" >&2; die "apt-get download failed"; }

# --- 3. unpack into the private root --------------------------------------------------------
log "unpacking debs into $ROOT"
rm -rf "$ROOT" && mkdir -p "$ROOT"
for deb in "$DEBS"/*.deb; do
    dpkg -x "$deb" "$ROOT" || die "dpkg -x failed for $deb"
done

GOROOT_DIR="$ROOT/usr/lib/go-$GO_VERSION"
GOPATH_DIR="$ROOT/usr/share/gocode"
[[ -x "$GOROOT_DIR/bin/go" ]] || die "Go toolchain not found at $GOROOT_DIR/bin/go after unpacking"
[[ -d "$GOPATH_DIR/src/k8s.io/apiextensions-apiserver" ]] \
    || die "k8s.io/apiextensions-apiserver sources not found under $GOPATH_DIR/src"

# --- 4. build -------------------------------------------------------------------------------
# GOPATH mode (GO111MODULE=off) resolves imports from /usr/share/gocode/src exactly as Debian
# builds its own packages; GOPROXY=off and GOTOOLCHAIN=local guarantee nothing is fetched.
# The debs' GOROOT symlinks point at /usr/share/go-1.27 (absolute), so we rewrite them to the
# private root. CGO is off: the server needs no C, and a static binary survives host changes.
for link in "$GOROOT_DIR"/*; do
    if [[ -L "$link" ]]; then
        target="$(readlink "$link")"
        if [[ "$target" == /* ]]; then
            ln -sfn "$ROOT$target" "$link"
        fi
    fi
done

log "building k8s.io/apiextensions-apiserver with Go $("$GOROOT_DIR/bin/go" env GOVERSION 2>/dev/null || echo "$GO_VERSION") (a few minutes)"
start=$(date +%s)
BUILD_TMP="$(mktemp -d)"
(
    cd "$BUILD_TMP"
    env GO111MODULE=off GOPROXY=off GOFLAGS= GOTOOLCHAIN=local GOTELEMETRY=off CGO_ENABLED=0 \
        GOROOT="$GOROOT_DIR" GOPATH="$GOPATH_DIR" GOCACHE="$TOOLS/go-build-cache" \
        "$GOROOT_DIR/bin/go" build -trimpath -o "$BUILD_TMP/apiextensions-apiserver" k8s.io/apiextensions-apiserver
) || die "go build of k8s.io/apiextensions-apiserver failed (see output above)"
mv "$BUILD_TMP/apiextensions-apiserver" "$BIN/apiextensions-apiserver.tmp"
mv "$BIN/apiextensions-apiserver.tmp" "$BIN/apiextensions-apiserver"
rm -rf "$BUILD_TMP"
log "built in $(( $(date +%s) - start ))s: $BIN/apiextensions-apiserver"

ETCD_SRC="$ROOT/usr/bin/etcd"
[[ -x "$ETCD_SRC" ]] || die "etcd binary not found at $ETCD_SRC after unpacking etcd-server"
install -m 0755 "$ETCD_SRC" "$BIN/etcd"
log "installed $BIN/etcd ($("$BIN/etcd" --version | head -n 1))"
log "done"
