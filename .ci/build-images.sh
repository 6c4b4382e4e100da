#!/usr/bin/env bash
# Build both images from this checkout: the operator and the trainer.
#
#   bash .ci/build-images.sh            # both (the image tier and CI use this)
#   bash .ci/build-images.sh trainer    # one of: operator, trainer
#
# Tags: ghcr.io/finetune-dev/finetune-{operator,trainer}:<pyproject version> (the chart's
# defaults; tests/unit/test_images.py keeps every place that names them equal).
#
# Builder: buildah (rootless-friendly, no daemon; `--isolation chroot` works inside
# unprivileged sandboxes) or, where buildah is missing, docker. Both Dockerfiles start
# FROM debian:trixie-slim. Where no registry can be reached, the base is recreated from
# Debian's archive with mmdebstrap and stored under the same name, so the Dockerfiles are the
# ones a normal `docker build` uses.
#
# Environment:
#   FTJ_BUILD_CA      CA bundle pip needs inside RUN steps (networks that re-sign TLS); mounted
#                     read-only for the build, never copied into an image. Default: pip's own
#                     `cert` setting on this host, if any.
#   FTJ_BASE_IMAGE    base image name (default debian:trixie-slim)
#   FTJ_NO_CACHE=1    rebuild every layer (a cold build)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[build-images] $*"; }
die() { echo "[build-images] ERROR: $*" >&2; exit 1; }

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
[[ -n "$VERSION" ]] || die "no version in pyproject.toml"
REGISTRY="ghcr.io/finetune-dev"
OPERATOR_IMAGE="$REGISTRY/finetune-operator:$VERSION"
TRAINER_IMAGE="$REGISTRY/finetune-trainer:$VERSION"
BASE_IMAGE="${FTJ_BASE_IMAGE:-debian:trixie-slim}"
WHICH=("${@:-operator trainer}")
read -r -a WHICH <<<"${WHICH[*]}"

# --- the builder ----------------------------------------------------------------------------
if ! command -v buildah >/dev/null && ! command -v docker >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing buildah and mmdebstrap from Debian"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            buildah mmdebstrap >/dev/null
    else
        die "needs buildah (apt-get install buildah mmdebstrap) or docker"
    fi
fi
if command -v buildah >/dev/null; then BUILDER=buildah; else BUILDER=docker; fi

image_exists() {
    if [[ $BUILDER == buildah ]]; then buildah inspect --type image "$1" >/dev/null 2>&1
    else docker image inspect "$1" >/dev/null 2>&1; fi
}

# --- the base ---------------------------------------------------------------------------------
local_name() {  # buildah stores short names under docker.io/library/
    if [[ $BUILDER == buildah && "$1" != */* ]]; then echo "docker.io/library/$1"; else echo "$1"; fi
}
ensure_base() {
    local name; name="$(local_name "$BASE_IMAGE")"
    image_exists "$name" && return 0
    log "base $BASE_IMAGE: not here; trying the registry"
    if timeout 60 "$BUILDER" pull -q "$name" >/dev/null 2>&1; then return 0; fi
    [[ $BUILDER == buildah ]] || die "cannot pull $BASE_IMAGE"
    [[ "$BASE_IMAGE" == debian:*-slim ]] || die "cannot pull $BASE_IMAGE (only debian:<suite>-slim can be recreated)"
    command -v mmdebstrap >/dev/null || {
        [[ $(id -u) == 0 ]] || die "needs mmdebstrap to recreate $BASE_IMAGE"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
    }
    local suite="${BASE_IMAGE#debian:}"; suite="${suite%-slim}"
    local tar; tar="$(mktemp -d)/rootfs.tar"
    log "base $BASE_IMAGE: unreachable registry; recreating it from Debian's archive (mmdebstrap $suite)"
    mmdebstrap --variant=minbase --quiet "$suite" "$tar" "${FTJ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    local ctr; ctr="$(buildah from scratch)"
    buildah add --quiet "$ctr" "$tar" /
    buildah config --cmd '["bash"]' \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --quiet --rm "$ctr" "$name" >/dev/null
    rm -rf "$(dirname "$tar")"
}

# --- the CA bundle for pip inside RUN steps -----------------------------------------------
CA="${FTJ_BUILD_CA:-}"
if [[ -z "$CA" ]]; then
    CA="$(python3 -m pip config get global.cert 2>/dev/null || true)"
    [[ -n "$CA" ]] || CA="$(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.cert='\(.*\)'/\1/p" | head -n1)"
fi
CA_ARGS=()
if [[ -n "$CA" ]]; then
    [[ -r "$CA" ]] || die "FTJ_BUILD_CA=$CA is not a readable file"
    [[ $BUILDER == buildah ]] || die "FTJ_BUILD_CA needs buildah (docker build cannot bind-mount it)"
    CA_ARGS=(--volume "$CA:/run/ftj-build-ca.pem:ro" --build-arg PIP_CERT_FILE=/run/ftj-build-ca.pem)
    log "pip inside the build trusts $CA (mounted read-only, not stored in the images)"
fi

build() {  # build <dockerfile> <tag>
    local start=$SECONDS
    local args=(-f "$1" -t "$2" --build-arg "BASE_IMAGE=$BASE_IMAGE")
    [[ -n "${FTJ_NO_CACHE:-}" ]] && args+=(--no-cache)
    log "building $2 from $1"
    if [[ $BUILDER == buildah ]]; then
        buildah bud --isolation chroot --layers --pull=never --format docker \
            "${CA_ARGS[@]}" "${args[@]}" .
    else
        docker build "${args[@]}" .
    fi
    local size
    if [[ $BUILDER == buildah ]]; then size="$(buildah images --format '{{.Size}}' "$2" | head -n1)"
    else size="$(docker image inspect -f '{{.Size}}' "$2")"; fi
    log "built $2 in $((SECONDS - start)) s, $size"
}

ensure_base
for which in "${WHICH[@]}"; do
    case "$which" in
        operator) build operator/Dockerfile "$OPERATOR_IMAGE" ;;
        trainer)  build trainer-image/Dockerfile "$TRAINER_IMAGE" ;;
        *) die "unknown image '$which' (operator or trainer)" ;;
    esac
done
