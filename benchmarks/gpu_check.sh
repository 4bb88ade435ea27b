#!/usr/bin/env bash
# The GPU check: SimSiam train-step speed on one accelerator, this project against PyTorch.
#
# Runs where only PyTorch, torchvision and JAX are installed (no TensorFlow, no Keras: the GPU
# image this project is lent). Keras and what it needs beyond that image travel as wheels in
# .whl/ (downloaded on a machine with pip, see docs/speed.md, "GPU (H200)"); without .whl/ the installed
# Keras is used. Each runner prints one JSON line (pairs/s, training TFLOP/s and their share of
# NOMINAL_TFLOPS and of a matrix product measured in the same process):
#   1. plain PyTorch reference: torchvision ResNet, SimSiam heads, bf16 autocast, channels-last
#   2. this project, Keras JAX backend, mixed_bfloat16
#   3. the same with augment_on=device: uint8 images in, crop + views inside the step
#   4. this project, Keras PyTorch backend, mixed_bfloat16
#   5. (ABLATIONS=1) 4 with Keras's unfused BatchNormalization (--keras_bn), what the fused one saves
# for each batch size in BATCHES (1 and 2 at each, 3 to 5 at the first only).
#
#   bash benchmarks/gpu_check.sh                      # the H200 defaults below
#   DEVICE=cpu ARCH=resnet18_cifar SIZE=32 WIDTH=0.125 BATCHES=4 STEPS=2 WARMUP=1 \
#       PEAK_MATMUL=256 WHEELS= ABLATIONS=0 bash benchmarks/gpu_check.sh  # the CPU smoke test (tests/)
set -uo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-resnet50}
SIZE=${SIZE:-224}
WIDTH=${WIDTH:-1.0}
BATCHES=${BATCHES:-"128 256"}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
DEVICE=${DEVICE:-cuda}
NOMINAL_TFLOPS=${NOMINAL_TFLOPS:-790}
PEAK_MATMUL=${PEAK_MATMUL:-8192}
LIMIT_S=${LIMIT_S:-240}
PYTHON=${PYTHON:-python3}
ABLATIONS=${ABLATIONS:-1}
WHEELS=${WHEELS-.whl}  # empty: use the installed Keras

if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_check_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then export CUDA_VISIBLE_DEVICES="" JAX_PLATFORMS=cpu; fi

run() {  # one runner: its JSON line on stdout, or one saying how it failed
  local name=$1
  shift
  local line
  line=$(timeout "$LIMIT_S" "$@" 2>/tmp/gpu_check_"$name".err | tail -n 1)
  local rc=$?
  if [ $rc -eq 0 ] && [[ $line == "{"* ]]; then
    echo "${line%\}}, \"runner\": \"$name\"}"
  else
    echo "{\"runner\": \"$name\", \"failed\": true, \"rc\": $rc, \"error\": $(tail -n 3 \
      /tmp/gpu_check_"$name".err | "$PYTHON" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
  fi
}

first=1
for batch in $BATCHES; do
  run "torch_reference_b$batch" "$PYTHON" benchmarks/torch_reference.py step --arch "$ARCH" \
    --size "$SIZE" --width "$WIDTH" --batch "$batch" --steps "$STEPS" --warmup "$WARMUP" \
    --device "$DEVICE" --bf16 --channels-last --nominal-tflops "$NOMINAL_TFLOPS"
  keras_step=("$PYTHON" benchmarks/benchmark.py step --backbone "$ARCH" --image_size "$SIZE"
    --width "$WIDTH" --batch_size "$batch" --steps "$STEPS" --warmup "$WARMUP"
    --mixed_precision bfloat16 --nominal_tflops "$NOMINAL_TFLOPS")
  KERAS_BACKEND=jax run "keras_jax_b$batch" "${keras_step[@]}" --peak_matmul "$PEAK_MATMUL"
  if [ $first = 1 ]; then
    KERAS_BACKEND=jax run "keras_jax_device_augment_b$batch" "${keras_step[@]}" \
      --augment_on device --peak_matmul 0
    KERAS_BACKEND=torch run "keras_torch_b$batch" "${keras_step[@]}" \
      --peak_matmul "$PEAK_MATMUL"
    if [ "$ABLATIONS" = 1 ]; then
      KERAS_BACKEND=torch run "keras_torch_keras_bn_b$batch" "${keras_step[@]}" \
        --peak_matmul 0 --keras_bn
    fi
  fi
  first=0
done
