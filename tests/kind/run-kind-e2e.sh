#!/usr/bin/env bash
# The kind tier: the operator on a real Kubernetes cluster (kind, in Docker) with a real GPU.
#
# Creates a kind cluster whose worker gets the host's GPUs (tests/kind/kind-config.yaml),
# installs the NVIDIA device plugin so that the worker advertises nvidia.com/gpu, loads the
# operator and trainer images into the nodes, installs the Helm chart
# (tests/kind/values-kind.yaml), deploys MinIO (tests/kind/s3.yaml) and uploads the
# quickstart's tiny model and data to it, applies examples/quickstart.yaml turned into a
# one-GPU FineTuneJob on S3, waits for it to succeed and downloads and verifies its artifacts
# with `ftj artifacts --download`. docs/kind-gpu.md says what the host needs and how to debug.
#
# Usage:
#   bash tests/kind/run-kind-e2e.sh                 # the whole run
#   bash tests/kind/run-kind-e2e.sh --check         # only the prerequisites: exit 0, or 1 and
#                                                   # what is missing (the last line: "missing: ...")
#   bash tests/kind/run-kind-e2e.sh --print-job     # the FineTuneJob it applies (YAML)
#   bash tests/kind/run-kind-e2e.sh --print-images  # the two images it loads into the cluster
#   bash tests/kind/run-kind-e2e.sh --upload-inputs URL     # two steps of the run on their own
#   bash tests/kind/run-kind-e2e.sh --verify-artifacts DIR  # (AWS_* credentials for the first)
#
# Environment:
#   KEEP_CLUSTER=1          leave the cluster running at the end (default: delete it)
#   KIND_CLUSTER_NAME       cluster name (default ftj-gpu); an existing one is reused
#   KIND_NODE_IMAGE         kindest/node image (default: the kind release's own)
#   FTJ_KIND_OUT            kubeconfig, logs, diagnostics, artifacts (default out/kind-e2e)
#   FTJ_REBUILD=1           run .ci/build-images.sh even when Docker has both images
#   FTJ_JOB_TIMEOUT         seconds to wait for the FineTuneJob to finish (default 1200)
#   DEVICE_PLUGIN_VERSION   version of NVIDIA's nvidia-device-plugin chart (default 0.17.1)
#   MINIO_IMAGE             another MinIO image than the one pinned in s3.yaml
#   PYTHON                  Python with pyyaml, pydantic, kubernetes, boto3 (default python3)
#   FTJ_CLI                 the ftj command to use (default: $PYTHON -m finetune_cli.main, from
#                           this checkout)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
CLUSTER="${KIND_CLUSTER_NAME:-ftj-gpu}"
OUT="${FTJ_KIND_OUT:-$REPO/out/kind-e2e}"
JOB_TIMEOUT="${FTJ_JOB_TIMEOUT:-1200}"
DEVICE_PLUGIN_VERSION="${DEVICE_PLUGIN_VERSION:-0.17.1}"

JOB_NS=ftj-e2e                 # values-kind.yaml's watchNamespaces
OPERATOR_NS=finetune-system
S3_NS=minio                    # s3.yaml
DEVICE_PLUGIN_NS=nvidia-device-plugin
JOB_NAME=quickstart-gpu
CREDENTIALS_SECRET=s3-credentials
GPU_NODE_LABEL=nvidia.com/gpu.present=true   # kind-config.yaml's GPU worker
IMAGE_PREFIX=ghcr.io/finetune-dev

# kubectl and helm from .ci/install-kube-tools.sh, when the host has none of its own.
TOOLS_BIN="${FTJ_TOOLS:-$HOME/.cache/finetune-tools}/bin"
if [[ -d "$TOOLS_BIN" ]]; then
    PATH="$PATH:$TOOLS_BIN"
fi
# finetune_api, finetune_cli and the trainer's storage layer straight from the checkout.
export PYTHONPATH="$REPO/operator:$REPO/trainer-image${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "[kind-e2e] $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# -- Python helpers: the FineTuneJob, the uploads and the artifact checks ------------------

read -r -d '' PY_HELPER <<'PY' || true
import json
import sys
from pathlib import Path

import yaml

REPO = Path(sys.argv[1])
COMMAND = sys.argv[2]
ARGS = sys.argv[3:]
QUICKSTART = REPO / "examples" / "quickstart.yaml"
JOB_NAME = "quickstart-gpu"
SECRET = "s3-credentials"


def derive():
    """examples/quickstart.yaml on one GPU with its inputs and output in S3: the manifest and
    [(local path, s3 uri)] of what must be uploaded first."""
    source = yaml.safe_load(QUICKSTART.read_text())
    spec = source["spec"]
    uploads = []
    model = QUICKSTART.parent / spec["model"]["uri"]
    spec["model"]["uri"] = f"s3://models/{model.name}"
    uploads.append((model, spec["model"]["uri"]))
    for dataset in spec["datasets"]:
        path = QUICKSTART.parent / dataset["uri"]
        dataset["uri"] = f"s3://datasets/{path.name}"
        uploads.append((path, dataset["uri"]))
    spec["output"]["uri"] = f"s3://artifacts/{JOB_NAME}"
    # No endpoint: the chart's s3.endpoint (values-kind.yaml) is the default the operator
    # fills in, which is part of what this tier checks.
    spec["storage"] = {"s3": {"pathStyle": True, "credentialsSecret": {"name": SECRET}}}
    spec["resources"]["gpus"] = 1
    manifest = {
        "apiVersion": source["apiVersion"],
        "kind": source["kind"],
        "metadata": {"name": JOB_NAME, "labels": {"app.kubernetes.io/part-of": "ftj-kind-e2e"}},
        "spec": spec,
    }
    return manifest, uploads


def upload(endpoint):
    """Create the buckets, clear a previous run's output, upload the model and the data."""
    from finetune_api.spec import S3Storage
    from finetune_trainer.storage import Storage

    storage = Storage(S3Storage.model_validate({"endpoint": endpoint, "pathStyle": True}))
    client = storage.client
    for bucket in ("models", "datasets", "artifacts"):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket="artifacts", Prefix=f"{JOB_NAME}/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            client.delete_object(Bucket="artifacts", Key=item["Key"])
    for path, uri in derive()[1]:
        if path.is_dir():
            storage.upload_dir(path, uri)
        else:
            storage.upload_file(path, uri)
        print(f"[kind-e2e] uploaded {path.relative_to(REPO)} -> {uri}", file=sys.stderr)


def verify(folder):
    """The downloaded artifacts are complete and the run trained all steps on a GPU."""
    folder = Path(folder)
    problems = [
        f"{name} missing"
        for name in ("adapter/adapter_config.json", "metrics.json", "loss.png", "MANIFEST.json")
        if not (folder / name).is_file()
    ]
    if problems:
        sys.exit(f"artifacts in {folder}: " + ", ".join(problems))
    metrics = json.loads((folder / "metrics.json").read_text())
    want = derive()[0]["spec"]["training"]["maxSteps"]
    if metrics.get("steps") != want:
        problems.append(f"metrics.json: steps {metrics.get('steps')}, the spec asks {want}")
    if not metrics.get("gpuMemoryGib"):
        problems.append("metrics.json: no gpuMemoryGib, so the trainer did not use a GPU")
    if problems:
        sys.exit("; ".join(problems))
    print(
        f"[kind-e2e] verified: {metrics['steps']} steps on a GPU, train loss "
        f"{metrics.get('trainLoss')}, {metrics.get('tokensPerSecond')} tokens/s, peak GPU "
        f"memory {metrics['gpuMemoryGib']} GiB",
        file=sys.stderr,
    )


if COMMAND == "job":
    print(yaml.safe_dump(derive()[0], sort_keys=False), end="")
elif COMMAND == "upload":
    upload(*ARGS)
elif COMMAND == "verify":
    verify(*ARGS)
else:
    sys.exit(f"unknown helper command {COMMAND}")
PY

py() { "$PYTHON" -c "$PY_HELPER" "$REPO" "$@"; }
ftj() {
    if [[ -n "${FTJ_CLI:-}" ]]; then
        "$FTJ_CLI" "$@"
    else
        "$PYTHON" -m finetune_cli.main "$@"
    fi
}

project_version() {
    # [project] version of pyproject.toml: the tag .ci/build-images.sh gives the images.
    awk -F'"' '/^\[project\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {print $2; exit}' \
        "$REPO/pyproject.toml"
}

VERSION="$(project_version)"
[[ -n "$VERSION" ]] || die "no [project] version in $REPO/pyproject.toml"
OPERATOR_IMAGE="$IMAGE_PREFIX/finetune-operator:$VERSION"
TRAINER_IMAGE="$IMAGE_PREFIX/finetune-trainer:$VERSION"

# -- Prerequisites --------------------------------------------------------------------------

MISSING=()
HINTS=()
need() {
    # need NAME HINT...: record a missing prerequisite and how to get it.
    local name="$1"
    shift
    MISSING+=("$name")
    HINTS+=("$name: $*")
}

check_prerequisites() {
    MISSING=()
    HINTS=()
    local out
    if ! command -v docker >/dev/null 2>&1; then
        need docker "no docker on PATH; install Docker Engine (https://docs.docker.com/engine/install/)"
    elif ! out="$(timeout 30 docker info --format '{{.DefaultRuntime}}' 2>&1)"; then
        need "docker daemon" "\`docker info\` failed: $(tail -n 1 <<<"$out")"
    elif [[ "$out" != nvidia ]]; then
        need "nvidia as docker's default runtime" "docker's default runtime is '$out'; run" \
            "sudo nvidia-ctk runtime configure --runtime=docker --set-as-default &&" \
            "sudo systemctl restart docker"
    fi
    command -v kind >/dev/null 2>&1 ||
        need kind "no kind on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
    command -v kubectl >/dev/null 2>&1 ||
        need kubectl "no kubectl on PATH (https://kubernetes.io/docs/tasks/tools/, or bash .ci/install-kube-tools.sh)"
    command -v helm >/dev/null 2>&1 ||
        need helm "no helm on PATH (https://helm.sh/docs/intro/install/, or bash .ci/install-kube-tools.sh)"
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        need "NVIDIA driver (nvidia-smi)" "no nvidia-smi on PATH: install the NVIDIA driver"
    elif ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        need "a GPU" "nvidia-smi -L lists no GPU"
    fi
    local ctk_config="${NVIDIA_CTK_CONFIG:-/etc/nvidia-container-runtime/config.toml}"
    if ! command -v nvidia-ctk >/dev/null 2>&1; then
        need "NVIDIA container toolkit (nvidia-ctk)" "no nvidia-ctk on PATH; install it" \
            "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html)"
    elif ! grep -Eqs '^[[:space:]]*accept-nvidia-visible-devices-as-volume-mounts[[:space:]]*=[[:space:]]*true' \
        "$ctk_config"; then
        need "accept-nvidia-visible-devices-as-volume-mounts" "not true in $ctk_config; run" \
            "sudo nvidia-ctk config --set accept-nvidia-visible-devices-as-volume-mounts=true --in-place"
    fi
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        need python "no $PYTHON on PATH (set PYTHON=...)"
    elif ! out="$("$PYTHON" -c 'import yaml, pydantic, kubernetes, boto3' 2>&1)"; then
        need "python packages" "$(tail -n 1 <<<"$out"); run pip install -e '.[operator]' boto3"
    fi
    if ((${#MISSING[@]} == 0)); then
        return 0
    fi
    log "prerequisites missing (docs/kind-gpu.md says how to install each):"
    local hint
    for hint in "${HINTS[@]}"; do
        log "  - $hint"
    done
    local joined
    joined="$(printf '%s, ' "${MISSING[@]}")"
    echo "missing: ${joined%, }" >&2
    return 1
}

# -- Steps ----------------------------------------------------------------------------------

START=$SECONDS
step() { log "== $* (+$((SECONDS - START))s)"; }

CLUSTER_UP=""
REUSED=""
PF_PID=""

capture() {
    # capture FILE COMMAND...: the command's output into the diagnostics folder; never fails.
    local file="$1"
    shift
    "$@" >"$OUT/diagnostics/$file" 2>&1 || true
}

diagnose() {
    mkdir -p "$OUT/diagnostics"
    log "collecting diagnostics into $OUT/diagnostics"
    capture nodes.txt kubectl get nodes -o wide --show-labels
    capture nodes-describe.txt kubectl describe nodes
    capture pods.txt kubectl get pods -A -o wide
    capture events.txt kubectl get events -A --sort-by=.lastTimestamp
    capture finetunejobs.yaml kubectl -n "$JOB_NS" get ftj -o yaml
    capture ftj-describe.txt ftj describe "$JOB_NAME" -n "$JOB_NS"
    capture operator.log kubectl -n "$OPERATOR_NS" logs deployment/finetune-operator --tail=-1
    capture trainer.log kubectl -n "$JOB_NS" logs -l "finetune.dev/job=$JOB_NAME" \
        --all-containers --prefix --tail=-1
    capture device-plugin.log kubectl -n "$DEVICE_PLUGIN_NS" logs \
        -l app.kubernetes.io/name=nvidia-device-plugin --all-containers --prefix --tail=-1
    capture minio.log kubectl -n "$S3_NS" logs deployment/minio --tail=-1
    capture kind-export.txt kind export logs "$OUT/diagnostics/kind" --name "$CLUSTER"
    local file
    for file in ftj-describe.txt trainer.log; do
        log "--- $file (last 30 lines) ---"
        tail -n 30 "$OUT/diagnostics/$file" >&2 || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT
    if [[ -n "$PF_PID" ]]; then
        kill "$PF_PID" 2>/dev/null || true
    fi
    if [[ -n "$CLUSTER_UP" ]]; then
        if ((rc != 0)); then
            diagnose || true
        fi
        if [[ "${KEEP_CLUSTER:-}" == 1 ]]; then
            log "KEEP_CLUSTER=1: cluster $CLUSTER left running; use it with"
            log "  export KUBECONFIG=$KUBECONFIG"
            log "and delete it with: kind delete cluster --name $CLUSTER"
        else
            step "deleting cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
            kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" || true
        fi
    fi
    if ((rc == 0)); then
        log "PASSED in $((SECONDS - START))s"
    else
        log "FAILED (exit $rc) after $((SECONDS - START))s; logs in $OUT"
    fi
    exit "$rc"
}

image_in_docker() { docker image inspect "$1" >/dev/null 2>&1; }
image_in_buildah() {
    command -v buildah >/dev/null 2>&1 && buildah inspect --type image "$1" >/dev/null 2>&1
}

ensure_images() {
    # .ci/build-images.sh builds with buildah where it is installed, else with docker.
    local image missing=()
    for image in "$OPERATOR_IMAGE" "$TRAINER_IMAGE"; do
        image_in_docker "$image" || image_in_buildah "$image" || missing+=("$image")
    done
    if ((${#missing[@]} == 0)) && [[ "${FTJ_REBUILD:-}" != 1 ]]; then
        log "images present: $OPERATOR_IMAGE $TRAINER_IMAGE (FTJ_REBUILD=1 rebuilds them)"
        return
    fi
    [[ -f "$REPO/.ci/build-images.sh" ]] ||
        die ".ci/build-images.sh not found; build ${missing[*]-the images} yourself"
    step "building the images: bash .ci/build-images.sh"
    (cd "$REPO" && bash .ci/build-images.sh) 2>&1 | tee "$OUT/build-images.log" >&2
}

load_images() {
    local image archive
    for image in "$OPERATOR_IMAGE" "$TRAINER_IMAGE"; do
        # buildah first, as .ci/build-images.sh: where both stores hold the image, buildah's
        # is the one it built last.
        if image_in_buildah "$image"; then
            archive="$OUT/image.tar"
            rm -f "$archive"
            buildah push "$image" "docker-archive:$archive:$image"
            kind load image-archive "$archive" --name "$CLUSTER"
            rm -f "$archive"
        elif image_in_docker "$image"; then
            kind load docker-image "$image" --name "$CLUSTER"
        else
            die "$image is in neither Docker's nor buildah's image store (.ci/build-images.sh)"
        fi
    done
}

create_cluster() {
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        log "cluster $CLUSTER exists: reusing it"
        kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
        REUSED=1
    else
        local args=(create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml"
            --kubeconfig "$KUBECONFIG" --wait 180s)
        if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
            args+=(--image "$KIND_NODE_IMAGE")
        fi
        kind "${args[@]}"
    fi
    CLUSTER_UP=1
}

# Runs inside each GPU worker (a Debian container): install the NVIDIA container toolkit and
# make nvidia containerd's default runtime, so that the device plugin and the trainer pods
# get the GPUs the device plugin assigns them without a RuntimeClass. The steps of NVIDIA's
# nvkind (https://github.com/NVIDIA/nvkind).
read -r -d '' NODE_SETUP <<'SH' || true
set -euo pipefail
if ! command -v nvidia-ctk >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends ca-certificates curl gpg
    keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
    curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor --yes -o "$keyring"
    curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list |
        sed "s#deb https://#deb [signed-by=$keyring] https://#g" \
            >/etc/apt/sources.list.d/nvidia-container-toolkit.list
    apt-get update -q
    apt-get install -y -q nvidia-container-toolkit
fi
nvidia-ctk runtime configure --runtime=containerd --config-source=command --set-as-default
systemctl restart containerd
SH

setup_gpu_nodes() {
    local nodes node
    nodes="$(kubectl get nodes -l "$GPU_NODE_LABEL" -o jsonpath='{.items[*].metadata.name}')"
    [[ -n "$nodes" ]] || die "no node labelled $GPU_NODE_LABEL (tests/kind/kind-config.yaml)"
    for node in $nodes; do
        log "$node: GPUs the host's toolkit injected:"
        docker exec "$node" nvidia-smi -L >&2 ||
            die "$node: nvidia-smi fails inside the kind node, so the host's toolkit injected" \
                "no GPU: check docker's default runtime and" \
                "accept-nvidia-visible-devices-as-volume-mounts (docs/kind-gpu.md)"
        log "$node: installing the NVIDIA container toolkit, nvidia as containerd's default" \
            "runtime (log: $OUT/node-setup-$node.log)"
        docker exec "$node" bash -c "$NODE_SETUP" >"$OUT/node-setup-$node.log" 2>&1 ||
            die "$node: toolkit setup failed; see $OUT/node-setup-$node.log"
    done
    kubectl wait --for=condition=Ready node --all --timeout=180s
    GPU_NODES="$nodes"
}

install_device_plugin() {
    helm upgrade --install nvidia-device-plugin nvidia-device-plugin \
        --repo https://nvidia.github.io/k8s-device-plugin --version "$DEVICE_PLUGIN_VERSION" \
        --namespace "$DEVICE_PLUGIN_NS" --create-namespace --wait --timeout 5m
    local node gpus i
    for node in $GPU_NODES; do
        gpus=0
        for ((i = 0; i < 90; i++)); do
            gpus="$(kubectl get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')"
            if [[ "${gpus:-0}" =~ ^[0-9]+$ ]] && ((gpus >= 1)); then
                break
            fi
            sleep 2
        done
        ((${gpus:-0} >= 1)) || die "$node advertises no nvidia.com/gpu (device plugin logs:" \
            "kubectl -n $DEVICE_PLUGIN_NS logs -l app.kubernetes.io/name=nvidia-device-plugin)"
        log "$node: allocatable nvidia.com/gpu = $gpus"
    done
}

create_namespaces() {
    local ns
    for ns in "$JOB_NS" "$OPERATOR_NS"; do
        kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
        # The operator and the trainer pods are built for the restricted Pod Security
        # Standard; on a real API server it is enforced here.
        kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted --overwrite \
            >/dev/null
    done
}

gpu_smoke_test() {
    # One pod of the trainer image asking for one GPU: separates "the GPU plumbing is broken"
    # from "the operator is broken" before the real run.
    kubectl -n "$JOB_NS" delete pod gpu-smoke --ignore-not-found --wait=true >/dev/null
    kubectl -n "$JOB_NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: gpu-smoke
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: smoke
      image: $TRAINER_IMAGE
      imagePullPolicy: Never
      command: [python, -c]
      args:
        - "import torch; assert torch.cuda.is_available(), 'no CUDA device';
          print('CUDA device:', torch.cuda.get_device_name(0))"
      env:
        - {name: HOME, value: /tmp}
      resources:
        limits: {nvidia.com/gpu: "1"}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
  volumes:
    - {name: tmp, emptyDir: {}}
EOF
    local phase="" i
    for ((i = 0; i < 150; i++)); do
        phase="$(kubectl -n "$JOB_NS" get pod gpu-smoke -o jsonpath='{.status.phase}')"
        [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
        sleep 2
    done
    kubectl -n "$JOB_NS" logs gpu-smoke >&2 || true
    if [[ "$phase" != Succeeded ]]; then
        kubectl -n "$JOB_NS" describe pod gpu-smoke >&2 || true
        die "a pod of $TRAINER_IMAGE with nvidia.com/gpu: 1 did not see a CUDA device" \
            "(phase: ${phase:-none})"
    fi
    kubectl -n "$JOB_NS" delete pod gpu-smoke --wait=false >/dev/null
}

install_operator() {
    helm upgrade --install finetune-operator "$REPO/charts/finetune-operator" \
        --namespace "$OPERATOR_NS" --create-namespace \
        -f "$HERE/values-kind.yaml" \
        --set-string image.tag="$VERSION" --set-string trainer.image.tag="$VERSION" \
        --wait --timeout 5m
    if [[ -n "$REUSED" ]]; then
        # Same tag, maybe a rebuilt image: helm sees no change, so restart the pod onto it.
        kubectl -n "$OPERATOR_NS" rollout restart deployment/finetune-operator
    fi
    kubectl -n "$OPERATOR_NS" rollout status deployment/finetune-operator --timeout=120s
}

S3_USER=""
S3_PASSWORD=""

deploy_s3() {
    kubectl apply -f "$HERE/s3.yaml"
    if [[ -n "${MINIO_IMAGE:-}" ]]; then
        kubectl -n "$S3_NS" set image deployment/minio minio="$MINIO_IMAGE"
    fi
    kubectl -n "$S3_NS" rollout status deployment/minio --timeout=300s
    S3_USER="$(kubectl -n "$S3_NS" get secret minio-root -o jsonpath='{.data.MINIO_ROOT_USER}' |
        base64 -d)"
    S3_PASSWORD="$(kubectl -n "$S3_NS" get secret minio-root \
        -o jsonpath='{.data.MINIO_ROOT_PASSWORD}' | base64 -d)"
    # The FineTuneJob's credentials, in its own namespace (only the trainer pods read them).
    kubectl -n "$JOB_NS" create secret generic "$CREDENTIALS_SECRET" \
        --from-literal=AWS_ACCESS_KEY_ID="$S3_USER" \
        --from-literal=AWS_SECRET_ACCESS_KEY="$S3_PASSWORD" \
        --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

S3_LOCAL=""

port_forward_s3() {
    local port i
    port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    kubectl -n "$S3_NS" port-forward svc/minio "$port:9000" >"$OUT/port-forward.log" 2>&1 &
    PF_PID=$!
    for ((i = 0; i < 60; i++)); do
        if "$PYTHON" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$port" 2>/dev/null; then
            S3_LOCAL="http://127.0.0.1:$port"
            log "MinIO on $S3_LOCAL (kubectl port-forward)"
            return
        fi
        kill -0 "$PF_PID" 2>/dev/null || break
        sleep 0.5
    done
    die "kubectl port-forward to MinIO did not come up; see $OUT/port-forward.log"
}

with_s3_credentials() {
    AWS_ACCESS_KEY_ID="$S3_USER" AWS_SECRET_ACCESS_KEY="$S3_PASSWORD" AWS_REGION=us-east-1 "$@"
}

apply_job() {
    kubectl -n "$JOB_NS" delete ftj "$JOB_NAME" --ignore-not-found --wait=true >/dev/null
    with_s3_credentials py upload "$S3_LOCAL"
    py job >"$OUT/finetunejob.yaml"
    ftj validate "$OUT/finetunejob.yaml" >&2
    kubectl -n "$JOB_NS" apply -f "$OUT/finetunejob.yaml"
}

wait_for_job() {
    local deadline=$((SECONDS + JOB_TIMEOUT)) phase="" last="" shown=0
    while :; do
        phase="$(kubectl -n "$JOB_NS" get ftj "$JOB_NAME" -o jsonpath='{.status.phase}' \
            2>/dev/null || true)"
        if [[ "$phase" != "$last" ]] || ((SECONDS - shown >= 30)); then
            kubectl -n "$JOB_NS" get ftj "$JOB_NAME" >&2 || true
            last="$phase"
            shown=$SECONDS
        fi
        case "$phase" in
            Succeeded) return 0 ;;
            Failed) die "FineTuneJob $JOB_NAME failed (ftj describe $JOB_NAME -n $JOB_NS)" ;;
        esac
        ((SECONDS < deadline)) ||
            die "FineTuneJob $JOB_NAME not finished after ${JOB_TIMEOUT}s (phase ${phase:-none})"
        sleep 3
    done
}

verify_artifacts() {
    rm -rf "$OUT/artifacts"
    with_s3_credentials ftj artifacts "$JOB_NAME" -n "$JOB_NS" --download "$OUT/artifacts" \
        --s3-endpoint "$S3_LOCAL" >&2
    py verify "$OUT/artifacts"
}

main() {
    check_prerequisites || die "the kind tier can't run on this host (see above)"
    mkdir -p "$OUT"
    export KUBECONFIG="$OUT/kubeconfig"
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    step "images $OPERATOR_IMAGE, $TRAINER_IMAGE"
    ensure_images
    step "kind cluster $CLUSTER (tests/kind/kind-config.yaml)"
    create_cluster
    step "GPU worker: NVIDIA container toolkit in the node"
    setup_gpu_nodes
    step "NVIDIA device plugin $DEVICE_PLUGIN_VERSION"
    install_device_plugin
    step "loading the images into the nodes (kind load docker-image)"
    load_images
    create_namespaces
    step "GPU smoke test: a pod of the trainer image with one GPU"
    gpu_smoke_test
    step "MinIO (tests/kind/s3.yaml)"
    deploy_s3
    step "operator: helm install with tests/kind/values-kind.yaml"
    install_operator
    step "uploading the quickstart's model and data; applying FineTuneJob $JOB_NAME"
    port_forward_s3
    apply_job
    step "waiting for $JOB_NAME to succeed (kubectl get ftj -n $JOB_NS)"
    wait_for_job
    step "artifacts: ftj artifacts $JOB_NAME --download $OUT/artifacts"
    verify_artifacts
}

case "${1:-}" in
    "") main ;;
    --check)
        if check_prerequisites; then
            log "all prerequisites present"
        else
            exit 1
        fi
        ;;
    --print-job) py job ;;
    --print-images) printf '%s\n' "$OPERATOR_IMAGE" "$TRAINER_IMAGE" ;;
    --upload-inputs) py upload "${2:?--upload-inputs needs the S3 endpoint URL}" ;;
    --verify-artifacts) py verify "${2:?--verify-artifacts needs the folder}" ;;
    -h | --help) sed -n '2,/^set -euo pipefail/p' "$0" | sed -n 's/^# \{0,1\}//p' ;;
    *) die "unknown argument '$1' (--help lists the options)" ;;
esac
