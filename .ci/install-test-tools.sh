#!/usr/bin/env bash
# Everything the test tiers need beyond the Python install (`pip install -e '.[dev]'`):
#
#   * Debian packages of the image tier: buildah (builds and stores the images), bubblewrap
#     and util-linux's setpriv (run a pod's container from its image), mmdebstrap (recreates
#     the Debian base image where no registry can be reached);
#   * bitsandbytes, for the CPU tests of QLoRA 4-bit layers (not in the dev extra: with it,
#     every `ftj run` prints bitsandbytes' warning about optional kernel packages);
#   * Kubernetes' apiextensions-apiserver and etcd, kubectl and helm (offline builds, cached
#     under ~/.cache/finetune-tools);
#   * both images (.ci/build-images.sh; layers cached in buildah's storage between runs).
#
# Idempotent: what is already there is kept. The README's test command runs this first.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[install-test-tools] $*"; }

declare -A PACKAGE_OF=([buildah]=buildah [bwrap]=bubblewrap [mmdebstrap]=mmdebstrap [setpriv]=util-linux)
missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${PACKAGE_OF[$cmd]}")
done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "[install-test-tools] ERROR: install these Debian packages: ${missing[*]}" >&2
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

log "bitsandbytes (CPU tests of the 4-bit layers)"
python3 -m pip install -q -c constraints.txt bitsandbytes

bash .ci/install-apiserver.sh
bash .ci/install-kube-tools.sh
bash .ci/build-images.sh
