#!/usr/bin/env bash
# cemkit on one GPU, in at most 8 minutes, on a fresh machine with nothing but this repository:
#   1. bf16 resnet50 224 px MoCo step img/s against a supervised resnet50 step (ratio; goal 0.7x)
#   2. the finetune step img/s (DeepEM3D, resnet18, 512 px crops, batch 16, 1fm and 5fm)
#   3. `cemkit predict` on a 100 x 1000 x 1000 synthetic volume, 16-variant TTA, 1fm/3fm/5fm ensemble
#      (members trained here for a few steps: speed, not accuracy) against CDeep3M's "under 1 minute"
#
#   bash scripts/gpu_check.sh [WORK_DIR]        (default WORK_DIR: outputs/gpu_check)
#   GPU_CHECK_PYTHON=python bash scripts/gpu_check.sh --cpu-tiny [WORK_DIR]
#                                                (every step on the CPU at tiny sizes: a check of the script)
#
# Uses .venv when it exists, else creates it with `make venv` (pip with constraints.txt, from the
# local package cache). Every part runs under `timeout`, within an overall budget of GPU_CHECK_BUDGET
# seconds (default 480); a part that fails or times out is reported and the next one runs.
# Without a CUDA device it stops after the set-up with "no CUDA device" (exit status 3).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-480}
TINY=()
if [[ ${1:-} == --cpu-tiny ]]; then TINY=(--cpu-tiny); shift; fi
WORK=${1:-outputs/gpu_check}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
FAILED=()

left() { echo $((BUDGET - ($(date +%s) - START))); }
# part NAME SECONDS CMD...: run CMD under min(SECONDS, time left), report its wall time and status
part() {
    local name=$1 limit=$2; shift 2
    local remain; remain=$(left)
    (( limit > remain )) && limit=$remain
    if (( limit < 10 )); then echo "== $name: skipped (budget spent)"; FAILED+=("$name"); return 1; fi
    echo "== $name (limit ${limit}s)"
    local t0; t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    local wall; wall=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
    if (( rc == 124 || rc == 137 )); then echo "== $name: TIMED OUT after ${wall}s"; FAILED+=("$name")
    elif (( rc != 0 )); then echo "== $name: FAILED (exit $rc) after ${wall}s"; FAILED+=("$name")
    else echo "== $name: done in ${wall}s"; fi
    LAST_WALL=$wall
    return $rc
}

if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
    PY=$GPU_CHECK_PYTHON
else
    if [[ ! -x .venv/bin/python || ! -f .venv/.installed ]]; then
        part "set-up (make venv)" 300 make venv || { echo "set-up failed"; exit 1; }
    fi
    PY=.venv/bin/python
fi
CEMKIT=("$PY" -m cemkit.cli.main)
if (( ${#TINY[@]} )); then
    DEVICE=(trainer=cpu data.crop=64 trainer.max_steps=1 val.every=1)
    PREDICT=(device=cpu tile_size=64 border=8 tta=2) SIZE="6 x 100 x 100, tta=2"
else
    if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device: torch.cuda.is_available() is False (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))"
        exit 3
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    DEVICE=(model/encoder=resnet18 trainer=gpu data.crop=256 trainer.max_steps=4 val.every=4)
    PREDICT=(device=cuda tta=16) SIZE="100 x 1000 x 1000, tta=16"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

part "MoCo vs supervised step" 110 $PY scripts/bench_gpu.py "${TINY[@]}" moco --steps 20
part "finetune step" 70 $PY scripts/bench_gpu.py "${TINY[@]}" finetune --steps 10

mkdir -p "$WORK"
part "synthetic data" 40 $PY scripts/bench_gpu.py "${TINY[@]}" data "$WORK/data"
part "train 1fm/3fm/5fm members (a few steps each)" 90 "${CEMKIT[@]}" finetune +experiment=tiny_finetune \
    "${DEVICE[@]}" model.frames=all data.images="$WORK/data/train_images.tif" \
    data.labels="$WORK/data/train_labels.tif" val.overlays=0 overwrite=true output="$WORK/models"
rm -rf "$WORK/predicted"
if part "cemkit predict $SIZE, 1fm/3fm/5fm ensemble" 200 "${CEMKIT[@]}" predict \
    checkpoint="$WORK/models" input="$WORK/data/volume.tif" output="$WORK/predicted" "${PREDICT[@]}" \
    instances=false overlays=0 progress=false resume=false; then
    echo "predict: ${LAST_WALL}s wall (process start, model loading, reading and writing included) against" \
         "CDeep3M's under 60 s: $(python3 -c "import sys; print(f'{60 / float(sys.argv[1]):.2f}x')" "$LAST_WALL")"
fi

echo "== total $(( $(date +%s) - START ))s of ${BUDGET}s"
if (( ${#FAILED[@]} )); then echo "failed or skipped: ${FAILED[*]}"; exit 1; fi
