#!/bin/bash
# The box-free K = 3 variants of docs/results.md §5, run from the repository root as: commands.sh NAME [train overrides]
# (boxk3: the sweep's box-k3 modules copied to runs/bf/boxk3/final; exact80: boxfree.budget="exact" boxfree.target_keep=0.0566;
# exact240: + max_steps=240; exact240lr4: + lr=4e-3; pen: boxfree.budget="penalty" boxfree.target_keep=0.0566)
# each trained at K = 3 on the mini base (unless final/ exists), then measured on the first NVAL (300) val items
cd "$(git rev-parse --show-toplevel)"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-2}
PY=${PYTHON:-python}
name=$1; shift
out=runs/bf/$name; mkdir -p $out
if [ ! -f $out/final/glimpse.safetensors ]; then
$PY -m glimpseprune.cli train --config configs/mini/glimpse.json model=src/glimpseprune/assets/mini/base \
  data=runs/mini_glimpse_data/train_short.jsonl val_data=runs/mini_glimpse_data/val_short.jsonl glimpse.prune_layer=3 \
  output_dir=$out progress=false mode=boxfree "$@" > $out.train.log 2>&1 || { echo "train failed $name"; exit 1; }
fi
$PY -m glimpseprune.mini.evaluate --glimpse $out/final --n ${NVAL:-300} --split val --batch-size 32 --threads ${THREADS:-2} --out $out/eval_val${NVAL:-300}.json > $out.eval.log 2>&1

