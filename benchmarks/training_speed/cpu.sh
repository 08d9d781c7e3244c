#!/usr/bin/env bash
# Issue 28's CPU measurements, side by side in one process each (raw outputs next to this script):
# 1. bench unet with the speed switches (model.speed.compile: each network compiled in place; --channels-last too) at
#    the quickstart and CIFAR-half layouts: ours compiled against diffusers eager and against diffusers compiled;
# 2. bench train of the digits latent config from the image shards (encoding every batch) against the same shards
#    encoded once (shards encode), on the KL fixture autoencoder.
#   bash benchmarks/training_speed/cpu.sh        (about 15 minutes on 2 cores; most of it is inductor compiling)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=benchmarks/training_speed
export PYRAMID_DM_CACHE=${PYRAMID_DM_CACHE:-$HOME/.cache/pyramid_dm} WANDB_MODE=offline
if [ "${SKIP_UNET:-0}" != 1 ]; then  # SKIP_UNET=1: the latent part alone
python -m pyramid_dm bench unet --base 32 --mult 1 2 2 --blocks 1 --attn 4 --image-size 8 --channels 1 --batch 128 \
  --rounds 5 --steps 5 --switches | tee "$out/unet_quickstart_switches.txt"
python -m pyramid_dm bench unet --base 32 --mult 1 2 2 --blocks 1 --attn 4 --image-size 8 --channels 1 --batch 128 \
  --rounds 5 --steps 5 --switches --channels-last | tee "$out/unet_quickstart_switches_nhwc.txt"
python -m pyramid_dm bench unet --base 64 --mult 1 2 2 2 --blocks 2 --attn 16 --image-size 32 --channels 3 \
  --batch 16 --rounds 5 --steps 3 --switches | tee "$out/unet_cifar_half_switches.txt"
python -m pyramid_dm bench unet --base 64 --mult 1 2 2 2 --blocks 2 --attn 16 --image-size 32 --channels 3 \
  --batch 16 --rounds 5 --steps 3 --switches --channels-last | tee "$out/unet_cifar_half_switches_nhwc.txt"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shards=$(python -c "from pyramid_dm.data.builtin import resolve_builtin; print(resolve_builtin('builtin:digits'))")
python -m pyramid_dm shards encode "$shards" --autoencoder tests/fixtures/legacy/ae_kl.ckpt --out "$tmp/latents" \
  --no-progress
python -m pyramid_dm bench train --config configs/latent/digits.yaml --shards "$shards" --encoded-shards "$tmp/latents" \
  --variants eager --batch 128 --workers 0 --rounds 5 --steps 5 --warmup 2 --json "$out/latent_encoded_cpu.json" \
  -- --model.init_args.autoencoder_ckpt tests/fixtures/legacy/ae_kl.ckpt | tee "$out/latent_encoded_cpu.txt"
# the own-data 32 px latent recipe (its autoencoder untrained: one step, which times the same), on generated images
python -c "from pathlib import Path; from pyramid_dm.bench.train import generated_shards; generated_shards(Path('$tmp/img'), 32)"
python -m pyramid_dm fit --config configs/own/autoencoder_32.yaml --data.init_args.shards "$tmp/img" \
  --exp.root "$tmp/runs" --trainer.max_steps 1 --trainer.val_check_interval 1 --trainer.limit_val_batches 1 \
  --trainer.enable_progress_bar false --data.init_args.num_workers 0 > "$tmp/ae.log" 2>&1
ae=$(ls "$tmp"/runs/*/checkpoints/last.ckpt)
python -m pyramid_dm shards encode "$tmp/img" --autoencoder "$ae" --out "$tmp/img_latents" --hflip --no-progress
python -m pyramid_dm bench train --config configs/own/latent_32.yaml --shards "$tmp/img" --encoded-shards \
  "$tmp/img_latents" --variants eager --batch 32 --workers 0 --rounds 5 --steps 3 --warmup 2 \
  --json "$out/latent32_encoded_cpu.json" -- --model.init_args.autoencoder_ckpt "$ae" | tee "$out/latent32_encoded_cpu.txt"
