#!/usr/bin/env bash
# Pixel vs latent vs pyramid (native resolution) vs the Frido layout on Fashion-MNIST 32x32 at a matched training
# budget (the same steps and batch size for every diffusion model), then the FID-proxy and cost of each:
#   bash benchmarks/pyramid/run.sh [STEPS] [BATCH]
# Results: benchmarks/pyramid/<run>/results.{csv,json}; summary in benchmarks/PYRAMID.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-800}
BATCH=${2:-32}
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-pyramid
OUT=benchmarks/pyramid
COMMON=(--exp.root "$ROOT" --trainer.max_steps "$STEPS" --trainer.val_check_interval "$STEPS"
        --data.init_args.batch_size "$BATCH" --trainer.limit_val_batches 4 --trainer.enable_progress_bar false
        --trainer.callbacks.every_n_steps 1000000)   # no in-training FID: evaluate below measures every model alike
fit() { /usr/bin/time -f "$1 train %e s" python -m pyramid_dm fit --config "$2" "${COMMON[@]}" "${@:3}" 2>&1 |
        grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"; }
EVAL=(--num_samples 500 --batch_size 250 --features fmnist_clf --no_wandb --no_progress --overwrite)
evaluate() { python -m pyramid_dm evaluate --ckpt_path "$ROOT/$1/checkpoints/last.ckpt" --out "$OUT/$1${3:-}" \
             --sampler dpmpp_2m "${EVAL[@]}" $2 2>&1 | grep -E "GFLOPs|rror"; }

mkdir -p "$OUT"; : > "$OUT/train_times.txt"
fit pixel configs/pixel/fashion_mnist_small.yaml
fit pyramid configs/pyramid/fashion_mnist.yaml
fit frido configs/pyramid/fashion_mnist_frido.yaml
# stage one for latent diffusion (its own budget, reported separately), then latent diffusion at the same budget
fit autoencoder configs/autoencoder/fashion_mnist_kl.yaml
fit latent configs/latent/fashion_mnist.yaml

evaluate pixel-fashion_mnist_small "--steps 20 10"
evaluate pyramid-fashion_mnist "--level_steps 20 8 8"
evaluate pyramid-fashion_mnist "--level_steps 20 4 4" -20-4-4
evaluate pyramid-fashion_mnist_frido "--level_steps 20 20 20"
evaluate latent-fashion_mnist "--steps 20 10"
