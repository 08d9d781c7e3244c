#!/usr/bin/env bash
# Step-aware supernets for benchmarks/STEP_AWARE.md (issue 16): on Fashion-MNIST 16x16, the same small UNet trained
# plainly, as a supernet (sandwich rule), as a supernet with in-place distillation, and a step-aware 4/8/16 pyramid;
# all at the same steps and batch. Training times go to train_times.txt.
#   bash benchmarks/step_aware/train.sh   (about 35 minutes on 2 CPU cores)
set -uo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-3000}
BATCH=32
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-step-aware
OUT=benchmarks/step_aware
COMMON=(--exp.root "$ROOT" --trainer.max_steps "$STEPS" --trainer.val_check_interval "$STEPS"
        --data.init_args.batch_size "$BATCH" --trainer.limit_val_batches 4 --trainer.enable_progress_bar false
        --trainer.callbacks.every_n_steps 1000000)
fit() {  # NAME CONFIG [overrides]
  /usr/bin/time -f "$1-$STEPS train %e s" python -m pyramid_dm fit --config "$2" "${COMMON[@]}" --exp.name "$1" "${@:3}" \
    2>&1 | grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
}
fit plain configs/pixel/fashion_mnist_16.yaml
fit supernet configs/pixel/fashion_mnist_16_step_aware.yaml
fit pyramid-supernet configs/pyramid/fashion_mnist_16_step_aware.yaml
fit supernet-distill configs/pixel/fashion_mnist_16_step_aware.yaml --model.init_args.step_aware.distill true
