#!/usr/bin/env bash
# UNet vs DiT vs hourglass on Fashion-MNIST 32x32 at equal training FLOPs: the small UNet trains BUDGET steps at batch
# 32, each transformer the steps that give the same training FLOPs (the engine's own count, flop_counter forward +
# backward); two training seeds, each evaluated with two sampling seeds (DPM-Solver++(2M), 20 and 10 steps, 500
# samples, FID-proxy fmnist_clf against the 60,000 training images).
#   bash benchmarks/backbones/quality.sh [BUDGET]      # the table in benchmarks/BACKBONES.md: 2400
# Results: benchmarks/backbones/<body>-seed<t>-sample<s>/results.{json,csv}; steps and training times in
# benchmarks/backbones/train_times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUDGET=${1:-2400}
ROOT=${PYRAMID_DM_RUNS:-runs}/bench-backbones
OUT=benchmarks/backbones
mkdir -p "$OUT"
steps_for() {  # CONFIG -> steps giving the UNet's training FLOPs at BUDGET steps
  python - "$1" "$BUDGET" <<'PY'
import sys
from pyramid_dm.cli import expand_defaults, make_cli
config, budget = sys.argv[1], int(sys.argv[2])
def flops(config):
    sys.argv = ["pyramid_dm"]
    cli = make_cli(subcommands=False, run=False, args=expand_defaults(["--config", config]))
    return cli.model.engine.training_flops(32)
print(round(budget * flops("configs/pixel/fashion_mnist_small.yaml") / flops(config)))
PY
}
for seed in ${SEEDS:-0 1}; do
  for body in ${BODIES:-small dit hdit}; do
    config=configs/pixel/fashion_mnist_$body.yaml
    steps=$(steps_for "$config" | tail -1)
    name=$body-seed$seed
    /usr/bin/time -f "$name steps $steps train %e s" python -m pyramid_dm fit --config "$config" \
      --exp.root "$ROOT" --exp.name "$name" --seed_everything "$seed" --trainer.max_steps "$steps" \
      --trainer.val_check_interval "$steps" --data.init_args.batch_size 32 --trainer.limit_val_batches 4 \
      --trainer.enable_progress_bar false --trainer.callbacks.every_n_steps 1000000 2>&1 |
      grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/train_times.txt"
    for sample in 0 1; do
      python -m pyramid_dm evaluate --ckpt_path "$ROOT/$name/checkpoints/last.ckpt" --out "$OUT/$name-sample$sample" \
        --sampler dpmpp_2m --steps 20 10 --num_samples 500 --batch_size 250 --features fmnist_clf --seed "$sample" \
        --no_wandb --no_progress --overwrite 2>&1 | grep -E "GFLOPs|rror"
    done
  done
done
