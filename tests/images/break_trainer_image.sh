#!/usr/bin/env bash
# Proves the image tier catches a broken trainer image: builds a broken variant under the
# trainer's own tag, runs the tier, prints the failures, then rebuilds the real image.
#
#   bash tests/images/break_trainer_image.sh no-compiler     # gcc removed
#   bash tests/images/break_trainer_image.sh no-dependency   # liger-kernel uninstalled
#   bash tests/images/break_trainer_image.sh writes-opt      # the trainer writes under /opt
#
# Each run must end with the tier FAILED and a message naming what broke; the script exits 0
# only then. It needs what the tier needs (root, buildah, bubblewrap) and the built images.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
TRAINER="ghcr.io/finetune-dev/finetune-trainer:$VERSION"
MODE="${1:?usage: $0 no-compiler|no-dependency|writes-opt}"

case "$MODE" in
    no-compiler)   STEP='RUN rm -f /usr/bin/gcc* /usr/bin/cc /usr/bin/x86_64-linux-gnu-gcc*'
                   EXPECT='Failed to find C compiler' ;;
    no-dependency) STEP='RUN pip uninstall -y -q liger-kernel'
                   EXPECT="liger_kernel.transformers: ModuleNotFoundError: No module named 'liger_kernel'" ;;
    writes-opt)    STEP='RUN sed -i "s|^def run_job(|open(\"/opt/finetune/scratch-file\", \"w\")\n\ndef run_job(|" /opt/venv/lib/python3*/site-packages/finetune_trainer/run.py'
                   EXPECT="Read-only file system: '/opt/finetune/scratch-file'" ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac

dir="$(mktemp -d)"
LOG="${FTJ_BREAK_LOG:-/tmp/ftj-break-$MODE.log}"
trap 'cp "$dir/log" "$LOG" 2>/dev/null; rm -rf "$dir"; echo "[break] full log: $LOG"; echo "[break] rebuilding the real trainer image"; bash .ci/build-images.sh trainer >/dev/null' EXIT
printf 'FROM %s\nUSER 0\n%s\nUSER 1000:1000\n' "$TRAINER" "$STEP" > "$dir/Dockerfile"
echo "[break] $MODE: $STEP"
buildah bud --isolation chroot --pull=never -q -t "$TRAINER" -f "$dir/Dockerfile" "$dir" >/dev/null

set +e
python3 -m pytest tests/images -q -p no:cacheprovider >"$dir/log" 2>&1
code=$?
set -e
grep -E "^(FAILED|ERROR)|passed|failed" "$dir/log" | tail -5
if [[ $code == 0 ]]; then
    echo "[break] $MODE: the image tier PASSED on a broken image" >&2; exit 1
fi
if ! grep -Fq "$EXPECT" "$dir/log"; then
    echo "[break] $MODE: the tier failed, but no message names what broke ($EXPECT)" >&2; exit 1
fi
echo "[break] $MODE: the tier failed and says: $(grep -Fo -m1 "$EXPECT" "$dir/log" | head -n1)"
grep -F -m3 "$EXPECT" "$dir/log" | cut -c1-300
