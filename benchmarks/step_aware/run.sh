#!/usr/bin/env bash
# Step-aware diffusion on Fashion-MNIST 16x16 (issue 16): width-policy searches of the supernets trained by
# train.sh, then the policies on the front and their strongest simple alternatives re-evaluated with two sampling
# seeds, the log-SNR policies carried over to DDPM 250 steps, and wall-clock at batch 256.
#   bash benchmarks/step_aware/run.sh [search|pyramid-search|eval|ddpm|wallclock|pyramid-eval]
# Outputs: benchmarks/step_aware/study-*/ (front, trials, policies, pareto.png), benchmarks/step_aware/eval/<row>/;
# summary.py turns them into the tables and the policy plot of benchmarks/STEP_AWARE.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-step-aware
OUT=benchmarks/step_aware
WHAT=${1:?what to run}
SUPER=$ROOT/supernet/checkpoints/last.ckpt
PLAIN=$ROOT/plain/checkpoints/last.ckpt
PYR=$ROOT/pyramid-supernet/checkpoints/last.ckpt
SEARCH=(--num_real 2000 --features fmnist_clf --no_wandb --batch_size 300 --no_progress)
EVAL=(--batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite --num_real 2000)
timed() {  # NAME command...: wall time of a search into search_times.txt
  /usr/bin/time -f "$1 %e s" "${@:2}" 2>&1 | grep -E "front:|trial\(s\)| s$|rror" | tee -a "$OUT/search_times.txt"
}
evaluate() {  # CKPT OUT_NAME [evaluate options]
  python -m pyramid_dm evaluate --ckpt_path "$1" --out "$OUT/eval/$2" "${EVAL[@]}" "${@:3}" 2>&1 | grep -E "GFLOPs|rror"
}
front() {  # STUDY: the front's policy files, most expensive first (the points nearest full quality)
  python -c "import csv,sys; rows=list(csv.DictReader(open('$OUT/$1/front.csv')));
[print(r['policy_file']) for r in sorted(rows, key=lambda r: -float(r['gflops_per_sample']))[:${2:-5}]]"
}
case $WHAT in
search)
  timed dpm20 python -m pyramid_dm search-steps --ckpt_path "$SUPER" --sampler dpmpp_2m --steps 20 --trials 32 \
    --population 8 --num_samples 300 --study "$OUT/study-dpm20" "${SEARCH[@]}" ;;
pyramid-search)
  timed pyramid python -m pyramid_dm search-steps --ckpt_path "$PYR" --sampler dpmpp_2m --steps 20 8 8 \
    --trials 20 --population 8 --num_samples 300 --study "$OUT/study-pyramid" "${SEARCH[@]}" ;;
eval)
  for seed in 0 1; do
    # full width of the supernet and the plainly trained network at 20 steps, and the supernet with fewer steps
    # (the same model at equal FLOPs: the strongest simple alternative)
    evaluate "$SUPER" "supernet-full-seed$seed" --sampler dpmpp_2m --steps 20 12 10 8 6 --seed $seed --num_samples 1000
    evaluate "$PLAIN" "plain-seed$seed" --sampler dpmpp_2m --steps 20 --seed $seed --num_samples 1000
    for p in $(front study-dpm20 5); do
      evaluate "$SUPER" "dpm20-$(basename "$p" .json)-seed$seed" --sampler dpmpp_2m --steps 20 --seed $seed \
        --num_samples 1000 --step_policy "$p"
    done
  done ;;
ddpm)  # the log-SNR policy CHOSEN (a front file) carried over to DDPM 250 steps, against the full width at 250 and
  # at 125 steps (its equal-FLOPs peer)
  for seed in 0 1; do
    evaluate "$SUPER" "ddpm250-full-seed$seed" --sampler ddpm --steps 250 125 --seed $seed --num_samples 200
    evaluate "$SUPER" "ddpm250-chosen-seed$seed" --sampler ddpm --steps 250 --seed $seed --num_samples 200 \
      --step_policy "$CHOSEN"
  done ;;
wallclock)  # CHOSEN vs full width at batch 256 on an otherwise idle machine, alternated, three times each
  for rep in 1 2 3; do
    evaluate "$SUPER" "wall-full-$rep" --sampler dpmpp_2m --steps 20 --num_samples 512 --batch_size 256
    evaluate "$SUPER" "wall-chosen-$rep" --sampler dpmpp_2m --steps 20 --num_samples 512 --batch_size 256 \
      --step_policy "$CHOSEN"
  done ;;
steps)  # the CHOSEN log-SNR policy at other step counts of DPM-Solver++ (one policy serves every budget)
  for seed in 0 1; do
    evaluate "$SUPER" "dpm-chosen-steps-seed$seed" --sampler dpmpp_2m --steps 12 10 8 --seed $seed --num_samples 1000 \
      --step_policy "$CHOSEN"
  done ;;
pyramid-eval)
  for seed in 0 1; do
    evaluate "$PYR" "pyramid-full-seed$seed" --sampler dpmpp_2m --level_steps 20 8 8 --seed $seed --num_samples 1000
    for p in $(front study-pyramid 3); do
      evaluate "$PYR" "pyramid-$(basename "$p" .json)-seed$seed" --sampler dpmpp_2m --level_steps 20 8 8 \
        --seed $seed --num_samples 1000 --step_policy "$p"
    done
  done ;;
esac
