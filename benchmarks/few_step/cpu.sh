#!/usr/bin/env bash
# One- and two-call generation on CPU (benchmarks/FEW_STEP.md), from the teachers other benchmarks trained:
#  fmnist: Fashion-MNIST 32 px, the hourglass (eps) teachers of benchmarks/BACKBONES.md (57 training TFLOPs each,
#          seeds 0 and 1). ECT tunes each for a tenth of its training FLOPs; MeanFlow trains from scratch to the
#          teacher's FLOPs. FID-proxy fmnist_clf, 500 samples.
#  photos: photo crops 64 px, the single-scale flow and Pyramidal Flow teachers of benchmarks/MULTISCALE.md (20
#          training TFLOPs, seeds 0 and 1). ECT and MeanFlow each tune every teacher for a tenth of its FLOPs.
#          FID-proxy (random features), SWD and spectrum error, 250 samples.
# Every model is evaluated with sampling seeds 0 and 1: teachers with DPM-Solver++(2M) on its own grid and on the
# uniform (trailing) grid, and with the consistency sampler (--any_sampler: the same network, no tuning); tuned models
# with their own sampler. The teachers' many-step rows come from the benchmarks that trained them (same evaluation
# settings), so they are not sampled again here. Needs the teachers: bash benchmarks/backbones/quality.sh, bash benchmarks/multiscale/cpu.sh 2e13
#   bash benchmarks/few_step/cpu.sh [fmnist] [photos] [ect_fast] [meanflow]     # default: all
# Raw rows: benchmarks/few_step/<part>/<run>-sample<s>/results.{json,csv}; training lines in <part>/train_times.txt;
# the tables: python benchmarks/few_step/tables.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${PYRAMID_DM_RUNS:-runs}
OUT=benchmarks/few_step
PARTS=${*:-fmnist photos ect_fast meanflow}
QUIET="--trainer.enable_progress_bar false --trainer.callbacks.every_n_steps 1000000"
FM="--num_samples 500 --batch_size 250 --features fmnist_clf"

flops_of() {  # CKPT -> its training FLOPs (recorded, or, before they were: its steps x the engine's count per step)
  python - "$1" <<'PY'
import sys, torch
from pyramid_dm.engine import load_engine
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
if "training_cost" in ckpt:
    print(ckpt["training_cost"]["flops"])
else:
    batch = ckpt["datamodule_hyper_parameters"]["batch_size"]
    print(ckpt["global_step"] * load_engine(sys.argv[1]).training_flops(batch))
PY
}
steps_for() {  # CONFIG FLOPS EXTRA... -> the steps of CONFIG (with EXTRA model options) that spend FLOPS
  python - "$@" <<'PY'
import sys
from pyramid_dm.cli import expand_defaults, make_cli
config, flops, extra = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
sys.argv = ["pyramid_dm"]
cli = make_cli(subcommands=False, run=False, args=expand_defaults(["--config", config, *extra]))
print(max(1, round(flops / cli.model.engine.training_flops(cli.datamodule.hparams.batch_size))))
PY
}
train() {  # PART NAME CONFIG SEED STEPS ARGS...
  local part=$1 name=$2 config=$3 seed=$4 steps=$5; shift 5
  if [ -f "$RUNS/bench-few_step/$name/checkpoints/last.ckpt" ]; then return; fi
  /usr/bin/time -f "$name steps $steps train %e s" python -m pyramid_dm fit --config "$config" \
    --exp.root "$RUNS/bench-few_step" --exp.name "$name" --seed_everything "$seed" --trainer.max_steps "$steps" \
    --trainer.val_check_interval "$steps" --trainer.limit_val_batches 2 $QUIET "$@" 2>&1 |
    grep -E "train [0-9.]+ s|rror" | tee -a "$OUT/$part/train_times.txt"
}
evaluate() {  # PART CKPT NAME EVALUATE-ARGS...
  local part=$1 ckpt=$2 name=$3; shift 3
  for s in 0 1; do
    if [ -f "$OUT/$part/$name-sample$s/results.json" ]; then continue; fi  # kept: rerun the script to go on
    python -m pyramid_dm evaluate --ckpt_path "$ckpt" --out "$OUT/$part/$name-sample$s" --seed "$s" \
      --no_wandb --no_progress "$@" 2>&1 | grep -E "GFLOPs|rror"
  done
}

tune_fmnist() {  # NAME SEED EXTRA...: ECT from the hourglass teacher of SEED for a tenth of its FLOPs, then evaluated
  local name=$1 seed=$2; shift 2
  local teacher=$RUNS/bench-backbones/hdit-seed$seed/checkpoints/last.ckpt
  local tflops steps
  tflops=$(flops_of "$teacher" | tail -1)
  steps=$(steps_for configs/pixel/fashion_mnist_hdit_ect.yaml "$(python -c "print($tflops / 10)")" \
    --data.init_args.batch_size 32 | tail -1)
  train fmnist "$name-seed$seed" configs/pixel/fashion_mnist_hdit_ect.yaml "$seed" "$steps" \
    --model.init_args.init_from "$teacher" --data.init_args.batch_size 32 "$@"
  evaluate fmnist "$RUNS/bench-few_step/$name-seed$seed/checkpoints/last.ckpt" "$name-seed$seed" $FM --steps 1 2 4
}

if [[ " $PARTS " == *" fmnist "* ]]; then
  mkdir -p "$OUT/fmnist"
  for seed in 0 1; do
    tune_fmnist hdit_ect "$seed"
    teacher=$RUNS/bench-backbones/hdit-seed$seed/checkpoints/last.ckpt
    # the teacher at 20 and 10 steps: benchmarks/backbones/hdit-seed<t>-sample<s> (the same evaluation)
    evaluate fmnist "$teacher" hdit-seed$seed $FM --sampler dpmpp_2m --steps 1 2 4
    evaluate fmnist "$teacher" hdit-seed$seed-trailing $FM --sampler dpmpp_2m --discretization trailing --steps 2 4
    evaluate fmnist "$teacher" hdit-seed$seed-cm $FM --sampler consistency --any_sampler --steps 2 4
  done
fi

if [[ " $PARTS " == *" photos "* ]]; then
  mkdir -p "$OUT/photos"
  E="--num_samples 250 --batch_size 125 --features random --metrics swd spectrum"
  for config in pixel_flow_hdit_64 pyramid_flow_hdit_64; do
    for seed in 0 1; do
      teacher=$RUNS/bench-multiscale-2e13/$config-seed$seed/checkpoints/last.ckpt
      tenth=$(python -c "print($(flops_of "$teacher") / 10)")
      for objective in ect meanflow; do
        opts=(--model.init_args.objective "$objective")
        if [ "$objective" = ect ]; then opts+=(--model.init_args.objective_options "{double_every: 4}"); fi
        steps=$(steps_for "configs/photos/$config.yaml" "$tenth" "${opts[@]}" | tail -1)
        train photos "${config}_$objective-seed$seed" "configs/photos/$config.yaml" "$seed" "$steps" "${opts[@]}" \
          --model.init_args.init_from "$teacher" --model.init_args.lr 2e-4 --model.init_args.warmup_steps 0 \
          --model.init_args.ema_decay 0.9
        evaluate photos "$RUNS/bench-few_step/${config}_$objective-seed$seed/checkpoints/last.ckpt" \
          "${config}_$objective-seed$seed" $E --steps 1 2
      done
      evaluate photos "$teacher" "$config-seed$seed-trailing" $E --sampler dpmpp_2m --discretization trailing --steps 1 2
      # the teacher at 4 and 8 steps: benchmarks/multiscale/cpu-2e13/<config>-seed<t>-sample<s> (the same evaluation)
    done
  done
fi

if [[ " $PARTS " == *" ect_fast "* ]]; then  # ECT with a faster gap schedule and learning rate, same budget
  for seed in 0 1; do
    tune_fmnist hdit_ect_fast "$seed" --model.init_args.objective_options "{double_every: 6}" --model.init_args.lr 5e-4
  done
fi

if [[ " $PARTS " == *" meanflow "* ]]; then  # MeanFlow from scratch to the teacher's training FLOPs
  mkdir -p "$OUT/fmnist"
  for seed in 0 1; do
    tflops=$(flops_of "$RUNS/bench-backbones/hdit-seed$seed/checkpoints/last.ckpt" | tail -1)
    steps=$(steps_for configs/pixel/fashion_mnist_hdit_meanflow.yaml "$tflops" --data.init_args.batch_size 32 | tail -1)
    train fmnist hdit_meanflow-seed$seed configs/pixel/fashion_mnist_hdit_meanflow.yaml "$seed" "$steps" \
      --data.init_args.batch_size 32
    evaluate fmnist "$RUNS/bench-few_step/hdit_meanflow-seed$seed/checkpoints/last.ckpt" hdit_meanflow-seed$seed $FM \
      --steps 1 2 4
  done
fi
