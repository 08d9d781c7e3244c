#!/usr/bin/env bash
# Pixel vs latent vs pyramid (native resolution) vs the Frido layout on Fashion-MNIST 32x32 at a matched training
# budget (the same steps and batch size for every diffusion model), then the FID-proxy and cost of each:
#   bash benchmarks/pyramid/run.sh [STEPS] [BATCH]        # the table in benchmarks/PYRAMID.md: 800 32, then 2400 32
# Results: benchmarks/pyramid/<run>/results.{csv,json}, training times in train_times.txt; summary in PYRAMID.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-800}
BATCH=${2:-32}
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-pyramid
OUT=benchmarks/pyramid
SUFFIX=$([ "$STEPS" = 800 ] && echo "" || echo "-$STEPS")
COMMON=(--exp.root "$ROOT" --trainer.max_steps "$STEPS" --trainer.val_check_interval "$STEPS"
        --data.init_args.batch_size "$BATCH" --trainer.limit_val_batches 4 --trainer.enable_progress_bar false)
NO_FID=(--trainer.callbacks.every_n_steps 1000000)  # no in-training FID: evaluate below measures every model alike
fit() {  # NAME CONFIG [overrides]
  /usr/bin/time -f "$1$SUFFIX train %e s" python -m pyramid_dm fit --config "$2" "${COMMON[@]}" "${@:3}" 2>&1 |
    grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
}
EVAL=(--sampler dpmpp_2m --num_samples 500 --batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite)
evaluate() {  # EXP OUT_NAME [evaluate options]
  python -m pyramid_dm evaluate --ckpt_path "$ROOT/$1/checkpoints/last.ckpt" --out "$OUT/$2" "${EVAL[@]}" "${@:3}" 2>&1 |
    grep -E "GFLOPs|rror"
}
mkdir -p "$OUT"

fit pixel configs/pixel/fashion_mnist_small.yaml "${NO_FID[@]}" --exp.name "pixel-fashion_mnist_small$SUFFIX"
fit pyramid configs/pyramid/fashion_mnist.yaml "${NO_FID[@]}" --exp.name "pyramid-fashion_mnist$SUFFIX"
evaluate "pixel-fashion_mnist_small$SUFFIX" "pixel-fashion_mnist_small$SUFFIX" --steps 20 10
BUDGETS=("20 8 8" "20 8 4"); [ "$STEPS" = 800 ] || BUDGETS+=("20 8 6" "20 6 6")
for budget in "${BUDGETS[@]}"; do
  evaluate "pyramid-fashion_mnist$SUFFIX" "pyramid-fashion_mnist$SUFFIX-${budget// /-}" --level_steps $budget
done
[ "$STEPS" = 800 ] || exit 0

# at 800 steps only: the Frido layout, latent diffusion, the pyramid without the resolution shift, a smaller budget
fit frido configs/pyramid/fashion_mnist_frido.yaml "${NO_FID[@]}"
evaluate pyramid-fashion_mnist_frido pyramid-fashion_mnist_frido --level_steps 20 20 20
evaluate pyramid-fashion_mnist pyramid-fashion_mnist-20-4-4 --level_steps 20 4 4
fit autoencoder configs/autoencoder/fashion_mnist_kl.yaml   # stage one: its own budget, reported separately
fit latent configs/latent/fashion_mnist.yaml "${NO_FID[@]}"
evaluate latent-fashion_mnist latent-fashion_mnist --steps 20 10
fit pyramid-noshift configs/pyramid/fashion_mnist.yaml "${NO_FID[@]}" --exp.name pyramid-fashion_mnist-noshift \
  --model.init_args.shift_reference_resolution null
for budget in "20 8 8" "20 8 4"; do
  evaluate pyramid-fashion_mnist-noshift "pyramid-fashion_mnist-noshift-${budget// /-}" --level_steps $budget
done
