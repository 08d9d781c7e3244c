#!/usr/bin/env bash
# Does multi-scale pay at 64 px on real photographs? Single-scale pixel diffusion (eps and flow matching) against the
# native pyramid and Pyramidal Flow Matching, one hourglass-transformer body family, each trained to the same training
# FLOPs (exp.max_train_flops: the engine's own flop_counter count, forward + backward, every level) with two training
# seeds, then each run sampled with two sampling seeds at several step counts; FID-proxy (random features), SWD per
# Laplacian level and the power-spectrum error per band against the training crops (compare).
#   bash benchmarks/multiscale/cpu.sh [BUDGET]            # BUDGET in training FLOPs; the table in MULTISCALE.md: 2e13
#   CONFIGS="pixel_hdit_64" SEEDS="0" bash benchmarks/multiscale/cpu.sh 1e11   # a quick plumbing check
# Runs go to ${PYRAMID_DM_RUNS:-runs}/bench-multiscale-<BUDGET>; a run already trained is kept (rerun to resume the
# list). Raw rows: benchmarks/multiscale/cpu-<BUDGET>/{compare.json,compare.csv,summary.csv,summary.md,fronts.png},
# training seconds in benchmarks/multiscale/cpu-<BUDGET>/train_times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUDGET=${1:-3e13}
CONFIGS=${CONFIGS:-pixel_hdit_64 pixel_flow_hdit_64 pyramid_hdit_64 pyramid_flow_hdit_64}
SEEDS=${SEEDS:-0 1}
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-multiscale-$BUDGET
OUT=benchmarks/multiscale/cpu-$BUDGET
mkdir -p "$OUT"
runs=()
for config in $CONFIGS; do
  for seed in $SEEDS; do
    name=$config-seed$seed
    runs+=("$ROOT/$name")
    if [ -f "$ROOT/$name/checkpoints/last.ckpt" ]; then continue; fi
    /usr/bin/time -f "$name train %e s" python -m pyramid_dm fit --config "configs/photos/$config.yaml" \
      --exp.root "$ROOT" --exp.name "$name" --seed_everything "$seed" --exp.max_train_flops "$BUDGET" \
      --trainer.val_check_interval 1000000 --trainer.enable_progress_bar false \
      --trainer.callbacks.every_n_steps 1000000 2>&1 | grep -E "train [0-9.]+ s|max_train_flops|Error" |
      tee -a "$OUT/train_times.txt"
  done
done
python -m pyramid_dm compare "${runs[@]}" --out "$OUT" --sampling_seeds 0 1 --quality swd_mean -- \
  --steps 4 8 --num_samples 250 --batch_size 125 --features random --metrics swd spectrum --no_wandb --no_progress
