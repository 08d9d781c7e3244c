#!/usr/bin/env bash
# Sampling budgets under 50% of pixel@20's FLOPs for the pyramid trained by `run.sh 2400 32` (no retraining): the
# fine level keeps 7-8 steps, the cheap coarse levels give up steps. A second sampling seed for pixel@20 and the
# pyramid rows shows how much of a difference is noise. Results: benchmarks/pyramid/<row>/results.{csv,json}.
#   bash benchmarks/pyramid/budgets.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-pyramid
OUT=benchmarks/pyramid
EVAL=(--sampler dpmpp_2m --num_samples 500 --batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite)
evaluate() {  # EXP OUT_NAME [evaluate options]
  python -m pyramid_dm evaluate --ckpt_path "$ROOT/$1/checkpoints/last.ckpt" --out "$OUT/$2" "${EVAL[@]}" "${@:3}" 2>&1 |
    grep -E "GFLOPs|rror"
}
PYRAMID=pyramid-fashion_mnist-2400
for budget in "10 4 8" "12 5 8" "15 6 7" "10 6 7"; do
  for seed in 0 1; do
    evaluate "$PYRAMID" "$PYRAMID-${budget// /-}-seed$seed" --level_steps $budget --seed $seed
  done
done
evaluate "$PYRAMID" "$PYRAMID-20-8-8-seed1" --level_steps 20 8 8 --seed 1
evaluate pixel-fashion_mnist_small-2400 pixel-fashion_mnist_small-2400-seed1 --steps 20 10 --seed 1

# Below 50%: pixel with fewer steps against pyramid budgets of about the same FLOPs (the quality-vs-FLOPs frontier).
for seed in 0 1; do
  evaluate pixel-fashion_mnist_small-2400 "pixel-fashion_mnist_small-2400-low-seed$seed" --steps 8 6 5 --seed $seed
  for budget in "10 4 6" "10 4 5" "8 3 4"; do
    evaluate "$PYRAMID" "$PYRAMID-${budget// /-}-seed$seed" --level_steps $budget --seed $seed
  done
done
