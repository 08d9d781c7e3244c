#!/usr/bin/env bash
# The BACKBONES.md speed table on a GPU (one device, about 6 minutes on an H200): every body at 32, 64 and 128 px in
# bf16, eager and compiled, diffusers' DiT beside each DiT. Batch 256 at 32 and 64 px; 64 at 128 px (DiT-S/2 there is
# 4096 tokens per image). Rows: benchmarks/backbones/speed_gpu_bf16{,_compiled}.json.
#   bash benchmarks/backbones/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=benchmarks/backbones
python -m pyramid_dm bench backbones --dtype bf16 --batch 256 256 64 --rounds 5 --steps 3 --warmup 2 \
  --json "$out/speed_gpu_bf16.json"
python -m pyramid_dm bench backbones --dtype bf16 --batch 256 256 64 --rounds 5 --steps 3 --warmup 3 --compile \
  --json "$out/speed_gpu_bf16_compiled.json"
