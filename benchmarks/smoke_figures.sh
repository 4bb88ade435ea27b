#!/usr/bin/env bash
# The fixed-seed smoke run: pretraining --deterministic, kNN, both linear protocols, every
# setting on the command line. A restructuring that changes no behaviour leaves its four JSON
# lines equal but for wall_s and pairs_per_s: run it on a checkout before and after.
#   bash benchmarks/smoke_figures.sh REPO OUT
set -e
REPO=$1; OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$REPO"
export PYTHONPATH=$REPO KERAS_BACKEND=tensorflow
P="--dataset=digits --backbone=resnet18_cifar --width=0.125 --image_size=16 --dim=64 --pred_dim=16 --batch_size=64 --epochs=2 --steps_per_epoch=5 --knn_every=1 --knn_k=20 --deterministic --seed=0 --compare_random_init=false --export=false --base_lr=0.3 --weight_decay=5e-4 --checkpoint_every=200"
python scripts/pretrain.py $P --workdir=$OUT/run 2>/dev/null | tail -1 > $OUT/pretrain.json
python scripts/knn_eval.py --pretrained=$OUT/run/model.keras --dataset=digits --knn_k=20 2>/dev/null | tail -1 > $OUT/knn.json
python scripts/linear_eval.py --pretrained=$OUT/run/model.keras --dataset=digits --protocol=features --batch_size=256 --workdir=$OUT/lin_f 2>/dev/null | tail -1 > $OUT/linear_features.json
python scripts/linear_eval.py --pretrained=$OUT/run/model.keras --dataset=digits --protocol=official --batch_size=64 --epochs=2 --steps_per_epoch=3 --optimizer=sgd --base_lr=2 --deterministic --workdir=$OUT/lin_o 2>/dev/null | tail -1 > $OUT/linear_official.json
cat $OUT/*.json
