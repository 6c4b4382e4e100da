"""Stand-ins for docker, buildah, kind, kubectl, helm, nvidia-smi, nvidia-ctk and ftj, so that
run-kind-e2e.sh can run its whole sequence on a machine without Docker (test_kind_gpu.py).

``python fake_tools.py TOOL ARGS...``: appends ``[TOOL, *ARGS]`` (plus what came on stdin, for
``kubectl apply -f -``) as one JSON line to $FAKE_LOG, then answers the way the real tool
does on a healthy GPU host. Only ``kubectl port-forward`` does real work: it becomes a moto
S3 server on the forwarded port, so the script's uploads go over HTTP as they would to MinIO.
``ftj artifacts --download`` checks those uploads and writes artifacts a GPU run would leave.

$FAKE_PHASE sets the FineTuneJob phase kubectl reports (default Succeeded);
$FAKE_EXISTING_CLUSTER makes ``kind get clusters`` list one.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
from botocore.config import Config

GPU_NODE = "ftj-gpu-worker"
GPU_LINE = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"


def record(tool: str, args: list[str], stdin: str | None = None) -> None:
    entry = [tool, *args] + ([f"<stdin>{stdin}"] if stdin is not None else [])
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def docker(args: list[str]) -> int:
    if args[:1] == ["info"]:
        print("nvidia")
    elif args[:1] == ["exec"] and "nvidia-smi" in args:
        print(GPU_LINE)
    return 0


def kind(args: list[str]) -> int:
    if args[:2] == ["get", "clusters"] and os.environ.get("FAKE_EXISTING_CLUSTER"):
        print(os.environ["FAKE_EXISTING_CLUSTER"])
    return 0


def kubectl(args: list[str]) -> int:
    words = " ".join(args)
    if "port-forward" in args:
        port = args[-1].split(":")[0]
        os.execv(
            sys.executable,
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        )
    if "get nodes -l" in words:
        print(GPU_NODE, end="")
    elif f"get node {GPU_NODE}" in words:
        print("1", end="")
    elif "--dry-run=client" in args:
        print(f"apiVersion: v1\nkind: Fake\nmetadata: {{name: {args[2]}}}")
    elif "get pod gpu-smoke" in words:
        print("Succeeded", end="")
    elif "get secret minio-root" in words:
        value = "ftj-kind" if "MINIO_ROOT_USER" in words else "ftj-kind-secret"
        print(base64.b64encode(value.encode()).decode(), end="")
    elif "get ftj" in words and "jsonpath" in words:
        print(os.environ.get("FAKE_PHASE", "Succeeded"), end="")
    elif "get ftj" in words:
        phase = os.environ.get("FAKE_PHASE", "Succeeded")
        print(f"NAME             PHASE\nquickstart-gpu   {phase}")
    elif args[:1] == ["logs"] or "logs" in args:
        print("CUDA device: NVIDIA H100 80GB HBM3")
    return 0


def ftj(args: list[str]) -> int:
    if args[:1] == ["validate"]:
        return subprocess.call([sys.executable, "-m", "finetune_cli.main", *args])
    if args[:1] != ["artifacts"]:
        print(f"fake ftj {' '.join(args)}")
        return 0
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=option(args, "--s3-endpoint"),
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    uploaded = sorted(
        f"{bucket}/{item['Key']}"
        for bucket in ("models", "datasets")
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])
    )
    record("s3-contents", uploaded)
    folder = Path(option(args, "--download"))
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "loss.png").write_bytes(b"\x89PNG")
    (folder / "MANIFEST.json").write_text("{}")
    metrics = {"steps": 150, "trainLoss": 0.1, "tokensPerSecond": 9e4, "gpuMemoryGib": 0.3}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return 0


TOOLS = {"docker": docker, "kind": kind, "kubectl": kubectl, "ftj": ftj}
FIXED = {"nvidia-smi": GPU_LINE, "nvidia-ctk": "", "helm": ""}
# Exit codes: buildah holds no image (the images are Docker's here).
FAILING = {"buildah"}


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    stdin = sys.stdin.read() if tool == "kubectl" and args[-2:] == ["-f", "-"] else None
    record(tool, args, stdin)
    if tool in FAILING:
        return 1
    if tool in FIXED:
        if FIXED[tool]:
            print(FIXED[tool])
        return 0
    return TOOLS[tool](args)


if __name__ == "__main__":
    sys.exit(main())
