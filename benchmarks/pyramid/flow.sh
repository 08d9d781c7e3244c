#!/usr/bin/env bash
# Flow matching and Pyramidal Flow Matching against the pixel (eps) model and the native cascade of `run.sh 2400 32`
# (issue 17): the same network body, the same 2400 steps at batch 32, then every model swept over sampling budgets
# with two sampling seeds. Results: benchmarks/pyramid/<row>/results.{csv,json}, training times in train_times.txt;
# summary and frontier plot in PYRAMID.md ("Flow matching and Pyramidal Flow").
#   bash benchmarks/pyramid/flow.sh [train|eval|extra|all]   (about 30 minutes of training, 20 of evaluation on 2 CPUs)
set -uo pipefail
cd "$(dirname "$0")/../.."
STEPS=2400
BATCH=32
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-pyramid
OUT=benchmarks/pyramid
WHAT=${1:-all}
COMMON=(--exp.root "$ROOT" --trainer.max_steps "$STEPS" --trainer.val_check_interval "$STEPS"
        --data.init_args.batch_size "$BATCH" --trainer.limit_val_batches 4 --trainer.enable_progress_bar false
        --trainer.callbacks.every_n_steps 1000000)
fit() {  # NAME CONFIG [overrides]
  /usr/bin/time -f "$1-$STEPS train %e s" python -m pyramid_dm fit --config "$2" "${COMMON[@]}" "${@:3}" 2>&1 |
    grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
}
EVAL=(--num_samples 500 --batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite)
evaluate() {  # EXP OUT_NAME [evaluate options]
  python -m pyramid_dm evaluate --ckpt_path "$ROOT/$1/checkpoints/last.ckpt" --out "$OUT/$2" "${EVAL[@]}" "${@:3}" 2>&1 |
    grep -E "GFLOPs|rror"
}
PIXEL=pixel-fashion_mnist_small_flow-$STEPS
PFLOW=pyramid_flow-fashion_mnist-$STEPS
if [ "$WHAT" = train ] || [ "$WHAT" = all ]; then
  fit pixel-flow configs/pixel/fashion_mnist_small_flow.yaml --exp.name "$PIXEL"
  fit pyramid_flow configs/pyramid/fashion_mnist_pyramid_flow.yaml --exp.name "$PFLOW"
fi
[ "$WHAT" = train ] && exit 0
[ "$WHAT" = extra ] || for seed in 0 1; do
  # the flow model with the pixel model's sampler (DPM-Solver++(2M)) and with flow matching's own Euler sampler
  evaluate "$PIXEL" "$PIXEL-seed$seed" --sampler dpmpp_2m --steps 20 10 8 6 5 --seed $seed
  evaluate "$PIXEL" "$PIXEL-euler-seed$seed" --sampler flow_euler --steps 20 10 --seed $seed
  for budget in "8 6 6" "6 4 4" "4 3 3" "6 4 2" "10 6 8"; do
    evaluate "$PFLOW" "$PFLOW-${budget// /-}-seed$seed" --sampler dpmpp_2m --level_steps $budget --seed $seed
  done
done
# Added after seeing the rows above (sweeps of the same checkpoints, no retraining): pixel flow at 4 and 3 steps and
# pyramid-flow budgets around 20% of pixel@20's FLOPs, where 4/3/3 came close to pixel@5; then the strongest few-step
# samplers of each (DPM-Solver++ on flow's uniform-t grid, and flow_euler), since DPM-Solver++ on its log-SNR grid
# from sigma = 4096 falls apart at 4 steps.
for seed in 0 1; do
  evaluate "$PIXEL" "$PIXEL-low-seed$seed" --sampler dpmpp_2m --steps 4 3 --seed $seed
  for budget in "3 2 2" "4 2 2" "4 3 2" "6 3 3"; do
    evaluate "$PFLOW" "$PFLOW-${budget// /-}-seed$seed" --sampler dpmpp_2m --level_steps $budget --seed $seed
  done
  evaluate "$PIXEL" "$PIXEL-flowgrid-seed$seed" --sampler dpmpp_2m --discretization flow --steps 5 4 3 --seed $seed
  evaluate "$PIXEL" "$PIXEL-euler-low-seed$seed" --sampler flow_euler --steps 5 4 3 --seed $seed
  for budget in "4 3 2" "4 3 3" "6 3 3" "8 6 6"; do
    evaluate "$PFLOW" "$PFLOW-flowgrid-${budget// /-}-seed$seed" --sampler dpmpp_2m --discretization flow \
      --level_steps $budget --seed $seed
  done
done
