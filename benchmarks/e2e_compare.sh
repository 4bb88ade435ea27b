#!/usr/bin/env bash
# End-to-end pretraining throughput (input pipeline + step, one process) of the CIFAR protocol:
# this project's `pretrain.py` (views on the host, then on the device) against the PyTorch
# reference's training loop with its DataLoader (1 and 2 workers), same folder and cores.
# Prints each run's JSON line with a tag (pairs/s of the training loop, compile included).
#
#   DATA=~/cs2k PER_CLASS=2000 VAL=~/vs TORCH_PY=~/torchref/bin/python \
#       bash benchmarks/e2e_compare.sh > e2e.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?an image folder <class>/<image>}
PER_CLASS=${PER_CLASS:?images per class in DATA}
VAL=${VAL:?a small labelled folder (the reference computes a kNN at the end)}
TORCH_PY=${TORCH_PY:-python}
EPOCHS=${EPOCHS:-2}
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d)
COMMON=(--width 0.25 --epochs "$EPOCHS" --batch_size 256 --seed 0)

tagged() {
  local tag=$1
  shift
  local line
  line=$("$@" 2>/dev/null | grep '^{' | tail -n 1)
  echo "{\"tag\": \"$tag\", \"round\": $round, \"pairs_per_s\": $(echo "$line" |
    python -c 'import json,sys; print(json.loads(sys.stdin.read())["pairs_per_s"])' 2>/dev/null ||
    echo null)}"
}

for round in $(seq 1 "$ROUNDS"); do
  for workers in 1 2; do
    tagged "torch_reference_workers$workers" "$TORCH_PY" benchmarks/torch_reference.py train \
      --data "$DATA" --per-class "$PER_CLASS" --knn-train "$DATA" --knn-train-per-class 20 \
      --knn-val "$VAL" --width 0.25 --epochs "$EPOCHS" --batch 256 --seed 0 --workers "$workers"
  done
  for where in host device; do
    tagged "simsiam_keras_augment_on_$where" python scripts/pretrain.py \
      --flagfile configs/cifar10.cfg --train_dir "$DATA" "${COMMON[@]}" --nofix_pred_lr \
      --knn_every 0 --noexport --augment_on "$where" --workdir "$WORK/$where$round"
  done
done
rm -rf "$WORK"
