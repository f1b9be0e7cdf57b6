#!/usr/bin/env bash
# The measurements of docs/results.md "Adapting a model to new EM": source models on the CDeep3M sample,
# +experiment=adapt tuned on VNC sections 05-06, reported on VNC 09-11 and on CDeep3M 023-029.
# Run from the repository root:  bash scripts/adapt_transfer.sh [OUT]   (about 1 CPU-hour on 2 cores with bf16 units)
# Step counts are fixed (trainer.max_time=null) at what 5 CPU-minutes buy in float32 on a 2-core CPU without bf16
# units (400 steps of 128 px, 110 of 256 px), so the results do not depend on this machine's speed or load;
# bf16 only makes the runs faster here.
set -euo pipefail
OUT=${1:-outputs/adapt_transfer}
CD=$(realpath ../shared/data/cdeep3m_mito/train) VNC=$(realpath ../shared/data/vnc_mito/stack1)
D=$OUT/data
link() {  # link NAME IMAGE_DIR LABEL_DIR IMAGE_PREFIX LABEL_PREFIX IDS...
  local name=$1 si=$2 sl=$3 ip=$4 lp=$5; shift 5; mkdir -p "$D/$name/images" "$D/$name/labels"
  for i in "$@"; do ln -sf "$si/$ip$i.png" "$D/$name/images/"; ln -sf "$sl/$lp$i.png" "$D/$name/labels/"; done; }
link cd_all "$CD/images" "$CD/labels" images. mitos_3D. $(seq -f %03g 10 29)
link cd_010_017 "$CD/images" "$CD/labels" images. mitos_3D. $(seq -f %03g 10 17)
# VNC sections with labels, less the blank label files of 01 and 07 (folder index 0-9 = 00 02 03 04 05 06 08 09 10 11)
link vnc_clean "$VNC/images" "$VNC/labels" vnc_ vnc_ 00 02 03 04 05 06 08 09 10 11
C="cemkit"; [ -x .venv/bin/cemkit ] && C=.venv/bin/cemkit
FIX="trainer.max_time=null trainer.precision=bf16-mixed"   # bf16: only where the CPU has bf16 units (speed)
# 1. the source models: CDeep3M 010-029 (400 steps), and 010-017 for the correction on its own stack (300 steps)
$C finetune +experiment=cpu_15min data.images=$D/cd_all/images data.labels=$D/cd_all/labels $FIX data.voxel_size=5.9 \
    trainer.max_steps=315 output=$OUT/src_all
$C finetune +experiment=cpu_15min data.images=$D/cd_010_017/images data.labels=$D/cd_010_017/labels $FIX \
    trainer.max_steps=300 output=$OUT/src_010_017
# 2. choosing: 2 sections (00, 03), scored on 05-06 (index 4-5); one run per candidate, e.g. the 256 px baseline
#    (110 steps) and the chosen 128 px crops (400 steps); other candidates add optim.*_lr, data.photometric=strong,
#    data.geometric=true
S="study.gap=1 study.seeds=1 study.labelled=[2] study.inits=[$OUT/src_all] study.train_slices=0-2 study.test_slices=4-5"
$C study +experiment=adapt data.images=$D/vnc_clean/images data.labels=$D/vnc_clean/labels $S $FIX \
    data.crop=256 trainer.max_steps=110 val.every=55 output=$OUT/choose_crop256
$C study +experiment=adapt data.images=$D/vnc_clean/images data.labels=$D/vnc_clean/labels $S $FIX \
    trainer.max_steps=400 output=$OUT/choose_crop128
# 3. reported: 1, 2, 4 sections of 00-04, test 09-11 (index 7-9), adapted from CDeep3M and from random init
$C study +experiment=adapt data.images=$D/vnc_clean/images data.labels=$D/vnc_clean/labels $FIX \
    trainer.max_steps=400 study.train_slices=0-3 study.test_slices=7-9 study.gap=2 \
    "study.inits=[$OUT/src_all,none]" "study.labelled=[2,1,4]" study.seeds=1 output=$OUT/vnc
# 4. correction on its own stack: the 010-017 model, one labelled slice (021, index 11), scored on 023-029
$C study +experiment=adapt data.images=$CD/images data.labels=$CD/labels $FIX trainer.max_steps=400 \
    study.train_slices=11 study.test_slices=13-19 study.gap=1 "study.inits=[$OUT/src_010_017,none]" \
    "study.labelled=[1]" study.seeds=1 output=$OUT/own
# 5. one model on both labs' data: CDeep3M 010-029 and VNC 00, 04 (index 0 and 3 of vnc_clean), resampled to 5.9 nm
link vnc_00_04 "$VNC/images" "$VNC/labels" vnc_ vnc_ 00 04
$C finetune +experiment=cpu_15min $FIX trainer.max_steps=400 output=$OUT/joint \
    "data.sources=[{images: $D/cd_all/images, labels: $D/cd_all/labels, voxel_size: 5.9}, {images: $D/vnc_00_04/images, labels: $D/vnc_00_04/labels, voxel_size: 4.6}]"
$C predict checkpoint=$OUT/joint input=$D/vnc_clean/images output=$OUT/joint_predict progress=false voxel_size=4.6
# 6. zero-shot: the CDeep3M model on VNC at its own grid and rescaled (4.6 -> 5.9 nm)
$C predict checkpoint=$OUT/src_all input=$D/vnc_clean/images output=$OUT/zero_shot progress=false rescale=false
$C predict checkpoint=$OUT/src_all input=$D/vnc_clean/images output=$OUT/zero_shot_rescaled progress=false \
    voxel_size=4.6
# 7. the reverse: a VNC model (random init, the 10 usable sections, 400 steps of 128 px, trained at 4.6 nm) on
#    CDeep3M 024-029 (5.9 nm), at its own grid and rescaled (5.9 -> 4.6 nm)
$C finetune +experiment=adapt data.images=$D/vnc_clean/images data.labels=$D/vnc_clean/labels data.voxel_size=4.6 \
    $FIX trainer.max_steps=400 output=$OUT/vnc_model
$C predict checkpoint=$OUT/vnc_model input=$D/cd_all/images output=$OUT/reverse progress=false rescale=false
$C predict checkpoint=$OUT/vnc_model input=$D/cd_all/images output=$OUT/reverse_rescaled progress=false voxel_size=5.9
