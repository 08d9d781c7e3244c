#!/usr/bin/env bash
# Does in-place distillation help a step-aware supernet? The embedded digits (8x8), the quickstart UNet as a supernet
# (widths 1/0.5/0.25) trained with and without `distill`, the same steps and batch; each width evaluated as a uniform
# policy with DPM-Solver++(2M) 20 steps, two sampling seeds. (A CPU-sized stand-in for the Fashion-MNIST supernet.)
#   bash benchmarks/step_aware/distill.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-step-aware
OUT=benchmarks/step_aware
STEPS=600
for distill in false true; do
  /usr/bin/time -f "digits-distill-$distill-$STEPS train %e s" python -m pyramid_dm fit --config configs/quickstart.yaml \
    --exp.root "$ROOT" --exp.name "digits-distill-$distill" --trainer.max_steps $STEPS --trainer.val_check_interval $STEPS \
    --data.init_args.batch_size 32 --trainer.enable_progress_bar false --trainer.callbacks.every_n_steps 1000000 \
    --model.init_args.step_aware "{widths: [1.0, 0.5, 0.25], distill: $distill}" 2>&1 |
    grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
  for width in 1.0 0.5 0.25; do
    for seed in 0 1; do
      python -m pyramid_dm evaluate --ckpt_path "$ROOT/digits-distill-$distill/checkpoints/last.ckpt" --sampler dpmpp_2m \
        --steps 20 --num_samples 500 --batch_size 250 --step_policy $width --seed $seed --no_wandb --no_progress \
        --overwrite --out "$OUT/eval/digits-distill-$distill-w$width-seed$seed" 2>&1 | grep -E "GFLOPs|rror"
    done
  done
done
