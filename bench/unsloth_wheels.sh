#!/usr/bin/env bash
# Builds .uwhl/: every wheel the `unsloth` bench rows and the tutorial `baseline` row need on the
# device (Python 3.12, torch 2.11, no network), within one carry (<= 60 MiB). Run here, in the
# repository root; the device command is bench/unsloth_call.sh. bench/NOTES.md "Unsloth, side by
# side" says why each version was chosen and what was left out.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.uwhl
rm -rf "$dest" && mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "${@:2}"
}
# Unsloth's pins (2026.10.9): transformers<=5.17, trl<=1.15, datasets<5 (not 4.0.*, 4.1.0, 4.4.*,
# 4.5.0), peft>=0.18, torch<2.15 (the device's peft and torch are used).
get "$dest" unsloth_zoo==2026.10.9 transformers==5.17.0 trl==1.15.0 datasets==4.8.5 dill==0.4.1 \
  multiprocess==0.70.19 accelerate==1.16.0 tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 \
  msgspec==0.23.0 cut_cross_entropy==25.1.1 torchao==0.18.0 xformers==0.0.35 \
  pydantic==2.13.5 pydantic_core==2.46.5 annotated_types==0.8.0 typing_inspection==0.4.5
get "$tmp" unsloth==2026.10.9 bitsandbytes==0.50.2
# Repack two wheels without what these rows never load: Unsloth's web UI (studio/, 82 MB unpacked)
# and CLI; bitsandbytes' libraries for CUDA 11.8-12.6 and 13.2, ROCm and XPU (kept: CPU, CUDA 12.8
# and 13.0, for a cu128 or cu130 torch). RECORD is rewritten to match.
python3 - "$tmp" "$dest" <<'EOF'
import base64, hashlib, pathlib, sys, zipfile

tmp, dest = map(pathlib.Path, sys.argv[1:])
drop = {
    "unsloth": ("studio/", "unsloth_cli/"),
    "bitsandbytes": tuple(
        f"bitsandbytes/libbitsandbytes_{k}"
        for k in ("cuda118", "cuda121", "cuda124", "cuda126", "cuda132", "rocm", "xpu")
    ),
}
for wheel in sorted(tmp.glob("*.whl")):
    prefixes = drop[wheel.name.split("-")[0]]
    source = zipfile.ZipFile(wheel)
    names = [n for n in source.namelist() if not n.startswith(prefixes)]
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    lines = []
    with zipfile.ZipFile(dest / wheel.name, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for name in names:
            if name == record:
                continue
            data = source.read(name)
            if name.endswith(".dist-info/entry_points.txt"):
                data = b""  # Unsloth's console script is its CLI, dropped above
            out.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            lines.append(f"{name},sha256={digest.decode()},{len(data)}")
        out.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
EOF
size=$(du -sb "$dest" | cut -f1)
echo "$dest: $(ls "$dest" | wc -l) wheels, $size bytes"
[ "$size" -le $((60 * 1024 * 1024)) ] || { echo "over 60 MiB" >&2; exit 1; }
