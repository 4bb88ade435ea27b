#!/usr/bin/env bash
# The CPU train-step comparison of docs/speed.md: every runner against the PyTorch reference,
# alternating (round 1 then round 2 of the same sequence), one JSON line per run.
#
#   TORCH_PY=~/torchref/bin/python ROUNDS=2 bash benchmarks/cpu_step_compare.sh > step.jsonl
#
# Configs: resnet18_cifar 32 px batch 128 and resnet50 64 px batch 32 in fp32 (each backend,
# and TensorFlow / PyTorch backends with Keras's unfused BatchNormalization, --keras_bn), then
# resnet18_cifar in bfloat16 (torch.autocast against mixed_bfloat16).
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH_PY=${TORCH_PY:-python}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-4}
WARMUP=${WARMUP:-2}

tagged() {  # runs a command, prints its last line with the tag added
  local tag=$1
  shift
  local line
  line=$("$@" 2>/dev/null | tail -n 1)
  if [[ $line == "{"* ]]; then echo "${line%\}}, \"tag\": \"$tag\", \"round\": $round}"; else
    echo "{\"tag\": \"$tag\", \"round\": $round, \"failed\": true}"; fi
}

config() {  # arch size batch [extra keras flags...] with the reference's matching flags in REF
  local arch=$1 size=$2 batch=$3
  shift 3
  tagged "torch_reference $arch $size $batch $REF" "$TORCH_PY" benchmarks/torch_reference.py \
    step --arch "$arch" --size "$size" --batch "$batch" --steps "$STEPS" --warmup "$WARMUP" $REF
  for backend in $BACKENDS; do
    for bn in $BN_VARIANTS; do
      [ "$backend" = jax ] && [ "$bn" = --keras_bn ] && continue  # JAX: Keras's BN either way
      KERAS_BACKEND=$backend tagged "keras_$backend $arch $size $batch $* $bn" python \
        benchmarks/benchmark.py step --backbone "$arch" --image_size "$size" --batch_size "$batch" \
        --steps "$STEPS" --warmup "$WARMUP" "$@" $bn
    done
  done
}

for round in $(seq 1 "$ROUNDS"); do
  BACKENDS="tensorflow torch jax" BN_VARIANTS="--nokeras_bn --keras_bn" REF="" \
    config resnet18_cifar 32 128
  BACKENDS="tensorflow torch jax" BN_VARIANTS="--nokeras_bn" REF="" config resnet50 64 32
  BACKENDS="tensorflow torch jax" BN_VARIANTS="--nokeras_bn" REF="--bf16" \
    config resnet18_cifar 32 128 --mixed_precision bfloat16
done
