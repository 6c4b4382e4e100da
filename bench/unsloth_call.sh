#!/usr/bin/env bash
# The device command for issue 24 item 1 ("Unsloth, side by side"): the tutorial baseline and
# Unsloth's own recipe on the same 7B shape, data and LoRA, in one call of their own. Carry
# `.uwhl` (built here by bench/unsloth_wheels.sh); run from the repository root:
#
#     bash bench/unsloth_call.sh [ROWS]
#
# ROWS defaults to the four rows below, most important first: --deadline-s reports the rows it
# cannot reach as "not run" instead of losing the earlier ones.
set -uo pipefail
cd "$(dirname "$0")/.."
rows=${1:-qwen2.5-7b:baseline,qwen2.5-7b:unsloth,qwen2.5-7b:unsloth-dropout0,qwen2.5-7b:unsloth-4bit-dropout0}
out=${OUT:-/tmp}
# .xwhl (optional): the trainer's own extras (liger-kernel, boto3 + botocore, s3transfer,
# jmespath from .whl) so the `default` rows run in the same call on Unsloth's pins.
extra=()
[ -d .xwhl ] && extra=(.xwhl/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/usite .uwhl/*.whl "${extra[@]}" || exit 1
export PYTHONPATH=/tmp/usite:$PWD:$PWD/operator:$PWD/trainer-image PYTHONUNBUFFERED=1
# Versions without importing Unsloth (its import patches and compiles; the rows do it).
python3 - <<'EOF' 2>&1 | tee "$out/versions.txt"
import importlib.metadata as md

import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
             "bitsandbytes", "xformers", "torchao", "triton"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
EOF
python3 -m bench.run --steps 8 --warmup 3 --deadline-s 540 --tag s15-unsloth --rows "$rows" 2>&1 \
  | tee "$out/unsloth-call.log"
