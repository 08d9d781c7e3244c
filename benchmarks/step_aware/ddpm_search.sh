#!/usr/bin/env bash
# The width-policy front searched at DDPM 250 steps itself (the budget DDSM searched at, 1000 there), and its points
# re-evaluated with two seeds.   bash benchmarks/step_aware/ddpm_search.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-step-aware
OUT=benchmarks/step_aware
SUPER=$ROOT/supernet/checkpoints/last.ckpt
/usr/bin/time -f "ddpm250 %e s" python -m pyramid_dm search-steps --ckpt_path "$SUPER" --sampler ddpm --steps 250 \
  --trials 16 --population 8 --num_samples 200 --batch_size 200 --num_real 2000 --features fmnist_clf --no_wandb \
  --no_progress --study "$OUT/study-ddpm250" 2>&1 | grep -E "front:|trial\(s\)| s$|rror" | tee -a "$OUT/search_times.txt"
for seed in 0 1; do
  for p in $(python -c "import csv; rows=list(csv.DictReader(open('$OUT/study-ddpm250/front.csv')));
[print(r['policy_file']) for r in sorted(rows, key=lambda r: -float(r['gflops_per_sample']))[:3]]"); do
    python -m pyramid_dm evaluate --ckpt_path "$SUPER" --sampler ddpm --steps 250 --seed $seed --num_samples 200 \
      --batch_size 200 --features fmnist_clf --num_real 2000 --no_wandb --no_progress --overwrite \
      --step_policy "$p" --out "$OUT/eval/ddpm250-$(basename "$p" .json)-seed$seed" 2>&1 | grep -E "GFLOPs|rror"
  done
done
