#!/usr/bin/env bash
# How the pyramid-flow vs pixel-flow gap moves with resolution (16x16 vs 32x32) and with training steps (800 vs 2400),
# for PYRAMID.md: the same configs as flow.sh, retrained at 16x16 (stages 4 -> 8 -> 16) and at 800 steps (32x32),
# each swept over budgets with two sampling seeds.   bash benchmarks/pyramid/flow_trend.sh   (about 25 minutes)
set -uo pipefail
cd "$(dirname "$0")/../.."
BATCH=32
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-pyramid
OUT=benchmarks/pyramid
fit() {  # NAME STEPS CONFIG [overrides]
  /usr/bin/time -f "$1 train %e s" python -m pyramid_dm fit --config "$3" --exp.root "$ROOT" --exp.name "$1" \
    --trainer.max_steps "$2" --trainer.val_check_interval "$2" --data.init_args.batch_size "$BATCH" \
    --trainer.limit_val_batches 4 --trainer.enable_progress_bar false --trainer.callbacks.every_n_steps 1000000 \
    "${@:4}" 2>&1 | grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
}
EVAL=(--num_samples 500 --batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite --sampler dpmpp_2m)
evaluate() {  # EXP OUT_NAME [evaluate options]
  python -m pyramid_dm evaluate --ckpt_path "$ROOT/$1/checkpoints/last.ckpt" --out "$OUT/$2" "${EVAL[@]}" "${@:3}" 2>&1 |
    grep -E "GFLOPs|rror"
}
fit pixel-flow16-2400 2400 configs/pixel/fashion_mnist_small_flow.yaml --data.init_args.resize 16
fit pyramid_flow16-2400 2400 configs/pyramid/fashion_mnist_pyramid_flow.yaml --data.init_args.resize 16 \
  --model.init_args.resolutions "[4, 8, 16]"
fit pixel-flow-800 800 configs/pixel/fashion_mnist_small_flow.yaml
fit pyramid_flow-800 800 configs/pyramid/fashion_mnist_pyramid_flow.yaml
for seed in 0 1; do
  for run in pixel-flow16-2400 pixel-flow-800; do
    evaluate "$run" "trend-$run-seed$seed" --steps 20 10 8 6 5 --seed $seed
  done
  for run in pyramid_flow16-2400 pyramid_flow-800; do
    for budget in "8 6 6" "6 4 4" "4 3 3"; do
      evaluate "$run" "trend-$run-${budget// /-}-seed$seed" --level_steps $budget --seed $seed
    done
  done
done
