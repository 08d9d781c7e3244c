#!/usr/bin/env bash
# Step-aware diffusion on Fashion-MNIST 16x16 (issue 16): width-policy searches of the supernets trained by
# train.sh, then every claimed policy and its strongest simple alternatives re-evaluated with two sampling seeds.
#   bash benchmarks/step_aware/run.sh [search|eval|pyramid|all]
# Outputs: benchmarks/step_aware/<study>/ (front, trials, policies, pareto.png), benchmarks/step_aware/eval/<row>/
# (evaluate tables); summary.py turns them into the tables and plots of benchmarks/STEP_AWARE.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-step-aware
OUT=benchmarks/step_aware
WHAT=${1:-all}
SUPER=$ROOT/supernet/checkpoints/last.ckpt
PLAIN=$ROOT/plain/checkpoints/last.ckpt
PYR=$ROOT/pyramid-supernet/checkpoints/last.ckpt
SEARCH=(--num_real 2000 --features fmnist_clf --no_wandb --batch_size 250)
EVAL=(--num_samples 1000 --batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite)
timed() {  # NAME command...: wall time of a search into search_times.txt
  /usr/bin/time -f "$1 %e s" "${@:2}" 2>&1 | grep -E "front:|trial\(s\)| s$|rror" | tee -a "$OUT/search_times.txt"
}
evaluate() {  # CKPT OUT_NAME [evaluate options]
  python -m pyramid_dm evaluate --ckpt_path "$1" --out "$OUT/eval/$2" "${EVAL[@]}" "${@:3}" 2>&1 | grep -E "GFLOPs|rror"
}
if [ "$WHAT" = search ] || [ "$WHAT" = all ]; then
  timed dpm20 python -m pyramid_dm search-steps --ckpt_path "$SUPER" --sampler dpmpp_2m --steps 20 --trials 48 \
    --population 12 --num_samples 500 --study "$OUT/study-dpm20" --no_progress "${SEARCH[@]}"
  timed ddpm250 python -m pyramid_dm search-steps --ckpt_path "$SUPER" --sampler ddpm --steps 250 --trials 16 \
    --population 8 --num_samples 250 --study "$OUT/study-ddpm250" --no_progress "${SEARCH[@]}"
fi
if [ "$WHAT" = eval ] || [ "$WHAT" = all ]; then
  for seed in 0 1; do
    # the full width of the supernet and the plainly trained network, at 20 steps and at fewer (equal-FLOPs peers)
    evaluate "$SUPER" "supernet-full-seed$seed" --sampler dpmpp_2m --steps 20 14 10 8 6 --seed $seed
    evaluate "$PLAIN" "plain-seed$seed" --sampler dpmpp_2m --steps 20 14 10 --seed $seed
    evaluate "$SUPER" "supernet-ddpm250-full-seed$seed" --sampler ddpm --steps 250 125 --seed $seed --num_samples 500
    for k in $(ls "$OUT/study-dpm20/policies" | sed 's/.json//'); do
      evaluate "$SUPER" "dpm20-$k-seed$seed" --sampler dpmpp_2m --steps 20 --seed $seed \
        --step_policy "$OUT/study-dpm20/policies/$k.json"
    done
    for k in $(ls "$OUT/study-ddpm250/policies" | sed 's/.json//'); do
      evaluate "$SUPER" "ddpm250-$k-seed$seed" --sampler ddpm --steps 250 --seed $seed --num_samples 500 \
        --step_policy "$OUT/study-ddpm250/policies/$k.json"
    done
  done
fi
if [ "$WHAT" = pyramid ] || [ "$WHAT" = all ]; then
  timed pyramid python -m pyramid_dm search-steps --ckpt_path "$PYR" --sampler dpmpp_2m --steps 20 8 8 --trials 32 \
    --population 8 --num_samples 500 --study "$OUT/study-pyramid" --no_progress "${SEARCH[@]}"
  for seed in 0 1; do
    evaluate "$PYR" "pyramid-full-seed$seed" --sampler dpmpp_2m --level_steps 20 8 8 --seed $seed
    for k in $(ls "$OUT/study-pyramid/policies" | sed 's/.json//'); do
      evaluate "$PYR" "pyramid-$k-seed$seed" --sampler dpmpp_2m --level_steps 20 8 8 --seed $seed \
        --step_policy "$OUT/study-pyramid/policies/$k.json"
    done
  done
fi
