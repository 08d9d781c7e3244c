#!/usr/bin/env bash
# Step-aware supernets for benchmarks/STEP_AWARE.md (issue 16), Fashion-MNIST 16x16, batch 32: the small pixel UNet
# trained plainly and as a supernet (sandwich rule) for the same 3000 steps, and a step-aware 4/8/16 pyramid for 700
# (the CPU time this session had). In-place distillation is compared on the embedded digits (distill.sh).
# Training times go to train_times.txt.   bash benchmarks/step_aware/train.sh [plain|supernet|pyramid|all]
set -uo pipefail
cd "$(dirname "$0")/../.."
BATCH=32
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-step-aware
OUT=benchmarks/step_aware
WHAT=${1:-all}
fit() {  # NAME STEPS CONFIG [overrides]
  /usr/bin/time -f "$1-$2 train %e s" python -m pyramid_dm fit --config "$3" --exp.root "$ROOT" --exp.name "$1" \
    --trainer.max_steps "$2" --trainer.val_check_interval "$2" --data.init_args.batch_size "$BATCH" \
    --trainer.limit_val_batches 4 --trainer.enable_progress_bar false --trainer.callbacks.every_n_steps 1000000 \
    "${@:4}" 2>&1 | grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
}
case $WHAT in plain|all) fit plain 3000 configs/pixel/fashion_mnist_16.yaml ;; esac
case $WHAT in supernet|all) fit supernet 3000 configs/pixel/fashion_mnist_16_step_aware.yaml ;; esac
case $WHAT in pyramid|all) fit pyramid-supernet 700 configs/pyramid/fashion_mnist_16_step_aware.yaml ;; esac
