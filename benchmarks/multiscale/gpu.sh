#!/usr/bin/env bash
# The multi-scale comparison at 128 px on one GPU (at most 8 x TRAIN_LIMIT (55 s) + COMPARE_LIMIT (200 s) = 11
# min): cpu.sh's four configurations at 128 px (builtin:photos_128; the pixel hourglass at patch 2 = 64x64 tokens, the pyramid and Pyramidal Flow Matching
# 32 -> 64 -> 128 at patch 2 / 4 / 8 = 32x32 tokens per level), bf16, batch 64, each trained to the same training
# FLOPs (BUDGET, default 2e14: about 400 steps of the pixel hourglass at 7.9 training GFLOPs per image, 850 of the
# pyramids at 3.7) with two training seeds, each sampled with two sampling seeds at 4 / 8 / 16 steps; SWD per level, spectrum error, FID-proxy (random features). Every training run and the compare have time limits, so
# a slow run costs its own row only.
#   bash benchmarks/multiscale/gpu.sh [BUDGET]
#   PYRAMID_DM_MS_EXTRA="--trainer.accelerator cpu --trainer.precision 32" bash benchmarks/multiscale/gpu.sh 1e11  # plumbing on a CPU
# Raw rows: benchmarks/multiscale/gpu-<BUDGET>/ (compare.json, summary.md, fronts.png, train_times.txt).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUDGET=${1:-2e14}
SEEDS=${SEEDS:-0 1}
ROOT=${PYRAMID_DM_RUNS:-/tmp/pyramid_dm-runs}/bench-multiscale-gpu-$BUDGET
OUT=benchmarks/multiscale/gpu-$BUDGET
TRAIN_LIMIT=${TRAIN_LIMIT:-55}
export PYRAMID_DM_CACHE=${PYRAMID_DM_CACHE:-/tmp/pyramid_dm-cache} WANDB_MODE=offline
mkdir -p "$OUT"
read -r -a extra <<< "${PYRAMID_DM_MS_EXTRA:---trainer.precision bf16-mixed}"
common=(--data.init_args.shards builtin:photos_128 --data.init_args.batch_size 64 --data.init_args.num_workers 6)
declare -A overrides=(
  [pixel_hdit_64]="--model.init_args.shift_reference_resolution 32"
  [pixel_flow_hdit_64]="--model.init_args.shift_reference_resolution 32"
  [pyramid_hdit_64]="--model.init_args.resolutions [32,64,128] --model.init_args.unet.patch_size [2,4,8] --model.init_args.shift_reference_resolution 32"
  [pyramid_flow_hdit_64]="--model.init_args.resolutions [32,64,128] --model.init_args.unet.patch_size [2,4,8]"
)
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" > "$OUT/device.txt"
runs=()
for config in pixel_hdit_64 pixel_flow_hdit_64 pyramid_hdit_64 pyramid_flow_hdit_64; do
  for seed in $SEEDS; do
    name=${config%_64}_128-seed$seed
    runs+=("$ROOT/$name")
    [ -f "$ROOT/$name/checkpoints/last.ckpt" ] && continue
    read -r -a own <<< "${overrides[$config]}"
    start=$SECONDS
    timeout "$TRAIN_LIMIT" python -m pyramid_dm fit --config "configs/photos/$config.yaml" "${common[@]}" "${own[@]}" \
      "${extra[@]}" --exp.root "$ROOT" --exp.name "$name" --seed_everything "$seed" --exp.max_train_flops "$BUDGET" \
      --trainer.val_check_interval 1000000 --trainer.enable_progress_bar false \
      --trainer.callbacks.every_n_steps 1000000 > "$OUT/$name.log" 2>&1
    echo "$name exit $? train $((SECONDS - start)) s" | tee -a "$OUT/train_times.txt"
  done
done
done_runs=()
for run in "${runs[@]}"; do [ -f "$run/checkpoints/last.ckpt" ] && done_runs+=("$run"); done
timeout "${COMPARE_LIMIT:-200}" python -m pyramid_dm compare "${done_runs[@]}" --out "$OUT" --sampling_seeds 0 1 \
  --quality swd_mean -- --steps 4 8 16 --num_samples "${SAMPLES:-500}" --batch_size 250 --features random --metrics swd spectrum \
  --no_wandb --no_progress 2>&1 | tail -30
