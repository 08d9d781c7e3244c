#!/usr/bin/env bash
# The one prepared GPU script (issues 27 and 28): about 8 minutes on one H200, raw JSON rows under
# benchmarks/gpu/rows/ (commit them, with benchmarks/GPU.md written from them). Each part has its own time limit, so a
# slow part costs its own rows, never the others'.
#   bash benchmarks/gpu/run.sh            (from anywhere; PYRAMID_DM_GPU_BATCH=N to change the batch)
# 1. bench train, every own-data body (UNet, DiT-S, hourglass) at 32/64/128 px: eager fp32, TF32 and bf16, the loader
#    (8 workers, pinned memory) included and excluded, MFU against the dense peak (pyramid_dm/bench/peaks.py);
# 2. bench train compiled (bf16 + torch.compile + channels_last) for the three bodies at 64 px (the DiT there has
#    256 tokens per image: the issue's 40%-MFU target) and the hourglass at 128 px;
# 3. bench backbones in bf16: our DiT beside diffusers' DiTTransformer2DModel (BACKBONES.md's GPU table);
# 4. with two or more GPUs, the 2-GPU DDP step (bench ddp).
set -uo pipefail
cd "$(dirname "$0")/../.."
rows=benchmarks/gpu/rows
mkdir -p "$rows"
batch=${PYRAMID_DM_GPU_BATCH:-128}
export PYRAMID_DM_CACHE=${PYRAMID_DM_CACHE:-/tmp/pyramid_dm-cache} WANDB_MODE=offline
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$rows/device.txt" 2>&1 || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$rows/device.txt"

part() {  # part NAME SECONDS COMMAND...: run it, log it, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$rows/log.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$rows/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$rows/log.txt"
}

part train_eager 170 python -m pyramid_dm bench train --set backbones --variants eager tf32 bf16 --batch "$batch" \
  --workers 8 --warmup 2 --rounds 3 --steps 3 --json "$rows/train_eager.json"
part train_compiled 170 python -m pyramid_dm bench train --variants bf16 bf16-compiled --batch "$batch" --workers 8 \
  --config configs/own/pixel_64.yaml --config configs/own/pixel_dit_64.yaml --config configs/own/pixel_hdit_64.yaml \
  --config configs/own/pixel_hdit_128.yaml --warmup 3 --rounds 3 --steps 3 --json "$rows/train_compiled.json"
part backbones 100 python -m pyramid_dm bench backbones --dtype bf16 --batch 256 256 64 --rounds 3 --steps 3 \
  --warmup 2 --json "$rows/backbones_bf16.json"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  part ddp 90 python -m pyramid_dm bench ddp --device cuda --ranks 1 2 --dtype bf16
fi
